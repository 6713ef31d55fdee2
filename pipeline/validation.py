"""Input validation for images, gradient tables, sidecars and masks.

Every check raises :class:`~pipeline.errors.InputError` naming the offending
file and saying what was expected and what was found; recoverable oddities
are reported with :class:`InputWarning` (via :func:`warnings.warn`) and also
recorded in the ``warnings`` field of the returned check objects.

Only numpy and nibabel are imported; no BIDS knowledge lives here.
"""

from __future__ import annotations

import json
import math
import warnings
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from pipeline.errors import InputError
from pipeline.gradients import (
    InputWarning,
    _read_gradients,
    count_unique_directions,
    group_shells,
)

__all__ = [
    "BoldCheck",
    "DwiCheck",
    "InputWarning",
    "load_image",
    "read_json_object",
    "validate_anat",
    "validate_bold",
    "validate_dwi",
    "validate_mask_grid",
]

PathT = str | PathLike[str]

_READ_ERRORS = (EOFError, zlib.error, OSError, ValueError, nib.filebasedimages.ImageFileError)


# ------------------------------------------------------------------ images
def _open_header(path: PathT) -> nib.spatialimages.SpatialImage:
    """Open an image without reading its voxel data."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "file not found (expected a NIfTI image)")
    if not path.is_file():
        raise InputError(path, "expected a NIfTI image file, got a directory")
    try:
        img = nib.load(path)
    except _READ_ERRORS as exc:
        raise InputError(path, f"unreadable or truncated image: {exc}") from exc
    if not isinstance(img, nib.spatialimages.SpatialImage):
        raise InputError(path, f"expected a volumetric image, got {type(img).__name__}")
    return img


def _check_affine(path: PathT, affine: np.ndarray) -> None:
    affine = np.asarray(affine, dtype=float)
    if not np.all(np.isfinite(affine)):
        raise InputError(path, f"degenerate affine: expected finite values, got\n{affine}")
    det = float(np.linalg.det(affine[:3, :3]))
    if abs(det) <= 1e-6:
        zooms = np.linalg.norm(affine[:3, :3], axis=0)
        raise InputError(
            path,
            "degenerate affine: expected a non-singular voxel-to-world matrix with non-zero "
            f"voxel sizes, got determinant {det:.3g} (voxel sizes "
            f"{_fmt_triplet(zooms)} mm)",
        )


def _fmt_triplet(values: Any) -> str:
    return "x".join(f"{float(v):.3g}" for v in values)


def _ndim_text(ndim: int | tuple[int, ...]) -> str:
    if isinstance(ndim, int):
        return f"{ndim}-D"
    return " or ".join(f"{n}-D" for n in ndim)


def _load(
    path: PathT,
    *,
    ndim: int | tuple[int, ...] | None = None,
    min_volumes: int | None = None,
    check_finite: bool = True,
) -> tuple[nib.spatialimages.SpatialImage, np.ndarray]:
    """Implementation of :func:`load_image` that also returns the voxel data."""
    img = _open_header(path)
    shape = tuple(int(s) for s in img.shape)
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if len(shape) not in allowed:
            raise InputError(
                path,
                f"{len(shape)}-D image (shape {'x'.join(map(str, shape))}) where "
                f"{_ndim_text(ndim)} is needed",
            )
    if min_volumes is not None:
        n_vol = shape[3] if len(shape) >= 4 else 1
        if n_vol < min_volumes:
            raise InputError(path, f"expected at least {min_volumes} volumes, got {n_vol}")
    _check_affine(path, img.affine)
    try:
        data = np.asanyarray(img.dataobj)
    except _READ_ERRORS as exc:
        raise InputError(path, f"unreadable or truncated image data: {exc}") from exc
    if check_finite and np.issubdtype(data.dtype, np.inexact):
        finite = np.isfinite(data)
        if not finite.all():
            n_nan = int(np.isnan(data).sum())
            n_inf = int(data.size - finite.sum() - n_nan)
            raise InputError(
                path,
                f"expected finite voxel values, got {n_nan + n_inf} non-finite voxel(s) "
                f"({n_nan} NaN, {n_inf} Inf)",
            )
    return img, data


def load_image(
    path: PathT,
    *,
    ndim: int | tuple[int, ...] | None = None,
    min_volumes: int | None = None,
    check_finite: bool = True,
) -> nib.spatialimages.SpatialImage:
    """Load and check a NIfTI image.

    The full voxel array is read once (to detect truncated files and
    non-finite values) and then discarded: the returned image keeps its lazy
    data proxy.

    Parameters
    ----------
    path : path-like
    ndim : int or tuple of int, optional
        Accepted dimensionalities, e.g. ``4`` or ``(3, 4)``.
    min_volumes : int, optional
        Minimum number of volumes (size of the 4th axis; 1 for 3-D images).
    check_finite : bool
        Reject NaN/Inf voxels (reporting their count).

    Raises
    ------
    InputError
        Missing file, unreadable or truncated file, wrong dimensionality, too
        few volumes, degenerate affine (non-finite or singular, e.g. a zero
        voxel size), non-finite voxels.
    """
    img, _ = _load(path, ndim=ndim, min_volumes=min_volumes, check_finite=check_finite)
    return img


def validate_anat(path: PathT) -> nib.spatialimages.SpatialImage:
    """Check an anatomical image: 3-D, readable, finite, sane affine."""
    return load_image(path, ndim=3)


# --------------------------------------------------------------------- DWI
@dataclass(frozen=True)
class DwiCheck:
    """Result of :func:`validate_dwi`.

    ``shells`` lists the diffusion-weighted shells as ``(b_value,
    n_distinct_directions)``; b=0 volumes are counted in ``n_b0`` only.
    ``derived`` lists volumes with b > 0 and an all-zero gradient vector: not
    acquisitions but scanner-derived trace / isotropic images, which the
    diffusion stage leaves out (as dcm2niix does); they are in no shell.
    """

    bvals: np.ndarray
    bvecs: np.ndarray
    n_volumes: int
    n_b0: int
    shells: tuple[tuple[float, int], ...]
    warnings: tuple[str, ...]
    derived: tuple[int, ...] = ()


def _volumes_text(idx: np.ndarray, limit: int = 8) -> str:
    shown = ", ".join(str(int(i)) for i in idx[:limit])
    return shown + (f", ... ({idx.size} in total)" if idx.size > limit else "")


def validate_dwi(
    dwi_path: PathT,
    bval_path: PathT,
    bvec_path: PathT,
    *,
    b0_threshold: float = 50.0,
    shell_tolerance: float = 100.0,
    bvec_norm_tolerance: float = 0.1,
    min_directions: int = 6,
) -> DwiCheck:
    """Check a DWI series and its gradient table.

    Requirements: a 4-D finite image with a sane affine; one b-value and one
    gradient vector per volume; at least one b=0 volume (``b <=
    b0_threshold``) and at least one diffusion-weighted volume; gradient
    vectors of b>0 volumes non-zero and of unit length within
    ``bvec_norm_tolerance``; every b>0 shell (b-values within
    ``shell_tolerance``) with at least ``min_directions`` distinct directions
    (antipodal directions and directions within 1° count once).

    Raises
    ------
    InputError
        Naming the offending file (the image, the ``.bval`` or the ``.bvec``).
    """
    dwi_path, bval_path, bvec_path = Path(dwi_path), Path(bval_path), Path(bvec_path)
    img = load_image(dwi_path, ndim=4)
    n_volumes = int(img.shape[3])

    bvals, bvecs, notes = _read_gradients(bval_path, bvec_path, None)
    if bvals.size != n_volumes:
        raise InputError(
            bval_path,
            f"expected {n_volumes} b-values (one per volume of {dwi_path}), got {bvals.size}",
        )

    b0 = bvals <= b0_threshold
    n_b0 = int(b0.sum())
    if n_b0 == 0:
        raise InputError(
            bval_path,
            f"expected at least one b=0 volume (b <= {b0_threshold:g} s/mm²), got none "
            f"(smallest b-value {bvals.min():g})",
        )
    dw = np.flatnonzero(~b0)
    if dw.size == 0:
        raise InputError(
            bval_path,
            f"expected at least one diffusion-weighted volume (b > {b0_threshold:g} s/mm²), "
            f"got only b=0 volumes",
        )

    norms = np.linalg.norm(bvecs[dw], axis=1)
    zero = dw[norms < 1e-6]
    if zero.size == dw.size:
        raise InputError(
            bvec_path,
            f"expected a non-zero gradient direction for every b > {b0_threshold:g} volume, "
            f"got all-zero vectors at volume(s) {_volumes_text(zero)}",
        )
    if zero.size:  # a derived trace / ADC image kept by the converter: left out downstream
        notes.append(
            f"volume(s) {_volumes_text(zero)} of {dwi_path.name} have b > {b0_threshold:g} and an "
            "all-zero gradient vector: scanner-derived trace / isotropic image(s), not "
            "acquisitions; the diffusion stage leaves them out (as dcm2niix does)"
        )
        keep = norms >= 1e-6
        dw, norms = dw[keep], norms[keep]
    bad = np.abs(norms - 1.0) > bvec_norm_tolerance
    if bad.any():
        idx = dw[bad]
        raise InputError(
            bvec_path,
            f"expected unit-length gradient vectors (|norm - 1| <= {bvec_norm_tolerance:g}) "
            f"for b > {b0_threshold:g} volumes, got norm {norms[bad][0]:.3g} at volume "
            f"{int(idx[0])} ({idx.size} vector(s) out of tolerance: volume(s) "
            f"{_volumes_text(idx)})",
        )

    shells: list[tuple[float, int]] = []
    acquired = np.setdiff1d(np.arange(bvals.size), zero)
    for b, idx in group_shells(bvals[acquired], b0_threshold=b0_threshold,
                               tolerance=shell_tolerance):
        idx = acquired[idx]
        if b == 0.0:
            continue
        n_dirs = count_unique_directions(bvecs[idx], angle_tolerance_deg=1.0)
        if n_dirs < min_directions:
            raise InputError(
                bvec_path,
                f"expected at least {min_directions} distinct gradient directions in the "
                f"b≈{b:g} shell, got {n_dirs} (from {idx.size} volumes; antipodal and "
                "near-identical directions count once)",
            )
        shells.append((b, n_dirs))

    for note in notes:
        warnings.warn(note, InputWarning, stacklevel=2)
    return DwiCheck(
        bvals=bvals,
        bvecs=bvecs,
        n_volumes=n_volumes,
        n_b0=n_b0,
        shells=tuple(shells),
        warnings=tuple(notes),
        derived=tuple(int(k) for k in zero),
    )


# -------------------------------------------------------------------- BOLD
@dataclass(frozen=True)
class BoldCheck:
    """Result of :func:`validate_bold`; ``repetition_time`` in seconds."""

    n_volumes: int
    repetition_time: float
    slice_timing: tuple[float, ...] | None
    warnings: tuple[str, ...]


_TIME_UNITS = {"sec": 1.0, "msec": 1e-3, "usec": 1e-6, "unknown": 1.0}


def _read_sidecar(bold_path: Path, json_path: PathT | None) -> tuple[dict, Path]:
    if json_path is None:
        raise InputError(
            bold_path,
            "RepetitionTime is missing: expected a JSON sidecar giving RepetitionTime, "
            "got no sidecar",
        )
    json_path = Path(json_path)
    if not json_path.is_file():
        raise InputError(
            bold_path,
            f"RepetitionTime is missing: expected a JSON sidecar at {json_path}, "
            "but it does not exist",
        )
    return read_json_object(json_path), json_path


def validate_bold(
    bold_path: PathT,
    json_path: PathT | None,
    *,
    min_volumes: int = 50,
    metadata: Mapping[str, Any] | None = None,
) -> BoldCheck:
    """Check a BOLD series and its timing metadata.

    Parameters
    ----------
    bold_path : path-like
        4-D BOLD image with at least ``min_volumes`` volumes.
    json_path : path-like or None
        JSON sidecar holding ``RepetitionTime`` (seconds, > 0) and optionally
        ``SliceTiming``.
    metadata : mapping, optional
        Already-resolved sidecar metadata (e.g. from BIDS inheritance via
        ``BIDSLayout.get_metadata``); when given it is used instead of reading
        ``json_path``, which is then only quoted in messages.

    A header ``pixdim[4]`` disagreeing with ``RepetitionTime`` by more than 1 %
    and implausible ``SliceTiming`` values are reported as warnings.
    """
    bold_path = Path(bold_path)
    img = load_image(bold_path, ndim=4)
    n_volumes = int(img.shape[3])

    if metadata is not None:
        meta, source = dict(metadata), (Path(json_path) if json_path else bold_path)
    else:
        meta, source = _read_sidecar(bold_path, json_path)

    if "RepetitionTime" not in meta:
        raise InputError(
            bold_path,
            f"RepetitionTime is missing from the sidecar metadata ({source}); "
            "expected the repetition time in seconds",
        )
    tr = meta["RepetitionTime"]
    if isinstance(tr, bool) or not isinstance(tr, (int, float)) or not math.isfinite(tr):
        raise InputError(source, f"expected RepetitionTime to be a number, got {tr!r}")
    tr = float(tr)
    if tr <= 0:
        raise InputError(source, f"expected a positive RepetitionTime (s), got {tr:g}")

    notes: list[str] = []
    header = img.header
    zooms = header.get_zooms()
    if len(zooms) >= 4 and zooms[3] > 0:
        unit = "unknown"
        if hasattr(header, "get_xyzt_units"):
            unit = header.get_xyzt_units()[1]
        pixdim_s = float(zooms[3]) * _TIME_UNITS.get(unit, 1.0)
        if abs(pixdim_s - tr) > 0.01 * tr:
            notes.append(
                f"{bold_path}: header pixdim[4] gives TR = {pixdim_s:g} s but the sidecar "
                f"({source}) gives RepetitionTime = {tr:g} s; using the sidecar value"
            )

    if n_volumes < min_volumes:
        raise InputError(bold_path, f"expected at least {min_volumes} volumes, got {n_volumes}")

    slice_timing = None
    if "SliceTiming" in meta:
        st = meta["SliceTiming"]
        try:
            slice_timing = tuple(float(t) for t in st)
        except (TypeError, ValueError):
            raise InputError(
                source, f"expected SliceTiming to be a list of numbers, got {st!r}"
            ) from None
        if any(not math.isfinite(t) or t < 0 or t >= tr for t in slice_timing):
            notes.append(
                f"{source}: SliceTiming values should lie in [0, RepetitionTime={tr:g} s), "
                f"got range [{min(slice_timing):g}, {max(slice_timing):g}]"
            )
        if len(slice_timing) not in img.shape[:3]:
            notes.append(
                f"{source}: SliceTiming has {len(slice_timing)} entries but no spatial axis "
                f"of {bold_path} has that many slices (shape {img.shape[:3]})"
            )

    for note in notes:
        warnings.warn(note, InputWarning, stacklevel=2)
    return BoldCheck(
        n_volumes=n_volumes,
        repetition_time=tr,
        slice_timing=slice_timing,
        warnings=tuple(notes),
    )


# -------------------------------------------------------------------- masks
def _fmt_affine(affine: np.ndarray) -> str:
    rows = np.asarray(affine, dtype=float)[:3]
    return "[" + "; ".join(" ".join(f"{v:.4g}" for v in row) for row in rows) + "]"


def validate_mask_grid(
    mask_path: PathT,
    reference_path: PathT,
    *,
    tolerance_mm: float = 0.01,
    allow_labels: bool = False,
) -> nib.spatialimages.SpatialImage:
    """Check that a mask is a non-empty binary 3-D image on the reference grid.

    The mask must be 3-D, have the reference's spatial shape and an affine
    equal to the reference's within ``tolerance_mm`` (absolute, per element).
    Values must be 0/1 (bool, integer or float storage are accepted); with
    ``allow_labels=True`` non-negative integer labels are accepted too.  A
    mask without any non-zero voxel is an error.

    Returns the (lazily loaded) mask image.
    """
    mask_path, reference_path = Path(mask_path), Path(reference_path)
    ref = _open_header(reference_path)
    mask, data = _load(mask_path, ndim=3)

    ref_shape = tuple(int(s) for s in ref.shape[:3])
    mask_shape = tuple(int(s) for s in mask.shape)
    same_affine = np.allclose(mask.affine, ref.affine, rtol=0.0, atol=tolerance_mm)
    if mask_shape != ref_shape or not same_affine:
        raise InputError(
            mask_path,
            f"expected the grid of the reference image {reference_path} "
            f"(shape {'x'.join(map(str, ref_shape))}, affine {_fmt_affine(ref.affine)}), "
            f"got shape {'x'.join(map(str, mask_shape))}, affine {_fmt_affine(mask.affine)} "
            f"(tolerance {tolerance_mm:g} mm)",
        )

    values = np.unique(data)
    if allow_labels:
        ok = bool(np.all(values >= 0) and np.all(values == np.round(values)))
        expected = "non-negative integer labels"
    else:
        ok = bool(np.all(np.isin(values, (0, 1))))
        expected = "binary values (0 and 1)"
    if not ok:
        shown = ", ".join(f"{v:g}" for v in values[:6].astype(float))
        more = f", ... ({values.size} distinct values)" if values.size > 6 else ""
        raise InputError(mask_path, f"expected {expected}, got values {shown}{more}")
    if not np.any(data):
        raise InputError(mask_path, "expected at least one non-zero voxel, got an empty mask")
    return mask


def read_json_object(path: PathT) -> dict:
    """Read a JSON file that must hold an object (a sidecar, a dataset description).

    Raises
    ------
    InputError
        Naming ``path``, when it cannot be read, is not valid JSON or is not an object.
    """
    path = Path(path)
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(path, f"expected valid JSON, got: {exc}") from exc
    if not isinstance(content, dict):
        raise InputError(path, f"expected a JSON object, got {type(content).__name__}")
    return content
