"""Learned brain extraction: the deepbet networks run with onnxruntime.

deepbet (Fisch et al., Computers in Biology and Medicine 2024,
doi:10.1016/j.compbiomed.2024.109079, MIT licence) segments the brain of a T1w
image with two 3-D U-Nets: one localises the brain on a 128^3 resampling of the
whole image, the other segments its bounding box resampled to 256^3. Its weights
ship with msmri as ONNX files (``pipeline/models/deepbet``, with their licence and
provenance); deepbet itself needs PyTorch, which is several hundred megabytes for
two forward passes, so the pre- and post-processing around the networks is written
here on numpy / scipy, following the published procedure step by step:

1. reorient the voxel array to the closest RAS orientation (the networks were
   trained on RAS arrays);
2. resample the array to 128^3 (nearest neighbour, voxel-index space, as the
   networks were trained), clip intensities to the 0.5-99.5 percentiles of that
   resampling, standardise and rescale to mean 0.449 / SD 0.226;
3. localisation network -> largest connected component -> bounding box of the
   rows, columns and slices whose mean brain fraction exceeds 0.02, enlarged by
   10 % on each side;
4. the bounding box of the full array resampled to 256^3, normalised with the same
   percentiles, segmentation network, its probability resampled back into the box;
5. probability > 0.5, largest connected component, enclosed holes filled.

The resampling ignores the voxel size on purpose (the networks saw every training
image as a 256^3 box); on the real 0.72 x 0.72 x 3 mm clinical scans of
openms-longitudinal-patient01 the mask on the native grid agrees better with the
database's brain mask than one computed on a 1 mm isotropic resampling (Dice
0.950-0.964 vs 0.871-0.912, benchmarks/bench_brain_extraction.py).

Both networks run on one thread by default (about 10 s and 0.7 GB per image);
the ONNX sessions are cached per process.
"""

from __future__ import annotations

import functools
import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["MODEL_DIR", "LearnedBrainMask", "deepbet_brain_mask"]

#: Folder of the shipped ONNX networks (with LICENSE and README).
MODEL_DIR = Path(__file__).resolve().parents[1] / "models" / "deepbet"
_SMALL = (128, 128, 128)
_FULL = (256, 256, 256)
_BBOX_MARGIN = 0.1
_BBOX_FRACTION = 0.02


@dataclass(frozen=True, eq=False)
class LearnedBrainMask:
    """Result of :func:`deepbet_brain_mask` on the input grid.

    Attributes
    ----------
    mask : ndarray bool
        Brain mask (largest component, holes filled).
    probability : ndarray float32
        Network brain probability (0 outside the brain's bounding box).
    """

    mask: np.ndarray
    probability: np.ndarray


@functools.cache
def _session(name: str, threads: int):
    import onnxruntime as ort

    path = MODEL_DIR / f"{name}.onnx.gz"
    if not path.exists():
        raise FileNotFoundError(
            f"{path}: deepbet network missing from the msmri installation "
            "(reinstall msmri; see pipeline/models/deepbet/README.md)"
        )
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, int(threads))
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(
        gzip.decompress(path.read_bytes()), opts, providers=["CPUExecutionProvider"]
    )


def _nearest_index(n_in: int, n_out: int) -> np.ndarray:
    """Source index of each output index for a nearest-neighbour resize (pixel centres)."""
    idx = np.floor((np.arange(n_out) + 0.5) * (n_in / n_out)).astype(np.int64)
    return np.minimum(idx, n_in - 1)


def _resize(a: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    i, j, k = (_nearest_index(n, m) for n, m in zip(a.shape, shape, strict=True))
    return a[np.ix_(i, j, k)]


def _normalise(x: np.ndarray, low: float, high: float) -> np.ndarray:
    scale = high - low if high > low else 1.0
    y = np.clip((x - low) / scale, 0.0, 1.0)
    sd = float(y.std())
    y = (y - float(y.mean())) / (sd if sd > 0 else 1.0)
    return (0.226 * y + 0.449).astype(np.float32)


def _run(name: str, x: np.ndarray, threads: int) -> np.ndarray:
    prob = _session(name, threads).run(None, {"image": x[None, None]})[0]
    return np.asarray(prob[0, 1], dtype=np.float32)


def _largest(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    labels, n = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
    if n <= 1:
        return labels > 0
    sizes = np.bincount(labels.ravel())[1:]
    return labels == int(np.argmax(sizes)) + 1


def _bbox(small_mask: np.ndarray, full_shape: tuple[int, ...]) -> tuple[slice, slice, slice]:
    out = []
    for axis in range(3):
        others = tuple(a for a in range(3) if a != axis)
        rows = np.flatnonzero(small_mask.mean(axis=others) > _BBOX_FRACTION)
        if rows.size == 0:
            raise ValueError("the localisation network found no brain in the image")
        scale = full_shape[axis] / small_mask.shape[axis]
        centre = scale * (rows.max() + 1 + rows.min()) / 2.0
        size = scale * (rows.max() + 1 - rows.min()) * (1 + 2 * _BBOX_MARGIN)
        centre, size = np.round(centre), np.round(size)
        lo, hi = int(centre - size / 2), int(centre + size / 2)
        out.append(slice(max(0, lo), min(full_shape[axis], hi)))
    return tuple(out)  # type: ignore[return-value]


def deepbet_brain_mask(img, *, threshold: float = 0.5, threads: int = 1) -> LearnedBrainMask:
    """Brain mask of a 3-D head image with the deepbet networks.

    Parameters
    ----------
    img : nibabel image
        3-D T1w (the networks' training contrast; FLAIR and T2w work on the real
        clinical scans too, Dice 0.96 with the database mask on patient01's FLAIR).
    threshold : float
        Probability above which a voxel is brain (deepbet's default 0.5).
    threads : int
        onnxruntime intra-op threads.

    Returns
    -------
    LearnedBrainMask
        On the input grid and orientation.

    Raises
    ------
    ValueError
        If the image is not 3-D or the localisation network finds no brain.
    """
    import nibabel as nib
    from scipy import ndimage

    data = np.asarray(img.dataobj, dtype=np.float32)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ValueError(f"expected a 3-D image, got shape {data.shape}")
    data = np.nan_to_num(data, nan=0.0, posinf=0.0, neginf=0.0)
    ornt = nib.io_orientation(img.affine)
    to_ras = nib.orientations.ornt_transform(ornt, [[0, 1], [1, 1], [2, 1]])
    x = nib.orientations.apply_orientation(data, to_ras)

    small = _resize(x, _SMALL)
    low, high = (float(v) for v in np.quantile(small, [0.005, 0.995]))
    small_prob = _run("bbox_model", _normalise(small, low, high), threads)
    small_mask = _largest(small_prob > 0.5).astype(np.float32)
    box = _bbox(small_mask, x.shape)

    crop = x[box]
    prob_full = _run("model", _normalise(_resize(crop, _FULL), low, high), threads)
    prob = np.zeros(x.shape, dtype=np.float32)
    prob[box] = _resize(prob_full, crop.shape)
    mask = np.zeros(x.shape, dtype=bool)
    mask[box] = ndimage.binary_fill_holes(_largest(prob[box] > threshold))

    back = nib.orientations.ornt_transform([[0, 1], [1, 1], [2, 1]], ornt)
    mask = nib.orientations.apply_orientation(mask, back).astype(bool)
    prob = nib.orientations.apply_orientation(prob, back).astype(np.float32)
    return LearnedBrainMask(mask=mask, probability=prob)
