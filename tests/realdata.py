"""Loaders for the real scans in ../shared/data/real used by the tests and benchmarks.

openms-longitudinal-patient01: patient01 of the longitudinal MS lesion-change database
of Lesjak et al., "Validation of white-matter lesion change detection methods on a novel
publicly available MRI image database", Neuroinformatics 14 (2016) 403-420,
doi:10.1007/s12021-016-9301-1, licence CC-BY (copy of muschellij2/open_ms_data).

The database gives, per study (session), ITK affine transforms: FLAIR -> common space
(``study<k>_FLAIR_to_common_space.txt``) and T1w / T2w -> FLAIR of the same study
(``study<k>_T1W_intrastudy_to_FLAIR.txt``). They follow ITK's convention: the
transform maps points of the fixed image (common space, resp. FLAIR) to points of the
moving image; nitransforms reads them. With that reading the two sessions' FLAIRs
resampled into the common space correlate at r = 0.94 inside the brain mask (0.23-0.29
with the inverse reading).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import nibabel as nib
import numpy as np

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
LONGITUDINAL = REAL / "openms-longitudinal-patient01"
PATIENT19 = REAL / "openms-patient19"
SESSIONS = ("1", "2")
MODALITIES = ("T1w", "FLAIR", "T2w")


def longitudinal_available() -> bool:
    return all(
        (LONGITUDINAL / "bids-sub-01" / f"ses-{s}" / "anat" / f"sub-01_ses-{s}_{m}.nii.gz").exists()
        for s in SESSIONS
        for m in MODALITIES
    ) and (LONGITUDINAL / "sources" / "gt.nii.gz").exists()


def image_path(session: str, modality: str) -> Path:
    return LONGITUDINAL / "bids-sub-01" / f"ses-{session}" / "anat" / f"sub-01_ses-{session}_{modality}.nii.gz"


def _itk(name: str) -> np.ndarray:
    import nitransforms as nt

    return np.asarray(nt.linear.load(str(LONGITUDINAL / "sources" / name), fmt="itk").matrix)


@cache
def common_to_image(session: str, modality: str) -> np.ndarray:
    """4x4 RAS matrix mapping common-space points to points of the session image."""
    to_flair = _itk(f"study{session}_FLAIR_to_common_space.txt")  # common -> FLAIR
    if modality == "FLAIR":
        return to_flair
    code = {"T1w": "T1W", "T2w": "T2W"}[modality]
    return _itk(f"study{session}_{code}_intrastudy_to_FLAIR.txt") @ to_flair  # FLAIR -> image


def image_to_image(session: str, moving: str, fixed: str) -> np.ndarray:
    """RAS matrix mapping points of ``fixed`` to points of ``moving`` (same session)."""
    return common_to_image(session, moving) @ np.linalg.inv(common_to_image(session, fixed))


def to_image_grid(common_img, session: str, modality: str, *, order: int = 0) -> np.ndarray:
    """A common-space image (mask, gt) resampled onto the session image's grid."""
    from scipy import ndimage

    ref = nib.load(image_path(session, modality))
    # voxel of the session image -> its point -> common point -> common voxel
    m = np.linalg.inv(common_img.affine) @ np.linalg.inv(common_to_image(session, modality)) @ ref.affine
    data = np.asarray(common_img.dataobj, dtype=np.float32)
    return ndimage.affine_transform(data, m[:3, :3], m[:3, 3], output_shape=ref.shape[:3], order=order)


def brain_mask(session: str, modality: str) -> np.ndarray:
    """The database's brain mask on the grid of one session image (boolean)."""
    img = nib.load(LONGITUDINAL / "sources" / "brainmask_common-space.nii.gz")
    return to_image_grid(img, session, modality, order=0) > 0.5


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    s = a.sum() + b.sum()
    return float(2 * np.sum(a & b) / s) if s else 1.0


def lesion_metrics(pred, truth, voxel_size, *, min_truth_mm3: float = 10.0) -> dict:
    """Voxel and lesion-wise agreement of a predicted lesion mask with a reference.

    Lesions are 26-connected components. A reference lesion of at least
    ``min_truth_mm3`` is *detected* when a predicted voxel overlaps it; a predicted
    lesion is a *true positive* when it overlaps any reference voxel (the lesion-wise
    definitions of the MICCAI 2016 MS lesion challenge, Commowick et al., Sci Rep 2018).
    """
    from scipy import ndimage

    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    vox = float(np.prod(voxel_size))
    s26 = np.ones((3, 3, 3), bool)
    t_lab, n_t = ndimage.label(truth, structure=s26)
    p_lab, n_p = ndimage.label(pred, structure=s26)
    t_size = np.bincount(t_lab.ravel(), minlength=n_t + 1)[1:] * vox
    big = np.flatnonzero(t_size >= min_truth_mm3) + 1
    hit = np.unique(t_lab[pred & (t_lab > 0)])
    detected = int(np.isin(big, hit).sum())
    tp_pred = np.unique(p_lab[truth & (p_lab > 0)])
    return {
        "dice": dice(pred, truth),
        "n_truth": int(big.size),
        "detected": detected,
        "detection": detected / big.size if big.size else float("nan"),
        "n_pred": int(n_p),
        "false_positives": int(n_p - tp_pred.size),
        "precision": tp_pred.size / n_p if n_p else float("nan"),
        "volume_pred_ml": float(pred.sum() * vox / 1e3),
        "volume_truth_ml": float(truth.sum() * vox / 1e3),
    }
