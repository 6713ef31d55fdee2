"""Regions of interest for diffusion metrics and their summary table.

ROIs are boolean arrays on the DWI grid. The standard set
(:func:`build_rois`) is built from a white-matter probability map, a lesion
mask and a hemisphere label image (1 = left, 2 = right, 0 = outside), all
already in DWI space:

* ``WM`` (``WM_L``, ``WM_R``): ``wm_prob >= wm_threshold`` (within the brain
  mask if given);
* ``NAWM`` (``NAWM_L``, ``NAWM_R``): normal-appearing white matter, i.e. WM
  minus the lesions dilated by ``lesion_margin_mm``
  (:func:`pipeline.anat.lesions.normal_appearing_wm`), split by hemisphere;
* ``lesion``: the lesion mask;
* ``perilesion``: WM voxels within ``ring_mm`` of a lesion, excluding the lesion.

A session without a T1w has none of these; :func:`dwi_only_rois` gives the two
ROIs the DWI itself defines: ``wholebrain`` (the DWI brain mask) and ``WM_FA``
(FA >= 0.2 inside the brain mask eroded by one voxel).

Diffusivities are reported in µm²/ms (= 1e-3 mm²/s); input maps are mm²/s.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from pipeline.errors import InputError

__all__ = [
    "DIFFUSIVITIES",
    "atlas_rois",
    "build_rois",
    "describe_roi_columns",
    "dwi_only_rois",
    "nawm_lesion_loss",
    "roi_table",
]

#: Metrics converted from mm²/s to µm²/ms (x 1000) in :func:`roi_table`.
DIFFUSIVITIES = ("md", "ad", "rd")
_UNIT_DIFF = "um^2/ms"
_METRIC_NAMES = {
    "fa": "fractional anisotropy",
    "md": "mean diffusivity",
    "ad": "axial diffusivity",
    "rd": "radial diffusivity",
    "mk": "mean kurtosis (DKI)",
    "ak": "axial kurtosis (DKI)",
    "rk": "radial kurtosis (DKI)",
    "kfa": "kurtosis fractional anisotropy (DKI)",
}
#: Unitless metrics (the others are diffusivities or signal intensities).
UNITLESS = ("fa", "mk", "ak", "rk", "kfa")

#: FA threshold of the DWI-defined white matter ``WM_FA`` (:func:`dwi_only_rois`):
#: the usual FA cut for white matter (e.g. the TBSS skeleton threshold 0.2).
WM_FA_THRESHOLD = 0.2


def dwi_only_rois(fa: np.ndarray, brain: np.ndarray) -> dict[str, np.ndarray]:
    """ROIs of a session without a T1w: ``wholebrain`` and ``WM_FA``.

    ``WM_FA`` is FA >= :data:`WM_FA_THRESHOLD` inside the brain mask eroded by one
    voxel (the erosion drops the high-FA rim that misregistered edges produce). It
    is a diffusion-defined white matter, not the structural WM or NAWM: it excludes
    low-FA white matter (crossings, lesions) and is not comparable with NAWM.
    """
    from scipy import ndimage

    brain = _bool(brain, "brain mask")
    fa = np.asarray(fa, dtype=float)
    if fa.shape != brain.shape:
        raise InputError(None, f"FA map {fa.shape} and brain mask {brain.shape} differ in shape")
    core = ndimage.binary_erosion(brain, iterations=1)
    return {"wholebrain": brain, "WM_FA": core & (fa >= WM_FA_THRESHOLD)}


def _bool(a: np.ndarray, what: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
    arr = np.asarray(a)
    if arr.ndim != 3:
        raise InputError(None, f"{what}: expected a 3-D array, got shape {arr.shape}")
    if shape is not None and arr.shape != shape:
        raise InputError(None, f"{what}: expected shape {shape}, got {arr.shape}")
    return arr > 0.5 if arr.dtype.kind == "f" else arr.astype(bool)


def build_rois(
    wm_prob: np.ndarray,
    lesion: np.ndarray,
    hemisphere: np.ndarray,
    *,
    voxel_size_mm,
    wm_threshold: float = 0.5,
    lesion_margin_mm: float = 2.0,
    ring_mm: float = 3.0,
    brain_mask: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """The standard ROIs (see the module docstring).

    Parameters
    ----------
    wm_prob : ndarray (X, Y, Z) float
        White-matter probability (0..1).
    lesion : ndarray (X, Y, Z)
        Lesion mask (bool / integer > 0, or float >= 0.5).
    hemisphere : ndarray (X, Y, Z) int
        1 = left, 2 = right, 0 = neither.
    voxel_size_mm : float or sequence of 3 floats
    wm_threshold : float
        WM probability threshold (in (0, 1]).
    lesion_margin_mm : float
        Lesions are dilated by this before removal from NAWM (>= 0).
    ring_mm : float
        Width of the perilesional ring (> 0).
    brain_mask : ndarray (X, Y, Z), optional
        Restricts all ROIs.

    Returns
    -------
    dict of str -> ndarray bool
        ``WM``, ``WM_L``, ``WM_R``, ``NAWM``, ``NAWM_L``, ``NAWM_R``,
        ``lesion``, ``perilesion``.
    """
    from pipeline.anat.brain import dilate
    from pipeline.anat.lesions import _zooms, normal_appearing_wm

    if not 0 < wm_threshold <= 1:
        raise ValueError(f"wm_threshold must be in (0, 1], got {wm_threshold!r}")
    if lesion_margin_mm < 0:
        raise ValueError(f"lesion_margin_mm must be >= 0, got {lesion_margin_mm!r}")
    if ring_mm <= 0:
        raise ValueError(f"ring_mm must be > 0, got {ring_mm!r}")
    wp = np.asarray(wm_prob, dtype=float)
    if wp.ndim != 3:
        raise InputError(None, f"WM probability: expected a 3-D array, got shape {wp.shape}")
    shape = wp.shape
    les = _bool(lesion, "lesion mask", shape)
    hemi = np.asarray(hemisphere)
    if hemi.shape != shape:
        raise InputError(None, f"hemisphere labels: expected shape {shape}, got {hemi.shape}")
    if not np.all(np.isin(np.unique(hemi), (0, 1, 2))):
        raise InputError(
            None, f"hemisphere labels: expected values 0, 1 (left), 2 (right), got {np.unique(hemi)}"
        )
    zooms = _zooms(voxel_size_mm)
    brain = np.ones(shape, bool) if brain_mask is None else _bool(brain_mask, "brain mask", shape)

    wm = (wp >= wm_threshold) & brain
    les = les & brain
    nawm = normal_appearing_wm(wm, les, margin_mm=lesion_margin_mm, voxel_size=zooms)
    left, right = hemi == 1, hemi == 2
    ring = dilate(les, float(ring_mm), zooms) & ~les & wm
    return {
        "WM": wm,
        "WM_L": wm & left,
        "WM_R": wm & right,
        "NAWM": nawm,
        "NAWM_L": nawm & left,
        "NAWM_R": nawm & right,
        "lesion": les,
        "perilesion": ring,
    }


def nawm_lesion_loss(rois: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Fraction of WM removed by the dilated lesions, for ``NAWM``, ``NAWM_L``, ``NAWM_R``.

    ``1 - |NAWM_x| / |WM_x|`` (NaN when ``WM_x`` is empty); pass the result as
    ``lesion_loss`` to :func:`roi_table`.
    """
    out: dict[str, float] = {}
    for suffix in ("", "_L", "_R"):
        nawm, wm = rois.get("NAWM" + suffix), rois.get("WM" + suffix)
        if nawm is None or wm is None:
            continue
        n_wm = int(np.count_nonzero(wm))
        out["NAWM" + suffix] = float("nan") if n_wm == 0 else 1.0 - np.count_nonzero(nawm) / n_wm
    return out


def atlas_rois(labels_img_data: np.ndarray, label_table: Mapping[int, str]) -> dict[str, np.ndarray]:
    """ROIs of a label atlas: one boolean mask per ``label value -> name`` entry.

    Labels absent from the image give empty masks (reported with n_voxels 0
    by :func:`roi_table`); voxel values not in the table are ignored.
    """
    lab = np.asarray(labels_img_data)
    if lab.ndim != 3:
        raise InputError(None, f"label atlas: expected a 3-D array, got shape {lab.shape}")
    if lab.dtype.kind == "f":
        if not np.all(np.isfinite(lab)) or np.any(lab != np.round(lab)):
            raise InputError(None, "label atlas: expected integer label values, got fractions")
        lab = lab.astype(np.int64)
    names = list(label_table.values())
    if len(set(names)) != len(names):
        raise ValueError(f"label_table has duplicate ROI names: {names}")
    out: dict[str, np.ndarray] = {}
    for value, name in label_table.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"label_table: ROI name of label {value!r} must be a non-empty string")
        out[name] = lab == int(value)
    return out


def roi_table(
    maps: Mapping[str, np.ndarray],
    rois: Mapping[str, np.ndarray],
    *,
    lesion_loss: Mapping[str, float] | None = None,
):
    """Summary statistics of every map in every ROI (long format).

    Parameters
    ----------
    maps : dict of str -> ndarray (X, Y, Z)
        Metric maps, e.g. ``fa``, ``md``, ``ad``, ``rd`` (diffusivities in
        mm²/s; :data:`DIFFUSIVITIES` are converted to µm²/ms).
    rois : dict of str -> ndarray bool (X, Y, Z)
    lesion_loss : dict of str -> float, optional
        Per ROI, the fraction of the ROI lost to lesion exclusion (e.g.
        :func:`nawm_lesion_loss`); NaN for ROIs not listed.

    Returns
    -------
    pandas.DataFrame
        One row per (roi, metric), columns ``roi``, ``metric``, ``units``,
        ``n_voxels`` (ROI voxels with a finite value), ``mean``, ``median``,
        ``sd`` (sample SD, ddof 1), ``lesion_loss_fraction``. An empty ROI
        gives ``n_voxels`` 0 and NaN statistics. Column meanings:
        :func:`describe_roi_columns`.
    """
    import pandas as pd

    if not maps:
        raise ValueError("roi_table needs at least one metric map")
    shape = None
    arrays: dict[str, np.ndarray] = {}
    for name, arr in maps.items():
        a = np.asarray(arr, dtype=float)
        if a.ndim != 3 or (shape is not None and a.shape != shape):
            raise InputError(
                None, f"map {name!r}: expected a 3-D array of shape {shape or 'X,Y,Z'}, got {a.shape}"
            )
        shape = a.shape
        arrays[name] = a * 1e3 if name.lower() in DIFFUSIVITIES else a
    loss = dict(lesion_loss or {})
    rows = []
    for roi_name, roi in rois.items():
        m = _bool(roi, f"ROI {roi_name!r}", shape)
        for name, a in arrays.items():
            vals = a[m]
            vals = vals[np.isfinite(vals)]
            n = int(vals.size)
            rows.append(
                {
                    "roi": roi_name,
                    "metric": name,
                    "units": _UNIT_DIFF if name.lower() in DIFFUSIVITIES else (
                        "unitless" if name.lower() in UNITLESS else "arbitrary"
                    ),
                    "n_voxels": n,
                    "mean": float(vals.mean()) if n else np.nan,
                    "median": float(np.median(vals)) if n else np.nan,
                    "sd": float(vals.std(ddof=1)) if n > 1 else np.nan,
                    "lesion_loss_fraction": float(loss.get(roi_name, np.nan)),
                }
            )
    return pd.DataFrame(
        rows,
        columns=["roi", "metric", "units", "n_voxels", "mean", "median", "sd",
                 "lesion_loss_fraction"],
    )


def describe_roi_columns() -> dict[str, dict[str, str]]:
    """BIDS-style descriptions (LongName, Description, Units) of :func:`roi_table`'s columns."""
    metrics = ", ".join(f"{k} ({v})" for k, v in _METRIC_NAMES.items())
    return {
        "roi": {
            "LongName": "Region of interest",
            "Description": "ROI name: WM, WM_L, WM_R (white matter, left/right), NAWM, NAWM_L, "
            "NAWM_R (normal-appearing white matter: WM minus dilated lesions), lesion, "
            "perilesion (WM ring around lesions, lesions excluded), an atlas label name; in a "
            "session without a T1w: wholebrain (DWI brain mask) and WM_FA (FA >= 0.2 in the eroded "
            "brain mask).",
        },
        "metric": {
            "LongName": "Diffusion metric",
            "Description": f"Diffusion tensor or kurtosis metric: {metrics}.",
        },
        "units": {
            "LongName": "Units of the statistics",
            "Description": "um^2/ms (= 1e-3 mm^2/s) for diffusivities, unitless for FA and the "
            "kurtosis metrics.",
        },
        "n_voxels": {
            "LongName": "Number of voxels",
            "Description": "Voxels of the ROI with a finite metric value; 0 for an empty ROI "
            "(statistics are then n/a).",
            "Units": "voxels",
        },
        "mean": {"LongName": "Mean", "Description": "Mean of the metric over the ROI.",
                 "Units": "see units column"},
        "median": {"LongName": "Median", "Description": "Median of the metric over the ROI.",
                   "Units": "see units column"},
        "sd": {"LongName": "Standard deviation",
               "Description": "Sample standard deviation (ddof = 1) over the ROI.",
               "Units": "see units column"},
        "lesion_loss_fraction": {
            "LongName": "Fraction lost to lesion exclusion",
            "Description": "For NAWM ROIs, the fraction of the (hemisphere's) white-matter "
            "voxels removed because they lie within the dilated lesions; n/a for other ROIs.",
            "Units": "fraction (0-1)",
        },
    }
