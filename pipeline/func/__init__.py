"""Resting-state fMRI: preprocessing, confounds and denoising, connectomes, QC.

Modules
-------
:mod:`pipeline.func.preprocess`
    Dummy-volume removal, optional slice-timing correction, rigid realignment
    (DIPY), framewise displacement and DVARS, BOLD reference and mask.
:mod:`pipeline.func.confounds`
    Confound tables and named denoising strategies (``24P``, ``36P``,
    ``acompcor``, each optionally with scrubbing), denoising with
    :func:`nilearn.signal.clean`, and the same strategies from fMRIPrep
    confound files.
:mod:`pipeline.func.connectome`
    Parcellations (nilearn's coordinate atlases as spheres, or a user label
    image with its table), region time series with coverage flags, and
    connectivity matrices (correlation, Fisher z, partial correlation, tangent).
:mod:`pipeline.func.qc`
    Matplotlib figures: carpet plots, FD trace, connectivity matrix.

Importing this package is cheap: nilearn, DIPY, pandas and matplotlib are
imported inside the functions that need them.
"""
