"""One-line descriptions of input images for the run inventory table.

Only image headers are read (never the voxel data): this runs after
validation, on every input of every session.
"""

from __future__ import annotations

from os import PathLike
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from pipeline.errors import InputError
from pipeline.gradients import count_unique_directions, group_shells

__all__ = ["describe_image", "format_shells"]


def format_shells(
    bvals: np.ndarray, *, b0_threshold: float = 50.0, shell_tolerance: float = 100.0
) -> str:
    """Shells with their volume counts, e.g. ``"0x5,1000x60"`` (b rounded to integers)."""
    shells = group_shells(bvals, b0_threshold=b0_threshold, tolerance=shell_tolerance)
    return ",".join(f"{round(b):d}x{idx.size}" for b, idx in shells)


def describe_image(
    path: str | PathLike[str],
    *,
    modality: str,
    bvals: np.ndarray | None = None,
    bvecs: np.ndarray | None = None,
    repetition_time: float | None = None,
    shell_tolerance: float = 100.0,
    b0_threshold: float = 50.0,
) -> dict[str, Any]:
    """Describe an image from its header.

    Returns
    -------
    dict
        ``modality``; ``path`` (str); ``shape`` (spatial, e.g. ``"96x96x60"``);
        ``n_volumes`` (size of the 4th axis, 1 for 3-D images);
        ``voxel_size_mm`` (e.g. ``"2.00x2.00x2.00"``); ``orientation``
        (e.g. ``"LAS"``); ``datatype`` (on-disk dtype, e.g. ``"int16"``);
        ``b_values`` (e.g. ``"0x5,1000x60"``: shell b-value x number of
        volumes); ``n_directions`` (distinct directions over all b>0
        volumes, antipodal pairs counted once); ``repetition_time_s``.
        Entries that do not apply are ``None``.
    """
    path = Path(path)
    try:
        img = nib.load(path)
    except FileNotFoundError as exc:
        raise InputError(path, "file not found (expected a NIfTI image)") from exc
    except (OSError, ValueError, nib.filebasedimages.ImageFileError) as exc:
        raise InputError(path, f"unreadable image header: {exc}") from exc

    shape = tuple(int(s) for s in img.shape)
    zooms = img.header.get_zooms()[:3]
    try:
        orientation = "".join(nib.aff2axcodes(img.affine))
    except (ValueError, np.linalg.LinAlgError):
        orientation = None

    b_values = n_directions = None
    if bvals is not None:
        bvals = np.asarray(bvals, dtype=float).ravel()
        b_values = format_shells(bvals, b0_threshold=b0_threshold, shell_tolerance=shell_tolerance)
        if bvecs is not None:
            bvecs = np.asarray(bvecs, dtype=float).reshape(-1, 3)
            n_directions = count_unique_directions(bvecs[bvals > b0_threshold])

    return {
        "modality": modality,
        "path": str(path),
        "shape": "x".join(str(s) for s in shape[:3]),
        "n_volumes": shape[3] if len(shape) >= 4 else 1,
        "voxel_size_mm": "x".join(f"{float(z):.2f}" for z in zooms),
        "orientation": orientation,
        "datatype": np.dtype(img.get_data_dtype()).name,
        "b_values": b_values,
        "n_directions": n_directions,
        "repetition_time_s": None if repetition_time is None else float(repetition_time),
    }
