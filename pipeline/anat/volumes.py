"""Tissue and lesion volumes from a partial-volume segmentation.

Definitions (all volumes in mm^3, from partial-volume fractions x voxel volume,
never from hard label counts):

* ``icv``: intracranial volume, the brain mask of the segmentation (every voxel
  where a tissue fraction or the lesion map is defined, CSF included);
* ``gm``, ``wm``, ``csf``: sums of the tissue fractions (lesion voxels carry
  none of them);
* ``lesion``: the lesion map (``seg.lesion``, or ``lesion_mask`` when given);
* ``brain``: total brain parenchyma ``gm + wm + lesion``;
* ``cortical_gm``: GM fractions inside ``cortex_mask`` (e.g. the template cortex
  warped to the subject, :mod:`pipeline.templates`), else omitted;
* ``nawm``: WM fractions inside ``nawm_mask`` when given, else WM fractions
  outside the lesions dilated by one voxel (the perilesional rim, often
  abnormal, is excluded);
* keys are ``<name>_mm3``; every volume but the ICV is also given as a
  fraction of it (``<name>_fraction_icv``); ``bpf = brain / icv`` is the brain
  parenchymal fraction.
"""

from __future__ import annotations

import numpy as np

from pipeline.errors import InputError

__all__ = ["tissue_volumes"]


def tissue_volumes(
    seg,
    *,
    voxel_volume_mm3: float,
    lesion_mask: np.ndarray | None = None,
    nawm_mask: np.ndarray | None = None,
    cortex_mask: np.ndarray | None = None,
) -> dict:
    """Volumes (mm^3) and fractions of the intracranial volume.

    Parameters
    ----------
    seg : pipeline.anat.segment.Segmentation
    voxel_volume_mm3 : float
        Volume of one voxel of the segmentation grid.
    lesion_mask, nawm_mask, cortex_mask : ndarray bool, optional
        Masks on the segmentation grid (module docstring).

    Returns
    -------
    dict
        ``icv_mm3, brain_mm3, gm_mm3, wm_mm3, csf_mm3, lesion_mm3, nawm_mm3``
        (+ ``cortical_gm_mm3``), ``<name>_fraction_icv`` for all but the ICV,
        ``bpf`` and ``voxel_volume_mm3``.
    """
    from scipy import ndimage

    from pipeline.anat.brain import check_mask

    vv = float(voxel_volume_mm3)
    if not np.isfinite(vv) or vv <= 0:
        raise InputError(
            None, f"voxel_volume_mm3: expected a positive number, got {voxel_volume_mm3}"
        )
    shape = seg.gm.shape
    lesion_map = np.asarray(seg.lesion, dtype=np.float64)
    if lesion_mask is not None:
        lesion_map = check_mask(lesion_mask, shape, "lesion_mask", allow_empty=True).astype(float)
    icv_mask = (seg.labels > 0) | (lesion_map > 0)
    gm = np.asarray(seg.gm, dtype=np.float64)
    wm = np.asarray(seg.wm, dtype=np.float64)
    csf = np.asarray(seg.csf, dtype=np.float64)
    out = {
        "icv_mm3": float(icv_mask.sum()) * vv,
        "gm_mm3": float(gm.sum()) * vv,
        "wm_mm3": float(wm.sum()) * vv,
        "csf_mm3": float(csf.sum()) * vv,
        "lesion_mm3": float(lesion_map.sum()) * vv,
    }
    out["brain_mm3"] = out["gm_mm3"] + out["wm_mm3"] + out["lesion_mm3"]
    if nawm_mask is not None:
        nawm = check_mask(nawm_mask, shape, "nawm_mask", allow_empty=True)
    else:
        les = lesion_map > 0
        near = (
            ndimage.binary_dilation(les, structure=np.ones((3, 3, 3), bool)) if les.any() else les
        )
        nawm = ~near
    out["nawm_mm3"] = float(wm[nawm].sum()) * vv
    if cortex_mask is not None:
        ctx = check_mask(cortex_mask, shape, "cortex_mask", allow_empty=True)
        out["cortical_gm_mm3"] = float(gm[ctx].sum()) * vv
    icv = out["icv_mm3"]
    for key in [k for k in out if k != "icv_mm3"]:
        out[key.replace("_mm3", "_fraction_icv")] = out[key] / icv if icv > 0 else float("nan")
    out["bpf"] = out["brain_mm3"] / icv if icv > 0 else float("nan")
    out["voxel_volume_mm3"] = vv
    return out
