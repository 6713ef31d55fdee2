"""msmri science library.

Pure functions and small classes on nibabel images, numpy arrays and dataclasses:
phantom generation, input validation, diffusion, structural and connectivity
analysis, statistics.  This package knows nothing about BIDS layouts, Nipype or
Snakemake (enforced by an import-linter contract in ``pyproject.toml``).

Importing :mod:`pipeline` is cheap: sub-modules that need DIPY, nilearn or
matplotlib import them themselves.
"""

__all__ = ["__version__"]

__version__ = "0.1.0"
