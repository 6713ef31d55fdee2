"""File helpers shared by the Nipype interfaces of every stage (node working folders)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

__all__ = [
    "CANONICAL_GRADIENT_KEYS",
    "GRADIENT_KEYS",
    "SERIES_EXT",
    "dwi_gradients",
    "load_array",
    "save_array",
    "validated_gradients",
    "xfm_json",
]

#: Extension of the 4-D series (DWI, BOLD) nodes hand to each other in their working
#: folders: uncompressed, because gzip does not shrink noisy float32 data much and is
#: slow: for one trial-preset DWI series (78 x 98 x 81 x 66) a .nii.gz took 12.2 s to
#: save and 3.8 s to load, a .nii 1.8 s and 0.0 s (memory map). The derivatives writer
#: compresses what it publishes.
SERIES_EXT = ".nii"


def save_array(
    data: np.ndarray, like: nib.spatialimages.SpatialImage, path: Path, dtype=np.float32
) -> str:
    """Save ``data`` on the grid of ``like`` (affine, mm units); returns the path."""
    img = nib.Nifti1Image(np.asarray(data).astype(dtype), like.affine)
    img.header.set_xyzt_units("mm")
    nib.save(img, path)
    return str(path)


def load_array(path: str, dtype=None) -> np.ndarray:
    """The data array of a NIfTI file (optionally cast)."""
    data = np.asanyarray(nib.load(path).dataobj)
    return data if dtype is None else np.asarray(data, dtype=dtype)


#: The ``validation`` keys of the gradient-table check of a raw series
#: (:func:`validated_gradients`).
GRADIENT_KEYS = ("b0_threshold", "shell_tolerance", "bvec_norm_tolerance", "min_directions")
#: The keys needed to read a canonical table (:func:`dwi_gradients`).
CANONICAL_GRADIENT_KEYS = ("b0_threshold", "shell_tolerance")


def validated_gradients(bval: str, bvec: str, dwi: str, cfg: dict):
    """The validated gradient table of a raw DWI series (the ``validation`` settings of
    ``cfg``, :data:`GRADIENT_KEYS`): done once, by the node that loads the series."""
    from pipeline.dwi.gradtable import DwiGradients

    return DwiGradients.from_files(dwi, bval, bvec,
                                   **{k: cfg["validation"][k] for k in GRADIENT_KEYS})


def dwi_gradients(bval: str, bvec: str, dwi: str, cfg: dict):
    """The canonical gradient table a previous node wrote (already validated): the text
    files and the image header only, no voxel data read."""
    from pipeline.dwi.gradtable import DwiGradients

    return DwiGradients.from_canonical(dwi, bval, bvec,
                                       **{k: cfg["validation"][k] for k in CANONICAL_GRADIENT_KEYS})


def xfm_json(files: list[Path]) -> str:
    """The transform JSON among the files :meth:`Transform.save` wrote."""
    return str(next(f for f in files if str(f).endswith(".json")))

