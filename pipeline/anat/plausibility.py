"""Plausibility checks of the structural stage's results.

A structural result can be wrong without any step failing: a brain mask that is
the whole head, a T1w -> MNI registration that squeezes the head into the
template, a bias "correction" that multiplies the image by 10^6, a FLAIR that is
really a T2w. Each check below compares one measured number with the range an
adult brain MRI can produce; a session with any failed check is *flagged*: the
flag is written with the session's outputs
(``anat/sub-<label>_ses-<label>_desc-plausibility_checks.tsv`` and its JSON),
printed as a warning, shown as a banner in the QC report, and the group
statistics leave flagged sessions out with the reason unless told otherwise
(``group.include_flagged``).

Limits (:data:`LIMITS`) and their grounds:

``icv_l`` 1.0-2.1 l
    Total intracranial volume of adults: about 1.2-1.8 l (women 1.1-1.6 l, men
    1.3-1.9 l; e.g. Buckner et al., NeuroImage 2004); the range leaves room for
    partial coverage of clinical scans (patient01's 117 mm T1w slab: 1.35 l).
``brain_l`` 0.6-1.8 l
    Brain parenchyma (GM + WM + lesions): adult brains are 0.9-1.6 l; MS
    atrophy lowers it.
``mni_scale`` 0.5-2.0
    Determinant of the linear part of T1w -> MNI152NLin2009aSym (template volume
    over subject volume): the template's intracranial mask is 1.9 l, so an adult
    head gives about 0.9-1.9.
``mni_overlap`` >= 0.85
    Fraction of the subject's brain mask that lands inside the template brain
    mask (dilated by 5 mm) after T1w -> MNI: a registration onto the wrong
    anatomy or of a whole-head mask leaves much of it outside. Partial coverage
    does not lower it (it is a fraction of the subject's mask).
``bias_field_ratio`` <= 5
    Largest over smallest value of the multiplicative bias field in the brain:
    receive-coil fields at 1.5-3 T vary by a factor below 2-3.
``intensity_gain`` 0.2-5
    99.9th percentile of the bias-corrected T1w in the brain over that of the raw
    T1w: the correction may not amplify or shrink the image by orders of
    magnitude.
``intensity_range`` 1e-3-1e5
    99.9th percentile of the raw T1w in the brain: MR magnitude images are stored
    as 12-16-bit integers after the scanner's scaling; values far beyond 65535
    point to a wrong header scaling (scl_slope / scl_inter).
``lesion_wm_fraction`` <= 0.3
    Lesion volume over (WM + lesion) volume: even high lesion loads (patient19:
    about 50 ml) stay near 0.1; an automatic segmentation labelling a third of the
    white matter has failed.
``flair_displacement_mm`` <= 10
``flair_nmi_sharpness`` >= 0.2 (:func:`pipeline.registration.registration_quality`: 0.40-0.66
    for FLAIR / T2w of the same person on the real scans, 0.05-0.11 for another person's)
    Mean displacement of the FLAIR -> T1w transform from the header alignment
    over the brain: images of one session are aligned by the scanner unless the
    head moved between the series; a centimetre means a failed registration (or a
    FLAIR of another session).
``t1w_contrast``
    Median T1w intensity of the ventricles (template ventricles) below 0.7 x that
    of white matter (template WM probability >= 0.9), and of cortical grey
    matter below white matter: the T1-weighted ordering WM > GM > CSF.
``flair_contrast``
    Median FLAIR intensity of the ventricles below 0.9 x that of white matter:
    fluid is attenuated on FLAIR and bright on T2w, so a T2w given as FLAIR (or a
    swapped series) fails it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

__all__ = [
    "LIMITS",
    "Check",
    "PlausibilityReport",
    "contrast_checks",
    "structural_checks",
    "tissue_medians",
]

#: Limits of the structural checks: name -> (lower, upper, unit); None = unbounded.
LIMITS: dict[str, tuple[float | None, float | None, str]] = {
    "icv_l": (1.0, 2.1, "l"),
    "brain_l": (0.6, 1.8, "l"),
    "mni_scale": (0.5, 2.0, "ratio"),
    "mni_overlap": (0.85, None, "fraction"),
    "bias_field_ratio": (None, 5.0, "ratio"),
    "intensity_gain": (0.2, 5.0, "ratio"),
    "intensity_range": (1e-3, 1e5, "image units"),
    "lesion_wm_fraction": (None, 0.3, "fraction"),
    "flair_displacement_mm": (None, 10.0, "mm"),
    "flair_nmi_sharpness": (0.2, None, "fraction"),
    "reference_nmi_sharpness": (0.2, None, "fraction"),
    "t1w_csf_wm_ratio": (None, 0.7, "ratio"),
    "t1w_gm_wm_ratio": (None, 1.0, "ratio"),
    "flair_csf_wm_ratio": (None, 0.9, "ratio"),
}

_WHAT = {
    "icv_l": "intracranial volume (brain mask)",
    "brain_l": "brain parenchyma volume (GM + WM + lesions)",
    "mni_scale": "T1w -> MNI linear scaling (template / subject volume)",
    "mni_overlap": "fraction of the brain mask inside the template brain after T1w -> MNI",
    "bias_field_ratio": "bias field max / min in the brain",
    "intensity_gain": "bias-corrected / raw T1w intensity (99.9th percentile in the brain)",
    "intensity_range": "raw T1w intensity (99.9th percentile in the brain)",
    "lesion_wm_fraction": "lesion volume / (WM + lesion) volume",
    "flair_displacement_mm": "FLAIR -> T1w displacement from its start (header alignment, or session -> reference transform)",
    "flair_nmi_sharpness": "FLAIR -> T1w alignment specificity (NMI lost under 3 mm / 3 degree perturbations, pipeline.registration.registration_quality)",
    "reference_nmi_sharpness": "session T1w -> subject reference alignment specificity (as flair_nmi_sharpness)",
    "t1w_csf_wm_ratio": "T1w ventricles / WM median intensity",
    "t1w_gm_wm_ratio": "T1w cortical GM / WM median intensity",
    "flair_csf_wm_ratio": "FLAIR ventricles / WM median intensity",
}

_HINT = {
    "icv_l": "brain extraction failed (whole head or partial brain), a wrong voxel size in "
    "the header, or not an adult head",
    "brain_l": "brain extraction or tissue segmentation failed",
    "mni_scale": "T1w -> MNI registration failed or the brain mask is wrong",
    "mni_overlap": "T1w -> MNI registration failed or the brain mask is wrong",
    "bias_field_ratio": "bias correction diverged (wrong brain mask?)",
    "intensity_gain": "bias correction rescaled the image (wrong brain mask?)",
    "intensity_range": "suspect the header scaling (scl_slope / scl_inter) of the T1w",
    "lesion_wm_fraction": "automatic lesion segmentation failed (check the FLAIR and its "
    "registration) or the provided mask is not a lesion mask",
    "flair_displacement_mm": "FLAIR -> T1w registration failed, or the FLAIR is from "
    "another session",
    "flair_nmi_sharpness": "the FLAIR is not aligned with this T1w (registration failed), or "
    "it is another person's",
    "reference_nmi_sharpness": "the session -> subject reference registration failed, or this "
    "session's T1w is another person's",
    "t1w_csf_wm_ratio": "the image does not have T1-weighted contrast (swapped series?)",
    "t1w_gm_wm_ratio": "the image does not have T1-weighted contrast (swapped series?)",
    "flair_csf_wm_ratio": "the image does not have FLAIR contrast (a T2w given as FLAIR?)",
}


@dataclass(frozen=True)
class Check:
    """One plausibility check: a measured value against its limits."""

    name: str
    value: float | None
    lower: float | None
    upper: float | None
    unit: str
    passed: bool
    message: str

    def row(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class PlausibilityReport:
    """All checks of one subject-session."""

    checks: tuple[Check, ...]

    @property
    def flagged(self) -> bool:
        return any(not c.passed for c in self.checks)

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    def reason(self) -> str:
        """One line naming every failed check (empty when none failed)."""
        return "; ".join(c.message for c in self.failed)

    def table(self):
        import pandas as pd

        return pd.DataFrame(
            [c.row() for c in self.checks],
            columns=["name", "value", "lower", "upper", "unit", "passed", "message"],
        )


def _check(name: str, value: float | None) -> Check:
    lower, upper, unit = LIMITS[name]
    what = _WHAT[name]
    if value is None or not np.isfinite(value):
        return Check(name, None, lower, upper, unit, True, f"{what}: not measured")
    v = float(value)
    ok = (lower is None or v >= lower) and (upper is None or v <= upper)
    bounds = (
        f"{lower:g}-{upper:g}" if lower is not None and upper is not None
        else f">= {lower:g}" if lower is not None else f"<= {upper:g}"
    )
    msg = f"{what} = {v:.4g} {unit} (plausible: {bounds})"
    if not ok:
        msg += f": {_HINT[name]}"
    return Check(name, v, lower, upper, unit, ok, msg)


def structural_checks(
    measures: Mapping[str, float | None], *, extra: Sequence[Check] = ()
) -> PlausibilityReport:
    """Check every measure named in :data:`LIMITS` that ``measures`` provides.

    Parameters
    ----------
    measures : mapping
        ``name -> value`` for names of :data:`LIMITS`; None (or NaN) = not
        measured (the check passes and says so, e.g. no FLAIR).
    extra : sequence of Check
        Further checks to include.

    Raises
    ------
    KeyError
        For a measure name that is not in :data:`LIMITS`.
    """
    unknown = sorted(set(measures) - set(LIMITS))
    if unknown:
        raise KeyError(f"unknown plausibility measures {unknown}; known: {sorted(LIMITS)}")
    checks = [_check(name, measures[name]) for name in LIMITS if name in measures]
    return PlausibilityReport((*checks, *extra))


def tissue_medians(image: np.ndarray, masks: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Median intensity of ``image`` in each mask (NaN for a mask with < 50 voxels)."""
    out = {}
    for name, m in masks.items():
        vals = image[np.asarray(m, bool)]
        out[name] = float(np.median(vals)) if vals.size >= 50 else float("nan")
    return out


def contrast_checks(
    *, t1w: np.ndarray, flair: np.ndarray | None, masks: Mapping[str, np.ndarray]
) -> dict[str, float | None]:
    """Contrast ratios of the T1w (and FLAIR) in template tissue masks.

    ``masks`` holds boolean ``wm`` (template WM probability >= 0.9 in the brain),
    ``gm`` (template cortical GM) and ``csf`` (template ventricles), on the T1w
    grid; the FLAIR is the FLAIR resampled on that grid. Returns the measures
    ``t1w_csf_wm_ratio``, ``t1w_gm_wm_ratio`` and ``flair_csf_wm_ratio`` (None
    without FLAIR) for :func:`structural_checks`.
    """
    med = tissue_medians(t1w, masks)
    out: dict[str, float | None] = {
        "t1w_csf_wm_ratio": med["csf"] / med["wm"] if med["wm"] > 0 else None,
        "t1w_gm_wm_ratio": med["gm"] / med["wm"] if med["wm"] > 0 else None,
        "flair_csf_wm_ratio": None,
    }
    if flair is not None:
        fm = tissue_medians(flair, masks)
        out["flair_csf_wm_ratio"] = fm["csf"] / fm["wm"] if fm["wm"] > 0 else None
    return out
