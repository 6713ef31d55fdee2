"""msmri orchestration layer: BIDS indexing, derivatives naming, Nipype workflows,
Snakemake rules and the ``msmri`` command line."""
