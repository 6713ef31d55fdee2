"""QC figures and reports (the only place in :mod:`pipeline` that imports matplotlib)."""
