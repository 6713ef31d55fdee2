"""DWI head-motion and eddy-current correction, b-vector rotation and outlier detection.

Method
------
Every volume is registered by least squares (:func:`pipeline.realign.realign_rigid`,
Gauss-Newton on 4 mm smoothed native grids) to a target *of the same contrast*, never
across contrasts with a coarse grid:

1. b = 0 volumes to the first b = 0; their aligned mean is the reference frame.
2. Each shell's volumes to the shell's mean (a first estimate), and the corrected shell
   mean to the b = 0 reference by mutual information (the one cross-contrast step:
   :func:`pipeline.registration.register_rigid`, native grid).
3. ``n_iter`` rounds (3): the series is resampled (trilinear) with the current estimates,
   a log-linear tensor is fitted per shell (gradients rotated), and every diffusion-weighted volume
   is registered to the *leave-one-out prediction of itself* from the other volumes
   (exact from one OLS fit by the hat-matrix identity, :func:`tensor_loo_predictions`):
   the idea of FSL eddy's Gaussian-process prediction and of QSIPrep's SHORELine /
   eddymotion, with the tensor as the model. Shells with fewer than six independent
   directions use their corrected mean as the target.
4. Eddy currents (``eddy=True``): per diffusion-weighted volume, a linear displacement
   field along the phase-encoding voxel axis (a scaling along that axis and two shears;
   its constant term is a translation, kept in the rigid part) is estimated together
   with the rigid motion; resampling applies its Jacobian (intensity modulation).
5. Each volume is resampled once onto the reference grid (cubic by default); the
   b-vectors are rotated by the rigid part only.
6. Per-volume flags: slice signal dropout (below) and, if ``fd_threshold_mm`` is set,
   framewise displacement.

Measured on a real Philips 32-direction series of a subject who moved 3-5 mm
(philips-dti32, tests/test_dwi_real_motion.py): MRtrix3 ``mrregister`` of every corrected
volume to the corrected mean finds a median residual of 0.26 mm (worst 0.56 mm; before
correction 1.81 / 3.59 mm); the former mutual-information registration on a 6 mm working
grid left 1.48 mm and flagged 15 of 33 volumes.

Conventions
-----------
The estimated ``affines[k]`` is the pull-back ``A_k``: reference world mm ->
volume-k world mm (RAS+), so ``corrected_k(x) = volume_k(A_k x)``. If the head
moved by the rigid pose ``M_k`` (:mod:`pipeline.motion`: volume k shows the
head at rest moved by ``M_k``), ``volume_k(y) = head(M_k^-1 y)`` and a perfect
registration gives ``A_k = M_k``; so ``params = rigid_params(A_k)`` are the
head poses in the convention of :mod:`pipeline.motion`.

b-vector rotation: volume k was acquired with the scanner-frame gradient
``g``; in the moved head, tissue with diffusion tensor ``D`` at rest has
``R D R^T`` (``R = A_k[:3, :3]``), so the signal is
``exp(-b g^T R D R^T g) = exp(-b (R^T g)^T D (R^T g))``: in the corrected
(rest-position) volume the effective gradient is ``R^T g``. The corrected
gradients are therefore ``gradients.rotated(R_k^T)`` -- the *inverse* of the
head rotation.

Dropout detection (after FSL eddy's slice outlier detection, Andersson et al. 2016):
in each volume's acquisition frame, the mean signal of every acquired slice (along
``slice_axis``) inside the brain mask carried into that frame is divided by the mean of
the volume's leave-one-out prediction carried there; the log ratio is standardised over
the volumes of the same shell by its robust spread (1.4826 x MAD, floored at 2 %). A
slice is a dropout when its z-score is below ``-dropout_threshold`` and it lost more than
``dropout_min_loss`` of its expected signal. Slices with fewer than ``min_slice_voxels``
brain voxels or 10 % of the largest slice's, voxels whose prediction needs data from
outside the field of view, and slices left with fewer than half of the shell's volumes
are skipped. Comparing in the acquisition frame is what keeps a
volume that merely moved through-plane from being called a dropout. Without a prediction
(:func:`detect_dropout` called directly), a slice is compared with the median of that
slice over the volumes of its shell.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np

from pipeline.dwi.gradtable import DwiGradients
from pipeline.errors import InputError
from pipeline.motion import framewise_displacement, rigid_params

__all__ = [
    "MotionCorrection",
    "correct_motion",
    "detect_dropout",
    "exclusion_reasons",
    "exclusion_summary",
    "flagged_volumes",
    "tensor_loo_predictions",
]


@dataclass(frozen=True, eq=False)
class MotionCorrection:
    """Result of :func:`correct_motion`.

    Attributes
    ----------
    data : ndarray float32 (X, Y, Z, N)
        Motion-corrected volumes on the input grid.
    affines : ndarray (N, 4, 4)
        Pull-back per volume: reference world mm -> volume world mm.
    params : ndarray (N, 6)
        ``rigid_params(affines)``: tx, ty, tz (mm), rx, ry, rz (rad).
    framewise_displacement : ndarray (N,)
        Power FD (mm, head radius 50 mm) of ``params``.
    gradients : DwiGradients
        Gradients rotated into the corrected frame.
    reference : ndarray float32 (X, Y, Z)
        The mean aligned b = 0 image the volumes were registered to.
    motion_outliers : ndarray bool (N,)
        ``framewise_displacement > fd_threshold_mm``.
    dropout_outliers : ndarray bool (N,)
        Volumes with at least one dropout slice.
    dropout_slices : tuple of tuple of int
        The dropout slice indices per volume.
    dropout_scores : ndarray (N, n_slices)
        Robust z-score of every slice mean (NaN where not computed).
    eddy : ndarray (N, 3) or None
        Linear eddy-current field per volume: derivative of the displacement along the
        phase-encoding axis (mm) with respect to the position along voxel axes i, j, k
        (mm); the entry of the phase-encoding axis itself is the image scaling
        (0.01 = stretched by 1 %). Zero for b = 0 volumes; None when not estimated.
    eddy_axis : int or None
        Phase-encoding voxel axis of the eddy model.
    iterations, residual : ndarray (N,)
        Gauss-Newton iterations and relative RMS residual of the last registration.
    """

    data: np.ndarray = field(repr=False)
    affines: np.ndarray
    params: np.ndarray
    framewise_displacement: np.ndarray
    gradients: DwiGradients
    reference: np.ndarray = field(repr=False)
    motion_outliers: np.ndarray
    dropout_outliers: np.ndarray
    dropout_slices: tuple[tuple[int, ...], ...]
    dropout_scores: np.ndarray = field(repr=False)
    eddy: np.ndarray | None = None
    eddy_axis: int | None = None
    iterations: np.ndarray | None = None
    residual: np.ndarray | None = None

    @property
    def outliers(self) -> np.ndarray:
        """Volumes flagged for high motion or dropout."""
        return self.motion_outliers | self.dropout_outliers

    def confounds(self):
        """Per-volume confounds as a pandas DataFrame (one row per volume).

        Columns: ``trans_x``, ``trans_y``, ``trans_z`` (mm), ``rot_x``,
        ``rot_y``, ``rot_z`` (rad), ``framewise_displacement`` (mm),
        ``motion_outlier``, ``dropout_outlier`` (0/1) and ``dropout_slices``
        (space-separated slice indices, empty if none).
        """
        import pandas as pd

        p = self.params
        eddy = {}
        if self.eddy_axis is not None:
            for a, name in enumerate("ijk"):
                col = "eddy_scale" if a == self.eddy_axis else f"eddy_shear_{name}"
                eddy[col] = self.eddy[:, a]
        return pd.DataFrame(
            {
                "trans_x": p[:, 0],
                "trans_y": p[:, 1],
                "trans_z": p[:, 2],
                "rot_x": p[:, 3],
                "rot_y": p[:, 4],
                "rot_z": p[:, 5],
                "framewise_displacement": self.framewise_displacement,
                "motion_outlier": self.motion_outliers.astype(int),
                "dropout_outlier": self.dropout_outliers.astype(int),
                "dropout_slices": [" ".join(map(str, s)) for s in self.dropout_slices],
                **eddy,
            }
        )


def exclusion_reasons(mc: MotionCorrection, fd_threshold_mm: float | None = None) -> list[str]:
    """Why each volume is left out of the model fits ("" = kept): slice signal dropout
    (with the slices) and, when ``fd_threshold_mm`` is given, framewise displacement."""
    out = []
    for k in range(len(mc.framewise_displacement)):
        why = []
        if mc.dropout_outliers[k]:
            why.append("signal dropout in slice(s) " + " ".join(map(str, mc.dropout_slices[k])))
        if mc.motion_outliers[k]:
            fd = mc.framewise_displacement[k]
            why.append(f"motion: framewise displacement {fd:.2f} mm"
                       + (f" > {fd_threshold_mm:g} mm" if fd_threshold_mm else ""))
        out.append("; ".join(why))
    return out


def exclusion_summary(reasons: list[str], dw_mask: np.ndarray, *, warn_fraction: float,
                      max_fraction: float) -> dict:
    """Session-level summary of the excluded diffusion-weighted volumes.

    Returns ``{"excluded": [volumes], "n_excluded_dw", "n_dw", "excluded_fraction",
    "warning": str or None (fraction > warn_fraction), "flagged": bool (fraction >
    max_fraction), "reason": str}``.
    """
    dw = np.asarray(dw_mask, bool)
    excluded = [k for k, r in enumerate(reasons) if r]
    n_dw = int(dw.sum())
    n_ex = int(sum(1 for k in excluded if dw[k]))
    frac = n_ex / max(n_dw, 1)
    text = (f"{n_ex} of {n_dw} diffusion-weighted volumes ({100 * frac:.0f} %) excluded "
            f"(volumes {', '.join(map(str, excluded))})")
    return {
        "excluded": excluded, "n_excluded_dw": n_ex, "n_dw": n_dw, "excluded_fraction": frac,
        "warning": text if frac > warn_fraction else None,
        "flagged": bool(frac > max_fraction),
        "reason": (f"{text}: more than dwi.max_excluded_fraction = {max_fraction:g}"
                   if frac > max_fraction else ""),
    }


def flagged_volumes(confounds) -> np.ndarray:
    """Volumes flagged as motion or dropout outliers in a :meth:`MotionCorrection.confounds`
    table (a DataFrame read back from the confounds TSV); none when it has no flag columns
    (motion correction off)."""
    flags = [c for c in ("motion_outlier", "dropout_outlier") if c in confounds]
    if not flags:
        return np.zeros(len(confounds), bool)
    return confounds[flags].to_numpy().astype(bool).any(axis=1)


# --------------------------------------------------------------------------- dropout


def detect_dropout(
    data: np.ndarray,
    gradients: DwiGradients,
    mask: np.ndarray,
    *,
    expected: np.ndarray | None = None,
    slice_axis: int = 2,
    threshold: float = 4.0,
    min_loss: float = 0.1,
    min_slice_voxels: int = 20,
) -> tuple[np.ndarray, tuple[tuple[int, ...], ...], np.ndarray]:
    """Slice signal-dropout detection (see the module docstring).

    Parameters
    ----------
    data : ndarray (X, Y, Z, N)
    mask : ndarray bool, (X, Y, Z) or (X, Y, Z, N)
        Brain voxels (per volume when 4-D, e.g. the brain mask carried into each
        volume's acquisition frame).
    expected : ndarray (X, Y, Z, N), optional
        Expected signal of every volume (e.g. a prediction from the other volumes in the
        volume's own frame): a slice is compared with its expectation; without it, with
        the median of that slice over the volumes of the same shell.

    Returns
    -------
    flags : ndarray bool (N,)
    slices : tuple of tuple of int
        Dropout slices per volume.
    scores : ndarray (N, n_slices)
        Robust z-scores (NaN for b = 0 volumes, small slices and shells of
        fewer than 4 volumes).
    """
    arr = np.asarray(data)
    m = np.asarray(mask, dtype=bool)
    n_vol = arr.shape[3]
    moved = np.moveaxis(arr, slice_axis, 0)  # (S, a, b, N)
    mk = np.moveaxis(m, slice_axis, 0)
    n_slices = moved.shape[0]
    m3 = mk if m.ndim == 3 else mk.any(axis=-1)
    counts = m3.reshape(n_slices, -1).sum(axis=1)
    big = counts >= max(min_slice_voxels, 0.1 * counts.max())  # skip the brain's edge slices
    means = np.full((n_vol, n_slices), np.nan)
    exp = np.ones((n_vol, n_slices))
    ex = None if expected is None else np.moveaxis(np.asarray(expected), slice_axis, 0)
    for s in np.flatnonzero(big):
        for k in range(n_vol) if m.ndim == 4 else [None]:
            sel = mk[s] if k is None else mk[s][..., k]
            if sel.sum() < min_slice_voxels:
                continue
            if k is None:
                means[:, s] = moved[s][sel].mean(axis=0, dtype=np.float64)
                if ex is not None:
                    exp[:, s] = ex[s][sel].mean(axis=0, dtype=np.float64)
            else:
                means[k, s] = moved[s][..., k][sel].mean(dtype=np.float64)
                if ex is not None:
                    exp[k, s] = ex[s][..., k][sel].mean(dtype=np.float64)
    means = means / np.maximum(exp, 1e-6)
    scores = np.full((n_vol, n_slices), np.nan)
    loss = np.zeros((n_vol, n_slices))
    for b, idx in gradients.shells:
        if b == 0.0 or idx.size < 4:
            continue
        sub = means[idx].copy()
        # a slice scored in fewer than half of the shell's volumes (edge slices that move in
        # and out of the field of view) has no reliable spread: not scored
        sub[:, np.isfinite(sub).sum(axis=0) < max(4, idx.size / 2)] = np.nan
        if np.all(np.isnan(sub)):
            continue
        with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN (skipped) slices
            centre = np.nanmedian(sub, axis=0)
            logr = np.log(np.maximum(sub, 1e-6) / centre)
            spread = 1.4826 * np.nanmedian(np.abs(logr - np.nanmedian(logr, axis=0)), axis=0)
            spread = np.maximum(spread, 0.02)
            scores[idx] = logr / spread
            loss[idx] = 1.0 - sub / centre
    with np.errstate(invalid="ignore"):
        bad = (scores < -threshold) & (loss > min_loss)
    slices = tuple(tuple(int(s) for s in np.flatnonzero(row)) for row in bad)
    return bad.any(axis=1), slices, scores


# --------------------------------------------------------------------------- registration


def _resample(vol: np.ndarray, vox_map: np.ndarray, order: int) -> np.ndarray:
    from scipy import ndimage

    out = ndimage.affine_transform(
        vol.astype(np.float32), vox_map, order=order, mode="constant", cval=0.0,
        prefilter=order > 1,
    )
    return np.maximum(out, 0.0) if order > 1 else out


def _apply(arr: np.ndarray, fit, affine: np.ndarray, volumes, order: int) -> np.ndarray:
    """Resample ``volumes`` of ``arr`` into the reference frame (motion + eddy, with the
    eddy map's Jacobian intensity modulation); returns (X, Y, Z, len(volumes))."""
    vols = list(volumes)
    out = np.empty((*arr.shape[:3], len(vols)), dtype=np.float32)
    for i, k in enumerate(vols):
        out[..., i] = _resample(arr[..., k], fit.voxel_map(k, affine), order) * fit.jacobian(k)
    return out


def tensor_loo_predictions(signal: np.ndarray, bvals: np.ndarray, dirs: np.ndarray,
                           predict) -> np.ndarray:
    """Leave-one-out predictions of DWI signals from a log-linear tensor fit.

    ``signal`` is (V, N) (voxels x volumes, b = 0 included), ``dirs`` the unit gradient
    directions (N, 3). For every volume ``k`` in ``predict`` the tensor is fitted by
    ordinary least squares to ``log S`` of the *other* volumes and evaluated at volume
    ``k``. OLS is linear, so the leave-one-out prediction is exact from one fit through
    the hat matrix ``H``: ``(yhat_k - H_kk y_k) / (1 - H_kk)`` (the PRESS identity);
    this replaces N refits (the eddymotion / SHORELine idea of registering each volume
    to a prediction of itself from the others, with the tensor as the model).

    Returns (V, len(predict)) predicted signals.
    """
    from pipeline.dwi.tensor import design_matrix

    x = design_matrix(bvals, dirs)
    hat = x @ np.linalg.pinv(x)
    y = np.log(np.maximum(np.asarray(signal, float), 1.0))
    yhat = y @ hat.T
    idx = np.asarray(predict, int)
    h = np.clip(np.diag(hat)[idx], 0.0, 0.95)
    loo = (yhat[:, idx] - h * y[:, idx]) / (1.0 - h)
    return np.exp(loo)


def _as_img(vol: np.ndarray, affine: np.ndarray):
    import nibabel as nib

    return nib.Nifti1Image(np.asarray(vol, dtype=np.float32), affine)


def correct_motion(
    data: np.ndarray,
    affine: np.ndarray,
    gradients: DwiGradients,
    mask: np.ndarray | None = None,
    *,
    fd_threshold_mm: float | None = None,
    dropout_threshold: float = 4.0,
    dropout_min_loss: float = 0.1,
    slice_axis: int = 2,
    eddy: bool = True,
    pe_axis: int = 1,
    fwhm_mm: float = 4.0,
    n_iter: int = 3,
    order: int = 3,
) -> MotionCorrection:
    """Head-motion and eddy-current correction of a DWI series (module docstring).

    Parameters
    ----------
    data : ndarray (X, Y, Z, N)
    affine : ndarray (4, 4)
        Voxel-to-world matrix of ``data``.
    gradients : DwiGradients
        Gradients of ``data`` (as acquired).
    mask : ndarray bool (X, Y, Z), optional
        Brain mask in the reference frame (default: DIPY ``median_otsu`` of the b = 0
        image); the registration cost is evaluated on it dilated by two voxels, and
        dropout detection uses it.
    fd_threshold_mm : float or None
        Volumes whose framewise displacement exceeds this are flagged as motion outliers.
        None (default): none is; motion between two diffusion volumes, seconds apart, is
        what the correction undoes, and motion *during* a volume shows as slice signal
        loss, which the dropout check finds. On the real Philips series (a subject who
        moved 3-5 mm twice) every volume, FD up to 4.3 mm, registered to within 0.6 mm
        of the corrected mean and only two showed a slice dropout.
    dropout_threshold, dropout_min_loss : float
        Robust z-score and minimum relative signal loss of a dropout slice.
    slice_axis : int
        Acquisition slice axis of the voxel array.
    eddy : bool
        Estimate a linear eddy-current field along ``pe_axis`` for every
        diffusion-weighted volume (scaling along the phase-encoding axis, two shears,
        translation in the rigid part); b-vectors are rotated by the rigid part only.
    pe_axis : int
        Phase-encoding voxel axis (BIDS ``PhaseEncodingDirection`` i / j / k -> 0 / 1 / 2).
    fwhm_mm : float
        Smoothing of the least-squares realignment (:func:`pipeline.realign.realign_rigid`).
    n_iter : int
        Rounds of registration to leave-one-out tensor predictions.
    order : int
        Spline order of the final resampling (1 trilinear, 3 cubic; cubic
        output is clipped at 0).

    Returns
    -------
    MotionCorrection
    """
    from scipy import ndimage

    from pipeline.realign import Realignment, realign_rigid
    from pipeline.registration import register_rigid

    arr = np.asarray(data)
    if arr.ndim != 4:
        raise InputError(None, f"DWI data: expected a 4-D array, got shape {arr.shape}")
    n_vol = arr.shape[3]
    if n_vol != gradients.n_volumes:
        raise InputError(
            None, f"DWI data: expected {gradients.n_volumes} volumes, got {n_vol}"
        )
    if not np.all(np.isfinite(arr)):
        raise InputError(None, "DWI data: expected finite values, got NaN or Inf")
    affine = np.asarray(affine, dtype=float)
    if affine.shape != (4, 4):
        raise ValueError(f"affine must be 4x4, got {affine.shape}")
    if order not in (1, 3):
        raise ValueError(f"order must be 1 (trilinear) or 3 (cubic), got {order!r}")
    if (fd_threshold_mm is not None and fd_threshold_mm <= 0) or dropout_threshold <= 0:
        raise ValueError("fd_threshold_mm and dropout_threshold must be positive")
    if pe_axis not in (0, 1, 2):
        raise ValueError(f"pe_axis must be 0, 1 or 2, got {pe_axis!r}")

    b0_idx = np.flatnonzero(gradients.b0_mask)
    if b0_idx.size == 0:
        raise InputError(None, "DWI data: motion correction needs a b = 0 volume, got none")
    if not gradients.dw_mask.any():
        raise InputError(None, "DWI data: motion correction needs diffusion-weighted volumes, "
                         f"got only {n_vol} b = 0 volume(s)")
    first_vol = arr[..., 0]
    if all(np.array_equal(arr[..., k], first_vol) for k in range(1, n_vol)):
        raise InputError(None, f"DWI data: all {n_vol} volumes are identical (no diffusion "
                         "weighting in the signal): not a diffusion series")
    if mask is None:
        from pipeline.dwi.preprocess import dwi_brain_mask

        mask = dwi_brain_mask(arr, gradients)
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != arr.shape[:3] or not mask.any():
        raise InputError(None, f"brain mask: expected a non-empty mask of shape {arr.shape[:3]}")
    cost_mask = ndimage.binary_dilation(mask, iterations=2)
    opts = {"mask": cost_mask, "fwhm_mm": fwhm_mm}
    affines = np.tile(np.eye(4), (n_vol, 1, 1))
    eddy_params = np.zeros((n_vol, 3))

    def fit_of(aff, edd, axis):
        return Realignment(affines=aff, params=rigid_params(aff), iterations=np.zeros(n_vol, int),
                           residual=np.zeros(n_vol), eddy=edd, eddy_axis=axis,
                           eddy_centre=np.argwhere(cost_mask).mean(axis=0))

    # 1. b = 0 reference: every b = 0 volume to the first (same contrast), then averaged
    first = np.asarray(arr[..., b0_idx[0]], dtype=np.float32)
    if b0_idx.size > 1:
        r = realign_rigid(arr, affine, reference=first, volumes=b0_idx, **opts)
        affines[b0_idx] = r.affines[b0_idx]
    reference = _apply(arr, fit_of(affines, eddy_params, None), affine, b0_idx, order).mean(-1)
    iterations = np.zeros(n_vol, int)
    residual = np.full(n_vol, np.nan)

    # 2. each shell to its own mean (same contrast), the corrected mean to the b = 0
    #    reference (mutual information: different contrasts), composed
    shells = [(b, idx) for b, idx in gradients.shells if b > 0]
    for _, idx in shells:
        shell_mean = arr[..., idx].mean(axis=-1, dtype=np.float64).astype(np.float32)
        r = realign_rigid(arr, affine, reference=shell_mean, volumes=idx, **opts)
        mean_c = _apply(arr, fit_of(r.affines, eddy_params, None), affine, idx, order).mean(-1)
        to_b0 = register_rigid(_as_img(reference, affine), _as_img(mean_c, affine),
                               static_mask=_as_img(cost_mask, affine), init="header",
                               resolution_mm=None, level_iters=(100, 50))
        affines[idx] = r.affines[idx] @ to_b0.affine

    # 3. every diffusion-weighted volume to its leave-one-out tensor prediction, in the
    #    b = 0 frame, with the eddy-current field; repeated n_iter times
    dw = gradients.dw_mask
    dw_idx = np.flatnonzero(dw)
    eddy_axis = pe_axis if eddy else None
    for _ in range(max(int(n_iter), 0)):
        fit = fit_of(affines, eddy_params, eddy_axis)
        # trilinear here: the targets are smoothed by fwhm_mm anyway (cubic, with its
        # spline prefilter, doubled the time of a round)
        targets = _predicted_volumes(_apply(arr, fit, affine, range(n_vol), 1), gradients,
                                     affines, mask)
        r = realign_rigid(arr, affine, reference=targets.__getitem__, volumes=dw_idx,
                          start=affines, eddy_axis=eddy_axis, eddy_volumes=dw,
                          eddy_start=eddy_params, **opts)
        affines[dw_idx] = r.affines[dw_idx]
        if eddy:
            eddy_params[dw_idx] = r.eddy[dw_idx]
        iterations[dw_idx], residual[dw_idx] = r.iterations[dw_idx], r.residual[dw_idx]
        del targets

    fit = fit_of(affines, eddy_params, eddy_axis)
    out = _apply(arr, fit, affine, range(n_vol), order)

    # 4. parameters, rotated gradients (rigid part only)
    params = rigid_params(affines)
    fd = framewise_displacement(params)
    rotated = gradients.rotated(np.swapaxes(affines[:, :3, :3], -1, -2))

    # 5. dropout, in each volume's acquisition frame: every acquired slice against the
    #    leave-one-out prediction carried into that frame (FSL eddy's slice outlier
    #    detection; in the reference frame a volume moved through-plane or out of the
    #    field of view would lose signal in a slice without any dropout)
    targets = _predicted_volumes(out, gradients, affines, mask)
    expected = np.zeros(arr.shape, dtype=np.float32)
    native_mask = np.zeros(arr.shape, dtype=bool)
    # the prediction is trusted only where its cubic interpolation support lies inside the
    # field of view (at the edge slices of a volume moved through-plane it is not: on the
    # real Philips series the bottom slice's prediction was 3.9 x too dark)
    fov = np.zeros(arr.shape[:3], dtype=np.float32)
    fov[2:-2, 2:-2, 2:-2] = 1.0
    for k in range(n_vol):
        back = np.linalg.inv(fit.voxel_map(k, affine))
        native_mask[..., k] = (_resample(mask.astype(np.float32), back, 1) > 0.5) & (
            _resample(fov, back, 1) > 0.999
        )
        if k in targets:
            expected[..., k] = _resample(targets[k], back, 1) / fit.jacobian(k)
    flags, slices, scores = detect_dropout(
        arr, gradients, native_mask, expected=expected, slice_axis=slice_axis,
        threshold=dropout_threshold, min_loss=dropout_min_loss,
    )
    del expected, native_mask
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    return MotionCorrection(
        data=out,
        affines=affines,
        params=params,
        framewise_displacement=fd,
        gradients=rotated,
        reference=reference,
        motion_outliers=(fd > fd_threshold_mm) if fd_threshold_mm else np.zeros(n_vol, bool),
        dropout_outliers=flags,
        dropout_slices=slices,
        dropout_scores=scores,
        eddy=eddy_params * (zooms[pe_axis] / zooms) if eddy else None,
        eddy_axis=eddy_axis,
        iterations=iterations,
        residual=residual,
    )


def _predicted_volumes(corrected: np.ndarray, gradients: DwiGradients, affines: np.ndarray,
                       mask: np.ndarray) -> dict[int, np.ndarray]:
    """Per diffusion-weighted volume, its expected image in the reference frame.

    Inside ``mask``: the leave-one-out tensor prediction of the shell (with the b = 0
    volumes, gradients rotated by the current motion); elsewhere, and for shells with
    fewer than six independent directions: the corrected shell mean.
    """
    from pipeline.dwi.tensor import design_matrix

    rotated = gradients.rotated(np.swapaxes(affines[:, :3, :3], -1, -2))
    b0_idx = np.flatnonzero(gradients.b0_mask)
    inside = np.flatnonzero(mask.ravel())
    out = {}
    for b, idx in gradients.shells:
        if b == 0:
            continue
        mean_c = corrected[..., idx].mean(axis=-1)
        quadratic = design_matrix(np.ones(idx.size), rotated.world_directions[idx])[:, :6]
        if np.linalg.matrix_rank(quadratic) < 6:
            pred = np.repeat(mean_c.ravel()[inside, None], idx.size, axis=1)
        else:
            use = np.concatenate([b0_idx, idx])
            sig = corrected[..., use].reshape(-1, use.size)[inside]
            pred = tensor_loo_predictions(sig, rotated.bvals[use], rotated.world_directions[use],
                                          np.arange(b0_idx.size, use.size))
            # a prediction never exceeds the b = 0 signal (noise, CSF partial volume)
            pred = np.minimum(pred, sig[:, : b0_idx.size].mean(axis=1, keepdims=True))
        for j, k in enumerate(idx):
            t = mean_c.copy()
            t.ravel()[inside] = pred[:, j]
            out[int(k)] = t
    return out
