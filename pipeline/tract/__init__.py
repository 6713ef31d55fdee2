"""Tractography and tractometry: tracking, bundle recognition, cleaning, profiles.

Modules
-------
:mod:`pipeline.tract.odf`
    CSA / CSD fibre orientations (DIPY) on one shell, peaks and SH coefficients.
:mod:`pipeline.tract.tracking`
    Deterministic / probabilistic tractography on tensor or ODF orientations with a
    lesion-aware stopping rule.
:mod:`pipeline.tract.bundles`
    Bundle definitions as data (``configs/tracts.yaml``) and waypoint-ROI recognition.
:mod:`pipeline.tract.clean`
    pyAFQ-style outlier removal (Mahalanobis distance to the bundle core, length).
:mod:`pipeline.tract.profiles`
    Orientation, AFQ tract profiles (plain and lesion-masked), density maps, tables.
"""

from __future__ import annotations
