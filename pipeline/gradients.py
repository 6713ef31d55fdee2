"""Diffusion gradient tables: reading FSL/BIDS ``.bval``/``.bvec`` files and
converting gradient directions between the FSL voxel frame and world space.

Conventions
-----------
BIDS uses the FSL convention for ``.bvec`` files: three rows (x, y, z) with one
column per volume, the components being expressed in the *voxel-axis* frame of
the image, with the x component flipped when the voxel-to-world matrix has a
positive determinant (i.e. the frame is always "radiological").  ``.bval``
files hold a single row of b-values in s/mm².

This module only needs numpy; it is cheap to import.
"""

from __future__ import annotations

import warnings
from os import PathLike
from pathlib import Path

import numpy as np

from pipeline.errors import InputError

__all__ = [
    "InputWarning",
    "affine_rotation",
    "count_unique_directions",
    "fsl_to_world",
    "group_shells",
    "read_bvals_bvecs",
    "world_to_fsl",
]

PathT = str | PathLike[str]


class InputWarning(UserWarning):
    """An input file is usable but unusual (and was possibly repaired)."""


# --------------------------------------------------------------------- reading
def _read_numeric_rows(path: Path) -> list[list[float]]:
    """Rows of floats from a whitespace/comma separated text file (blank lines dropped)."""
    if not path.exists():
        raise InputError(path, "file not found (expected an FSL-style gradient text file)")
    if not path.is_file():
        raise InputError(path, "expected a text file, got a directory")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(path, f"unreadable: expected a plain-text gradient file ({exc})") from exc
    rows: list[list[float]] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        tokens = line.replace(",", " ").split()
        if not tokens:
            continue
        try:
            rows.append([float(t) for t in tokens])
        except ValueError:
            bad = next(t for t in tokens if not _is_float(t))
            raise InputError(
                path, f"line {lineno}: expected numbers only, got non-numeric value {bad!r}"
            ) from None
    if not rows:
        raise InputError(path, "expected numeric gradient values, got an empty file")
    return rows


def _is_float(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def _read_gradients(
    bval_path: PathT, bvec_path: PathT, n_volumes: int | None
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Implementation of :func:`read_bvals_bvecs`; returns warning texts instead of emitting."""
    bval_path = Path(bval_path)
    bvec_path = Path(bvec_path)
    notes: list[str] = []

    bval_rows = _read_numeric_rows(bval_path)
    if len(bval_rows) != 1:
        raise InputError(
            bval_path,
            f"expected a single row of b-values (one per volume), got {len(bval_rows)} rows",
        )
    bvals = np.asarray(bval_rows[0], dtype=float)
    if not np.all(np.isfinite(bvals)):
        raise InputError(bval_path, "expected finite b-values, got NaN or Inf")
    if np.any(bvals < 0):
        neg = np.flatnonzero(bvals < 0)
        raise InputError(
            bval_path,
            f"expected non-negative b-values, got {bvals[neg[0]]:g} at volume {neg[0]}"
            f" ({neg.size} negative value(s))",
        )

    bvec_rows = _read_numeric_rows(bvec_path)
    lengths = {len(r) for r in bvec_rows}
    if len(lengths) != 1:
        raise InputError(
            bvec_path,
            "expected 3 rows of equal length (x, y, z components), got rows of lengths "
            + ", ".join(str(len(r)) for r in bvec_rows),
        )
    table = np.asarray(bvec_rows, dtype=float)
    n_rows, n_cols = table.shape
    if n_rows == 3:
        bvecs = table.T
    elif n_cols == 3:
        bvecs = table
        notes.append(
            f"{bvec_path}: gradient table is stored as {n_rows} rows x 3 columns (one row per "
            "volume); expected 3 rows x N columns (FSL/BIDS convention); it was transposed"
        )
    else:
        raise InputError(
            bvec_path,
            f"expected 3 rows (x, y, z) with one column per volume, got {n_rows} rows x "
            f"{n_cols} columns",
        )
    if not np.all(np.isfinite(bvecs)):
        raise InputError(bvec_path, "expected finite gradient components, got NaN or Inf")

    if bvecs.shape[0] != bvals.size:
        raise InputError(
            bvec_path,
            f"expected {bvals.size} gradient vectors (one per b-value in {bval_path}), "
            f"got {bvecs.shape[0]}",
        )
    if n_volumes is not None and bvals.size != n_volumes:
        raise InputError(
            bval_path,
            f"expected {n_volumes} b-values (one per image volume), got {bvals.size}",
        )
    return bvals, np.ascontiguousarray(bvecs), notes


def read_bvals_bvecs(
    bval_path: PathT, bvec_path: PathT, *, n_volumes: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Read an FSL/BIDS gradient table.

    Parameters
    ----------
    bval_path, bvec_path : path-like
        ``.bval`` (one row of N b-values) and ``.bvec`` (3 rows x N columns).
        A ``.bvec`` stored as N rows x 3 columns (N != 3) is transposed with an
        :class:`InputWarning`.
    n_volumes : int, optional
        Number of volumes of the matching DWI image; when given, the number of
        b-values must equal it.

    Returns
    -------
    bvals : ndarray, shape (N,), float
    bvecs : ndarray, shape (N, 3), float
        Exactly as written (FSL voxel frame, not normalised).

    Raises
    ------
    InputError
        Naming the offending file: missing, unreadable or non-numeric files,
        a ``.bval`` that is not a single row, negative or non-finite values,
        a malformed ``.bvec``, differing counts.
    """
    bvals, bvecs, notes = _read_gradients(bval_path, bvec_path, n_volumes)
    for note in notes:
        warnings.warn(note, InputWarning, stacklevel=2)
    return bvals, bvecs


# ------------------------------------------------------------------ geometry
def affine_rotation(affine: np.ndarray) -> np.ndarray:
    """Rotation (possibly improper) part of ``affine[:3, :3]``.

    Columns are normalised to unit length (removing voxel sizes) and the
    closest orthogonal matrix is taken (polar decomposition), which removes any
    residual shear.  The determinant sign of the input is preserved.
    """
    affine = np.asarray(affine, dtype=float)
    if affine.shape not in ((4, 4), (3, 3)):
        raise ValueError(f"expected a 4x4 (or 3x3) affine, got shape {affine.shape}")
    m = affine[:3, :3]
    norms = np.linalg.norm(m, axis=0)
    if not np.all(np.isfinite(m)) or np.any(norms < 1e-12):
        raise ValueError("degenerate affine: non-finite values or a zero-length voxel axis")
    m = m / norms
    u, _, vt = np.linalg.svd(m)
    return u @ vt


def _normalise(v: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(v, axis=-1, keepdims=True)
    out = np.zeros_like(v)
    np.divide(v, norms, out=out, where=norms > 0)
    return out


def _as_vectors(vectors: np.ndarray) -> tuple[np.ndarray, bool]:
    arr = np.asarray(vectors, dtype=float)
    single = arr.ndim == 1
    arr = np.atleast_2d(arr)
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise ValueError(f"expected vectors of shape (N, 3) or (3,), got {np.shape(vectors)}")
    return arr, single


def fsl_to_world(bvecs: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Convert FSL/BIDS ``bvecs`` (N, 3) to unit world (RAS+) directions.

    ``v_vox = bvec`` with x negated when ``det(affine[:3, :3]) > 0``;
    ``world = normalise(R @ v_vox)`` with ``R`` the rotation part of the affine
    (see :func:`affine_rotation`).  Zero vectors (b=0 volumes) stay zero.  For an
    image stored LAS (negative determinant) the FSL vector *is* the voxel-frame
    vector.
    """
    vecs, single = _as_vectors(bvecs)
    rot = affine_rotation(affine)
    vox = vecs.copy()
    if np.linalg.det(np.asarray(affine, dtype=float)[:3, :3]) > 0:
        vox[:, 0] = -vox[:, 0]
    world = _normalise(vox @ rot.T)
    return world[0] if single else world


def world_to_fsl(dirs: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Inverse of :func:`fsl_to_world`: world (RAS+) directions to unit FSL bvecs."""
    vecs, single = _as_vectors(dirs)
    rot = affine_rotation(affine)
    vox = _normalise(vecs @ rot)  # rot is orthogonal: inverse == transpose
    if np.linalg.det(np.asarray(affine, dtype=float)[:3, :3]) > 0:
        vox[:, 0] = -vox[:, 0]
    return vox[0] if single else vox


# ---------------------------------------------------------------- shells
def group_shells(
    bvals: np.ndarray, *, b0_threshold: float = 50.0, tolerance: float = 100.0
) -> list[tuple[float, np.ndarray]]:
    """Group b-values into shells.

    Volumes with ``b <= b0_threshold`` form the b=0 shell (reported as 0.0).
    The remaining b-values are sorted and a new shell starts whenever a value
    exceeds the first value of the current shell by more than ``tolerance``.

    Returns
    -------
    list of (shell_bvalue, volume_indices)
        Sorted by b-value; the shell b-value is the median of its members
        (0.0 for the b=0 shell).  Empty shells are omitted.
    """
    bvals = np.asarray(bvals, dtype=float).ravel()
    shells: list[tuple[float, np.ndarray]] = []
    b0 = np.flatnonzero(bvals <= b0_threshold)
    if b0.size:
        shells.append((0.0, b0))
    dw = np.flatnonzero(bvals > b0_threshold)
    if dw.size == 0:
        return shells
    order = dw[np.argsort(bvals[dw], kind="stable")]
    current = [order[0]]
    start = bvals[order[0]]
    for idx in order[1:]:
        if bvals[idx] - start > tolerance:
            shells.append((float(np.median(bvals[current])), np.sort(np.asarray(current))))
            current, start = [idx], bvals[idx]
        else:
            current.append(idx)
    shells.append((float(np.median(bvals[current])), np.sort(np.asarray(current))))
    return shells


def count_unique_directions(bvecs: np.ndarray, *, angle_tolerance_deg: float = 1.0) -> int:
    """Number of distinct directions among ``bvecs`` (N, 3).

    Directions equal up to sign (antipodal) count once; two directions are the
    same when the angle between them (modulo sign) is below
    ``angle_tolerance_deg``.  Zero vectors are ignored.
    """
    vecs, _ = _as_vectors(bvecs)
    norms = np.linalg.norm(vecs, axis=1)
    unit = vecs[norms > 0] / norms[norms > 0, None]
    cos_tol = np.cos(np.deg2rad(angle_tolerance_deg))
    reps: list[np.ndarray] = []
    for v in unit:
        if not reps or np.max(np.abs(np.asarray(reps) @ v)) < cos_tol:
            reps.append(v)
    return len(reps)
