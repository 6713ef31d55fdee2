"""DWI preprocessing before motion correction: denoising, Gibbs-ringing removal, brain mask.

Order matters: denoising (MP-PCA assumes independent, identically distributed
noise in the *acquired* voxels) and Gibbs removal (works on the acquired
k-space truncation along the in-plane axes) come before any resampling, i.e.
before motion correction.

All functions take and return plain arrays; DIPY does the work.
"""

from __future__ import annotations

import numpy as np

from pipeline.dwi.gradtable import DwiGradients
from pipeline.errors import InputError
from pipeline.parallel import single_threaded_blas

__all__ = ["denoise", "dwi_brain_mask", "head_mask", "mean_b0", "remove_gibbs"]

DENOISE_METHODS = ("mppca", "patch2self", "none")

#: Default dilation (voxels) of :func:`head_mask`.
HEAD_MASK_DILATION_VOX = 4


def _check_4d(data: np.ndarray, gradients: DwiGradients | None = None) -> np.ndarray:
    arr = np.asarray(data)
    if arr.ndim != 4:
        raise InputError(None, f"DWI data: expected a 4-D array, got shape {arr.shape}")
    if gradients is not None and arr.shape[3] != gradients.n_volumes:
        raise InputError(
            None,
            f"DWI data: expected {gradients.n_volumes} volumes (one per gradient), "
            f"got {arr.shape[3]}",
        )
    if not np.all(np.isfinite(arr)):
        raise InputError(None, "DWI data: expected finite values, got NaN or Inf")
    return arr


def _check_mask(mask: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray | None:
    if mask is None:
        return None
    m = np.asarray(mask)
    if m.shape != tuple(shape):
        raise InputError(None, f"brain mask: expected shape {tuple(shape)}, got {m.shape}")
    m = m > 0.5 if m.dtype.kind == "f" else m.astype(bool)
    if not m.any():
        raise InputError(None, "brain mask is empty (no voxel set); expected a non-empty mask")
    return m


def mean_b0(data: np.ndarray, gradients: DwiGradients) -> np.ndarray:
    """Mean of the b = 0 volumes, float32 (X, Y, Z)."""
    arr = _check_4d(data, gradients)
    idx = np.flatnonzero(gradients.b0_mask)
    if idx.size == 0:
        raise InputError(None, "DWI data: expected at least one b = 0 volume, got none")
    return np.mean(arr[..., idx], axis=3, dtype=np.float64).astype(np.float32)


def denoise(
    data: np.ndarray,
    gradients: DwiGradients,
    mask: np.ndarray | None = None,
    method: str = "mppca",
    patch_radius: int | None = None,
    *,
    patch2self_model: str = "ols",
) -> tuple[np.ndarray, np.ndarray]:
    """Denoise a DWI series.

    Parameters
    ----------
    data : ndarray (X, Y, Z, N)
        Magnitude DWI data as acquired (not resampled).
    gradients : DwiGradients
    mask : ndarray (X, Y, Z) bool, optional
        Voxels to denoise; voxels outside keep their input values (MP-PCA only;
        Patch2Self always uses every voxel).
    method : "mppca", "patch2self" or "none"
        * ``mppca``: Marchenko-Pastur PCA (Veraart et al. 2016) on cubic
          patches of side ``2 * patch_radius + 1`` (default radius 2, i.e.
          125 voxels, more than the number of volumes of a typical
          single-shell series), with DIPY's eigenvalue classifier and
          overlap weighting, but patches centred every ``patch_radius``
          voxels instead of at every voxel (see :func:`_mppca_strided`). The
          noise map is the overlap-weighted local noise SD estimate.
        * ``patch2self``: self-supervised regression across volumes (Fadnavis
          et al. 2020, ``dipy.denoise.patch2self.patch2self``; default: DIPY's
          voxel-wise version 3; a patch radius > 0 selects version 1). Patch2Self gives no noise estimate, so the noise map is
          the root-mean-square over volumes of the residual ``data -
          denoised``, smoothed by a 3-voxel-SD Gaussian within the mask. It
          contains the regression error on top of the noise, so it slightly
          over-estimates the noise SD.
        * ``none``: the data unchanged (float32) and a NaN noise map.
    patch_radius : int, optional
        Patch radius in voxels; None selects the method's default (2 / 0).
    patch2self_model : str
        Regression model of Patch2Self ("ols", "ridge" or "lasso").

    Returns
    -------
    denoised : ndarray float32 (X, Y, Z, N)
    noise_map : ndarray float32 (X, Y, Z)
        Estimated noise standard deviation (signal units) per voxel; 0 (MP-PCA)
        or the smoothed value (Patch2Self) outside the mask.
    """
    if method not in DENOISE_METHODS:
        raise ValueError(f"denoise method must be one of {DENOISE_METHODS}, got {method!r}")
    if patch_radius is not None and (int(patch_radius) != patch_radius or patch_radius < 0):
        raise ValueError(f"patch_radius must be a non-negative integer, got {patch_radius!r}")
    arr = _check_4d(data, gradients).astype(np.float32)
    m = _check_mask(mask, arr.shape[:3])

    if method == "none":
        return arr, np.full(arr.shape[:3], np.nan, dtype=np.float32)

    if method == "mppca":
        radius = 2 if patch_radius is None else int(patch_radius)
        if radius < 1:
            raise ValueError(f"MP-PCA needs patch_radius >= 1, got {radius}")
        den, sigma = _mppca_strided(arr, m, radius, stride=max(1, radius))
        if m is not None:
            den[~m] = arr[~m]
            sigma[~m] = 0.0
        return den, sigma

    from dipy.denoise.patch2self import patch2self
    from scipy import ndimage

    kwargs = {}
    if patch_radius:  # DIPY >= 1.10 (Patch2Self version 3) is voxel-wise only
        kwargs = {"patch_radius": int(patch_radius), "version": 1}
    den = patch2self(
        arr,
        np.asarray(gradients.bvals),
        model=patch2self_model,
        b0_threshold=gradients.b0_threshold,
        verbose=False,
        **kwargs,
    )
    den = np.asarray(den, dtype=np.float32)
    rms = np.sqrt(np.mean((arr - den) ** 2, axis=3, dtype=np.float64))
    weight = np.ones(rms.shape) if m is None else m.astype(float)
    num = ndimage.gaussian_filter(rms * weight, 3.0)
    den_w = ndimage.gaussian_filter(weight, 3.0)
    noise = np.where(den_w > 1e-3, num / np.maximum(den_w, 1e-3), 0.0)
    return den, noise.astype(np.float32)


def _mp_classify(evals: np.ndarray, n_samples: int) -> tuple[np.ndarray, np.ndarray]:
    """Marchenko-Pastur split of ascending eigenvalues (B, N), vectorised.

    Same criterion as DIPY's ``_pca_classifier``: the number of noise
    components ``c + 1`` is the largest ``c`` with
    ``L[c] - L[0] <= 4 sqrt((c + 1) / M) mean(L[:c + 1])``; the noise variance
    is that mean. Returns (noise variance (B,), number of noise components (B,)).
    """
    n_all = evals.shape[1]
    n = min(n_all, n_samples - 1)
    lam = evals[:, n_all - n :]
    c = np.arange(n)
    means = np.cumsum(lam, axis=1) / (c + 1)
    r = lam - lam[:, :1] - 4.0 * np.sqrt((c + 1.0) / n_samples) * means
    ok = r <= 0  # c = 0 always satisfies it
    cstar = n - 1 - np.argmax(ok[:, ::-1], axis=1)
    var = means[np.arange(len(lam)), cstar]
    return var, cstar + 1 + (n_all - n)


def _mppca_strided(
    arr: np.ndarray, mask: np.ndarray | None, radius: int, stride: int, batch: int = 512
) -> tuple[np.ndarray, np.ndarray]:
    """MP-PCA on overlapping patches centred every ``stride`` voxels.

    Written here because DIPY's ``localpca.mppca`` (1.12) fits one patch per
    voxel in a Python loop: 41 s on the tiny phantom (52x66x54x33), minutes on
    the trial preset, over the whole DWI stage's budget. Patches every
    ``radius`` voxels (each voxel is still covered by 8-27 patches) with the
    eigen-decompositions batched in numpy take ~2-4 s on the tiny phantom.
    Each voxel's estimate is the average of its patches' reconstructions
    weighted by ``1 / (1 + number of signal components)`` (DIPY's weighting).
    """
    from scipy import ndimage

    shape, n_vol = arr.shape[:3], arr.shape[3]
    flat = arr.reshape(-1, n_vol)
    size = 2 * radius + 1
    n_samples = size**3
    axes = []
    for dim in shape:
        if dim < size:
            raise InputError(None, f"DWI data: MP-PCA patch of {size} voxels exceeds shape {shape}")
        c = list(range(radius, dim - radius, stride))
        if c[-1] != dim - radius - 1:
            c.append(dim - radius - 1)
        axes.append(np.asarray(c))
    ci, cj, ck = np.meshgrid(*axes, indexing="ij")
    centres = np.stack([ci.ravel(), cj.ravel(), ck.ravel()], axis=1)
    if mask is not None:
        near = ndimage.binary_dilation(mask, np.ones((size,) * 3, bool))
        centres = centres[near[tuple(centres.T)]]
    strides = np.array([shape[1] * shape[2], shape[2], 1])
    off = np.stack(np.meshgrid(*[np.arange(-radius, radius + 1)] * 3, indexing="ij"), -1)
    offsets = off.reshape(-1, 3) @ strides
    acc = np.zeros((flat.shape[0], n_vol))
    wsum = np.zeros(flat.shape[0])
    sig = np.zeros(flat.shape[0])
    with single_threaded_blas():
        _mppca_batches(flat, centres, strides, offsets, n_samples, batch, acc, wsum, sig)
    covered = wsum > 0
    out = flat.astype(np.float32).copy()
    out[covered] = (acc[covered] / wsum[covered, None]).astype(np.float32)
    sigma = np.zeros(flat.shape[0], dtype=np.float32)
    sigma[covered] = (sig[covered] / wsum[covered]).astype(np.float32)
    return out.reshape(arr.shape), sigma.reshape(shape)


def _mppca_batches(
    flat: np.ndarray,
    centres: np.ndarray,
    strides: np.ndarray,
    offsets: np.ndarray,
    n_samples: int,
    batch: int,
    acc: np.ndarray,
    wsum: np.ndarray,
    sig: np.ndarray,
) -> None:
    """Accumulate weighted patch reconstructions into ``acc``, ``wsum``, ``sig`` (in place)."""
    n_vol = flat.shape[1]
    for start in range(0, len(centres), batch):
        base = centres[start : start + batch] @ strides
        idx = base[:, None] + offsets[None, :]  # (B, P)
        x = flat[idx].astype(np.float64)  # (B, P, N)
        mean = x.mean(axis=1, keepdims=True)
        xc = x - mean
        cov = np.matmul(xc.transpose(0, 2, 1), xc) / n_samples
        evals, evecs = np.linalg.eigh(cov)
        var, n_noise = _mp_classify(evals, n_samples)
        keep = np.arange(n_vol)[None, :] >= n_noise[:, None]
        proj = np.matmul(evecs * keep[:, None, :], evecs.transpose(0, 2, 1))
        xhat = np.matmul(xc, proj) + mean
        theta = 1.0 / (1.0 + n_vol - n_noise)
        sd = np.sqrt(np.maximum(var, 0.0))
        for p in range(n_samples):  # centres of one batch are distinct: no repeated index
            col = idx[:, p]
            acc[col] += theta[:, None] * xhat[:, p]
            wsum[col] += theta
            sig[col] += theta * sd


def remove_gibbs(
    data: np.ndarray, slice_axis: int = 2, n_points: int = 3, num_processes: int = 1
) -> np.ndarray:
    """Gibbs-ringing removal by local sub-voxel shifts (Kellner et al. 2016).

    Thin wrapper of ``dipy.denoise.gibbs.gibbs_removal`` (applied to each
    slice perpendicular to ``slice_axis``, i.e. in the acquired in-plane
    directions). Works on 3-D or 4-D arrays; returns float32.
    """
    from dipy.denoise.gibbs import gibbs_removal

    arr = np.asarray(data)
    if arr.ndim not in (3, 4):
        raise InputError(None, f"DWI data: expected a 3-D or 4-D array, got shape {arr.shape}")
    if slice_axis not in (0, 1, 2):
        raise ValueError(f"slice_axis must be 0, 1 or 2, got {slice_axis!r}")
    if int(n_points) < 1:
        raise ValueError(f"n_points must be >= 1, got {n_points!r}")
    out = gibbs_removal(
        arr.astype(np.float32),
        slice_axis=slice_axis,
        n_points=int(n_points),
        inplace=False,
        num_processes=int(num_processes),
    )
    return np.asarray(out, dtype=np.float32)


def dwi_brain_mask(
    data: np.ndarray,
    gradients: DwiGradients,
    method: str = "median_otsu",
    *,
    median_radius: int = 2,
    numpass: int = 2,
) -> np.ndarray:
    """Brain mask of a DWI series from its mean b = 0 image.

    ``method="median_otsu"``: DIPY's ``median_otsu`` (median filter of radius
    ``median_radius`` applied ``numpass`` times, then Otsu's threshold and the
    largest connected component) on the mean b = 0 image, followed by hole
    filling. A structural brain mask brought into DWI space is the alternative
    (``pipeline.registration.Transform.resample_mask``).

    Returns
    -------
    ndarray bool (X, Y, Z)
    """
    if method != "median_otsu":
        raise ValueError(f"DWI brain mask method must be 'median_otsu', got {method!r}")
    from dipy.segment.mask import median_otsu
    from scipy import ndimage

    b0 = mean_b0(data, gradients)
    _, mask = median_otsu(b0, median_radius=int(median_radius), numpass=int(numpass))
    mask = ndimage.binary_fill_holes(mask)
    if not mask.any():
        raise InputError(None, "DWI brain mask: median_otsu found no brain voxels")
    return mask


def head_mask(
    data: np.ndarray, gradients: DwiGradients, dilation_vox: int = HEAD_MASK_DILATION_VOX
) -> np.ndarray:
    """Where denoising is worth doing: the head in the raw series.

    Otsu's threshold of the Gaussian-smoothed (1 voxel) mean b = 0 image, its largest
    connected component with holes filled, dilated by ``dilation_vox`` voxels (a margin
    for head motion and a conservative edge). Coarser than :func:`dwi_brain_mask` on
    purpose and much faster than its median filtering (0.05-0.4 s vs 3.3 s on a
    trial-preset series); it held all of the phantom's true brain on the series tried.
    MP-PCA outside it only cleans air; on the trial phantom (78 x 98 x 81 voxels of
    2 mm) the mask holds about half the field of view.
    """
    from dipy.segment.threshold import otsu
    from scipy import ndimage

    b0 = ndimage.gaussian_filter(mean_b0(data, gradients).astype(np.float32), 1.0)
    fg = b0 > otsu(b0)
    labels, n = ndimage.label(fg)
    if n == 0:
        raise InputError(None, "DWI head mask: Otsu's threshold found no foreground voxels")
    sizes = np.bincount(labels.ravel())[1:]
    head = ndimage.binary_fill_holes(labels == 1 + int(np.argmax(sizes)))
    if dilation_vox > 0:
        head = ndimage.binary_dilation(head, ndimage.generate_binary_structure(3, 1),
                                       iterations=int(dilation_vox))
    return head
