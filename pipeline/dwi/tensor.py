"""Diffusion tensor fitting: FA, MD, AD, RD, principal direction and fit quality.

:func:`fit_tensor` fits one diffusion tensor per voxel of a DWI series and
returns plain arrays in a :class:`TensorMaps`. Four estimators are offered:

``"WLS"`` (default)
    Weighted linear least squares on the log-signal, two passes as in DIPY's
    ``TensorModel(fit_method="WLS")`` (Chung et al. 2006): an ordinary
    least-squares (OLS) first pass, then one WLS pass with weights equal to
    the squared signal predicted by the OLS fit.

    MRtrix3 ``dwi2tensor`` (3.0.3) has no option for exactly this estimator. Each
    of its ``-iter + 1`` solves weights the log-signal by ``w`` (``w²`` in the
    normal equations); ``w`` starts as 1 with ``-ols`` and as the *measured*
    signal without it, and is replaced by the predicted signal after a solve
    only when ``-iter`` is 2 or more. Hence ``-ols -iter 0`` and ``-ols -iter 1``
    are both plain OLS (equal to our OLS: median |dFA| 0), ``-iter 0`` and
    ``-iter 1`` one WLS pass with measured-signal weights, ``-ols -iter 2`` our
    WLS followed by one more predicted-signal pass, and the default
    (``-iter 2``) a measured-signal WLS pass followed by two predicted-signal
    passes (reproduced by a numpy emulation of these rules to 1e-8 in FA on both
    data sets below). Our WLS against the MRtrix3 default, median |dFA| and
    median relative |dMD| in the brain mask: 5.2e-4 and 0.006 % on the tiny
    phantom session (true brain mask), 1.3e-3 and 0.016 % on the real Philips
    32-direction series (``median_otsu`` mask, 200 k voxels); against
    ``-ols -iter 1`` (= OLS) 4.0e-3 / 0.021 % and 9.1e-3 / 0.071 %
    (``tests/test_mrtrix_tensor.py``, ``benchmarks/bench_tensor.py``).
``"OLS"``
    Ordinary linear least squares on the log-signal.
``"NLLS"``
    Non-linear least squares on the signal (DIPY ``nlls_fit_tensor``).
``"RESTORE"``
    Robust NLLS with outlier rejection (DIPY ``restore_fit_tensor``, Chang et
    al. 2005); needs the noise standard deviation ``sigma``.

WLS and OLS use a vectorised implementation in numpy (see :func:`_linear_fit`
for why and for the measured speed-up over DIPY); it reproduces DIPY's
``wls_fit_tensor`` / ``ols_fit_tensor`` to numerical precision. NLLS and
RESTORE call DIPY.

Conventions
-----------
* Diffusivities (``md``, ``ad``, ``rd``, ``evals``) are in mm^2/s when the
  b-values are in s/mm^2.
* ``v1`` is expressed in the frame of the b-vectors of the gradient table
  given: with b-vectors read from a BIDS/FSL ``.bvec`` file it is in the FSL
  voxel frame (use :func:`pipeline.gradients.fsl_to_world` for world
  coordinates). Its sign is arbitrary.
* Eigenvalues below ``min_diffusivity`` (negative ones in particular, which are
  not physical and come from noise) are set to ``min_diffusivity``, as DIPY
  does; voxels where this happened to a negative eigenvalue are counted in
  ``n_negative_eigenvalue_voxels``.
* Voxels outside the mask and voxels where the fit fails (NaN/Inf in the
  data, singular system, non-finite result) are 0 in every output; no output contains NaN or Inf.
  FA is clipped to [0, 1].
* Signal values below ``min_signal`` (default 1e-4, DIPY's) are raised to it
  before taking logarithms.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from pipeline.parallel import single_threaded_blas

if TYPE_CHECKING:  # pragma: no cover
    import nibabel as nib
    from dipy.core.gradients import GradientTable

__all__ = ["METHODS", "TensorMaps", "design_matrix", "fit_tensor", "to_nifti_dict"]

#: Estimators accepted by :func:`fit_tensor`.
METHODS = ("WLS", "OLS", "NLLS", "RESTORE")

#: DIPY's floor for the signal before taking logarithms.
MIN_SIGNAL = 1e-4

#: Voxels per chunk of the vectorised linear fit (a few 8 MB float64 work
#: arrays at 65 volumes; larger chunks were not faster).
CHUNK_VOXELS = 16384


@dataclass(frozen=True, eq=False)
class TensorMaps:
    """Tensor-derived maps of one DWI series (all on the DWI voxel grid).

    Attributes
    ----------
    fa, md, ad, rd : ndarray (X, Y, Z) float32
        Fractional anisotropy in [0, 1]; mean, axial (largest eigenvalue) and
        radial (mean of the two smaller eigenvalues) diffusivity in mm^2/s.
    evals : ndarray (X, Y, Z, 3) float32
        Eigenvalues, largest first, each >= ``min_diffusivity`` in fitted voxels.
    v1 : ndarray (X, Y, Z, 3) float32
        Unit principal eigenvector in the b-vector frame of the gradient table
        (0 outside the fitted voxels).
    rgb : ndarray (X, Y, Z, 3) float32
        Colour FA, ``|v1| * FA`` in [0, 1] (red = first voxel axis).
    s0 : ndarray (X, Y, Z) float32
        Fitted non-diffusion-weighted signal.
    residual : ndarray (X, Y, Z) float32
        Root-mean-square over volumes of ``S - S_hat`` divided by the fitted
        ``S0``, with ``S_hat`` predicted by the reported tensor (eigenvalues
        after clipping) and ``S`` the data after the ``min_signal`` floor. For
        noise-only misfit it is about ``sigma / S0`` (inverse SNR).
    mask : ndarray (X, Y, Z) bool
        Voxels that were fitted successfully.
    n_voxels_fitted : int
        Number of voxels of ``mask``.
    n_negative_eigenvalue_voxels : int
        Fitted voxels with at least one eigenvalue raised to ``min_diffusivity``
        because it was negative (for NLLS/RESTORE: because DIPY clipped it,
        i.e. it was below DIPY's floor of about 1e-6 / max(b), in practice negative).
    n_failed_voxels : int
        Voxels of the input mask whose fit failed (set to 0).
    method : str
    min_diffusivity : float
    """

    fa: np.ndarray
    md: np.ndarray
    ad: np.ndarray
    rd: np.ndarray
    evals: np.ndarray
    v1: np.ndarray
    rgb: np.ndarray
    s0: np.ndarray
    residual: np.ndarray
    mask: np.ndarray
    n_voxels_fitted: int
    n_negative_eigenvalue_voxels: int
    n_failed_voxels: int
    method: str
    min_diffusivity: float


# ----------------------------------------------------------------- helpers
def _signal_floor(chunk: np.ndarray, min_signal: float) -> np.ndarray:
    """Signal raised to ``min_signal``, float32 (exact for int16 and float32 input)."""
    return np.maximum(chunk, np.float32(min_signal), dtype=np.float32)


def _finite_rows(sig: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Replace voxels with any NaN/Inf sample by a constant signal; return the flags."""
    finite = np.all(np.isfinite(sig), axis=1)
    if not np.all(finite):
        sig[~finite] = 1.0
    return sig, finite


def design_matrix(bvals: np.ndarray, bvecs: np.ndarray) -> np.ndarray:
    """DTI design matrix (g, 7), identical to ``dipy.reconst.dti.design_matrix``.

    Columns ``-b (gx², 2gxgy, gy², 2gxgz, 2gygz, gz²)`` and ``-1``: the log-signal
    is ``design @ (Dxx, Dxy, Dyy, Dxz, Dyz, Dzz, -log S0)``. Written here because
    importing ``dipy.reconst.dti`` costs ~0.4 s per process (a fifth of MRtrix3's
    whole ``dwi2tensor`` run on a 96x96x60x65 series); the WLS/OLS path then
    never imports it.
    """
    b = np.asarray(bvals, dtype=float)
    g = np.asarray(bvecs, dtype=float)
    x, y, z = g[:, 0], g[:, 1], g[:, 2]
    cols = [x * x, 2 * x * y, y * y, 2 * x * z, 2 * y * z, z * z]
    return -np.column_stack([*(c * b for c in cols), np.ones_like(b)])


def _eig_sym3(lt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (n, 3), largest first, and unit principal eigenvectors (n, 3).

    Closed form for symmetric 3x3 matrices (trigonometric solution of the
    characteristic polynomial; the principal eigenvector is the largest cross
    product of two rows of ``D - λ1 I``). Vectorised over voxels it takes
    ~0.15 µs per voxel against ~1.7 µs for DIPY's ``decompose_tensor``
    (batched ``np.linalg.eigh`` plus sorting by fancy indexing), measured on
    212 k voxels: 0.03 s vs 0.36 s. Eigenvalues agree with ``eigh`` to
    ~1e-12 mm²/s; where λ1 is degenerate (isotropic tensors) ``v1`` is
    undetermined and may be any unit vector or 0.
    """
    dxx, dxy, dyy, dxz, dyz, dzz = (lt[:, k] for k in range(6))
    q = (dxx + dyy + dzz) / 3.0
    p1 = dxy * dxy + dxz * dxz + dyz * dyz
    axx, ayy, azz = dxx - q, dyy - q, dzz - q
    p = np.sqrt((axx * axx + ayy * ayy + azz * azz + 2.0 * p1) / 6.0)
    safe = np.where(p > 0, p, 1.0)
    det = (
        axx * (ayy * azz - dyz * dyz)
        - dxy * (dxy * azz - dyz * dxz)
        + dxz * (dxy * dyz - ayy * dxz)
    )
    r = np.clip(det / (2.0 * safe**3), -1.0, 1.0)
    phi = np.arccos(r) / 3.0
    l1 = q + 2.0 * p * np.cos(phi)
    l3 = q + 2.0 * p * np.cos(phi + 2.0 * np.pi / 3.0)
    l2 = 3.0 * q - l1 - l3
    evals = np.stack([l1, l2, l3], axis=1)
    # principal eigenvector: null space of D - l1 I from cross products of its rows
    r0 = np.stack([dxx - l1, dxy, dxz], axis=1)
    r1 = np.stack([dxy, dyy - l1, dyz], axis=1)
    r2 = np.stack([dxz, dyz, dzz - l1], axis=1)
    cands = np.stack([np.cross(r0, r1), np.cross(r0, r2), np.cross(r1, r2)], axis=1)
    norms = np.einsum("nki,nki->nk", cands, cands)
    best = np.argmax(norms, axis=1)
    idx = np.arange(len(lt))
    v1 = cands[idx, best]
    nrm = np.sqrt(norms[idx, best])
    v1 = np.divide(v1, nrm[:, None], out=np.zeros_like(v1), where=nrm[:, None] > 0)
    return evals, v1


def weighted_normal_solve(xs: np.ndarray, w2: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Weighted least squares of many voxels with one design: ``(n, p)`` coefficients.

    ``xs`` (g, p) is the (column-scaled) design, ``w2`` (n, g) the squared weights and
    ``y`` (n, g) the data of n voxels. X^T W X of every voxel is built from its
    p(p+1)/2 distinct entries by one (n, g) x (g, p(p+1)/2) product and the normal
    equations are solved batched; a chunk with a singular voxel falls back to a
    per-voxel pseudo-inverse, as DIPY does. Shared by the tensor and kurtosis fits.
    """
    n_par = xs.shape[1]
    iu = np.triu_indices(n_par)
    outer = (xs[:, :, None] * xs[:, None, :])[:, iu[0], iu[1]]  # (g, p(p+1)/2)
    sym = np.zeros((n_par, n_par), dtype=np.intp)
    sym[iu] = np.arange(len(iu[0]))
    sym = np.maximum(sym, sym.T)  # position of (i, j) among the distinct entries
    lhs = np.take(w2 @ outer, sym.ravel(), axis=1).reshape(-1, n_par, n_par)
    rhs = (w2 * y) @ xs
    try:
        return np.linalg.solve(lhs, rhs[:, :, None])[:, :, 0]
    except np.linalg.LinAlgError:
        w = np.sqrt(w2)
        wx = xs[None] * w[:, :, None]
        with np.errstate(all="ignore"):
            return np.einsum("nij,nj->ni", np.linalg.pinv(wx), y * w)


def _linear_fit(
    design: np.ndarray, sig: np.ndarray, weighted: bool
) -> tuple[np.ndarray, np.ndarray]:
    """OLS or two-pass WLS log-linear tensor fit of a chunk of voxels.

    DIPY's ``wls_fit_tensor`` computes a pseudo-inverse (an SVD of the 65 x 7
    weighted design matrix) for every voxel, ~50 µs per voxel, which is most of
    the time of ``TensorModel(fit_method="WLS").fit``. The same estimate from
    the normal equations, built for all voxels of a chunk by one matrix product
    (``w² @ vec(x xᵀ)``) and solved by a batched 7x7 ``np.linalg.solve``, takes
    ~2 µs per voxel. Measured on a 96x96x60x65 phantom (212 k brain voxels,
    2-core machine shared with other jobs, medians): DIPY's WLS fit 5.5 s,
    :func:`fit_tensor` 0.8 s with everything (metrics, residual), i.e. ~7x
    (``benchmarks/bench_tensor.py``). Design columns are scaled to unit norm
    first so that the normal equations stay well conditioned (b ~ 1e3 next to
    the intercept's 1); results equal DIPY's to ~1e-7 in FA (tested < 1e-4).

    Parameters
    ----------
    design : ndarray (g, 7)
        Design matrix (:func:`design_matrix`).
    sig : ndarray (n, g)
        Signal of n voxels, already floored at ``min_signal``.

    Returns
    -------
    beta : ndarray (n, 7)
        Lower-triangular tensor and ``-log(S0)`` (DIPY's parameter order);
        rows of failed voxels are 0.
    ok : ndarray (n,) bool
    """
    scale = np.linalg.norm(design, axis=0)
    xs = design / scale
    log_s = np.log(sig, dtype=np.float64)
    beta = log_s @ np.linalg.pinv(xs).T  # OLS
    if weighted:
        # weights = predicted signal squared, normalised per voxel (does not change
        # the solution) so that exp never overflows; computed in float32, which
        # perturbs the weights by ~1e-7 relative and the estimate far less
        pred = beta.astype(np.float32) @ xs.T.astype(np.float32)
        pred -= pred.max(axis=1, keepdims=True)
        pred *= 2.0
        w2 = np.exp(pred, out=pred).astype(np.float64)
        beta = weighted_normal_solve(xs, w2, log_s)
    beta = beta / scale
    ok = np.all(np.isfinite(beta), axis=1)
    beta[~ok] = 0.0
    return beta, ok


def _metrics_chunk(
    design: np.ndarray,
    sig: np.ndarray,
    lt: np.ndarray,
    log_s0: np.ndarray,
    evals: np.ndarray,
    v1: np.ndarray,
    ok: np.ndarray,
    negative: np.ndarray,
    min_diffusivity: float,
) -> dict[str, np.ndarray]:
    """Clipping, metrics and residual of a chunk of fitted voxels.

    ``evals`` (largest first) and ``v1`` belong to the tensors ``lt``; ``sig`` is
    the floored signal.
    """
    n = len(lt)
    ok = ok & np.all(np.isfinite(evals), axis=1) & np.isfinite(log_s0)
    lt = np.where(ok[:, None], lt, 0.0)
    log_s0 = np.where(ok, log_s0, 0.0)
    low = ok & np.any(evals < min_diffusivity, axis=1)
    if np.any(low):  # recompose the reported (clipped) tensor for the residual
        w, vecs = np.linalg.eigh(lt[low][:, [0, 1, 3, 1, 2, 4, 3, 4, 5]].reshape(-1, 3, 3))
        mat = np.einsum("nij,nj,nkj->nik", vecs, np.maximum(w, min_diffusivity), vecs)
        lt = lt.copy()
        lt[low] = mat[:, [0, 1, 1, 2, 2, 2], [0, 0, 1, 0, 1, 2]]
    evals = np.maximum(evals, min_diffusivity)
    s0 = np.exp(log_s0)
    # residual in float32: it is a quality map, and exp is ~3x cheaper than in float64
    log_pred = lt.astype(np.float32) @ design[:, :6].T.astype(np.float32)
    log_pred += log_s0[:, None].astype(np.float32)
    np.minimum(log_pred, 80.0, out=log_pred)
    err = np.exp(log_pred, out=log_pred)
    err -= sig
    residual = np.sqrt(np.einsum("ng,ng->n", err, err) / sig.shape[1]) / s0
    ok = ok & np.isfinite(residual) & np.isfinite(s0)
    l1, l2, l3 = evals[:, 0], evals[:, 1], evals[:, 2]
    den = l1 * l1 + l2 * l2 + l3 * l3
    num = 0.5 * ((l1 - l2) ** 2 + (l2 - l3) ** 2 + (l3 - l1) ** 2)
    fa = np.sqrt(np.divide(num, den, out=np.zeros(n), where=den > 0))
    out = {
        "fa": np.clip(fa, 0.0, 1.0),
        "md": evals.mean(axis=1),
        "ad": l1.copy(),
        "rd": 0.5 * (l2 + l3),
        "evals": evals,
        "v1": np.asarray(v1, dtype=float).copy(),
        "s0": s0,
        "residual": residual,
    }
    for val in out.values():
        val[~ok] = 0.0
    out["ok"] = ok
    out["negative"] = negative & ok
    return out


def _fit_linear_chunk(args: tuple) -> dict[str, np.ndarray]:
    design, data, weighted, min_diffusivity, min_signal = args
    sig, finite = _finite_rows(_signal_floor(data, min_signal))
    beta, ok = _linear_fit(design, sig, weighted)
    ok &= finite
    lt = beta[:, :6]
    evals, v1 = _eig_sym3(lt)
    negative = np.any(evals < 0, axis=1)
    return _metrics_chunk(design, sig, lt, -beta[:, 6], evals, v1, ok, negative, min_diffusivity)


def _fit_dipy_chunk(args: tuple) -> dict[str, np.ndarray]:
    """NLLS or RESTORE through DIPY for a chunk of voxels."""
    import warnings

    from dipy.reconst import dti

    design, data, method, sigma, min_diffusivity, min_signal = args
    sig, finite = _finite_rows(_signal_floor(data, min_signal).astype(np.float64))
    n = len(sig)
    evals = np.zeros((n, 3))
    evecs = np.zeros((n, 3, 3))
    s0 = np.zeros(n)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        warnings.simplefilter("ignore", UserWarning)  # "resorting to OLS" in a few voxels
        if method == "NLLS":
            (params, model_s0), _ = dti.nlls_fit_tensor(design, sig, return_S0_hat=True)
            evals, evecs, s0 = params[:, :3], params[:, 3:12].reshape(-1, 3, 3), model_s0[:, 0]
        else:
            sig_arr = np.broadcast_to(np.asarray(sigma, dtype=float), (n,))
            values, inverse = np.unique(sig_arr, return_inverse=True)
            for k, value in enumerate(values):
                sel = np.flatnonzero(inverse == k)
                (params, model_s0), _ = dti.restore_fit_tensor(
                    design, sig[sel], sigma=float(value), return_S0_hat=True
                )
                evals[sel] = params[:, :3]
                evecs[sel] = params[:, 3:12].reshape(-1, 3, 3)
                s0[sel] = np.ravel(model_s0)
    # DIPY already raised eigenvalues below 1e-6 / max(b) to that floor: count those
    dipy_floor = 1e-6 / -design.min()
    ok = np.all(np.isfinite(evals), axis=1) & np.all(np.isfinite(evecs), axis=(1, 2))
    ok &= np.isfinite(s0) & (s0 > 0) & finite
    clipped = np.any(evals <= dipy_floor * (1 + 1e-9), axis=1)
    evals = np.where(ok[:, None], evals, 0.0)
    evecs = np.where(ok[:, None, None], evecs, 0.0)
    mat = np.einsum("nij,nj,nkj->nik", evecs, evals, evecs)
    lt = mat[:, [0, 1, 1, 2, 2, 2], [0, 0, 1, 0, 1, 2]]
    log_s0 = np.log(np.where(ok, s0, 1.0))
    return _metrics_chunk(
        design, sig, lt, log_s0, evals, evecs[:, :, 0], ok, clipped, min_diffusivity
    )



def _check_sigma(sigma: float | np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray | float:
    if sigma is None:
        raise ValueError(
            "method='RESTORE' needs the noise standard deviation: pass sigma= as a scalar "
            "or a map of the image's spatial shape (e.g. from "
            "dipy.denoise.noise_estimate.estimate_sigma or the background of the b=0 images)"
        )
    arr = np.asarray(sigma, dtype=float)
    if arr.ndim == 0:
        if not np.isfinite(arr) or arr <= 0:
            raise ValueError(f"sigma must be a positive finite number, got {float(arr)}")
        return float(arr)
    if arr.shape != shape:
        raise ValueError(f"sigma map must have the image's spatial shape {shape}, got {arr.shape}")
    return arr


# ---------------------------------------------------------------- public API
def fit_tensor(
    data: np.ndarray,
    gtab: GradientTable,
    mask: np.ndarray | None = None,
    *,
    method: str = "WLS",
    sigma: float | np.ndarray | None = None,
    min_diffusivity: float | None = None,
    min_signal: float = MIN_SIGNAL,
    n_procs: int = 1,
) -> TensorMaps:
    """Fit a diffusion tensor in every voxel of a DWI series.

    Parameters
    ----------
    data : ndarray (X, Y, Z, N)
        DWI series, any real dtype (int16 and float32 are not copied to float64
        as a whole, only chunk by chunk).
    gtab : dipy.core.gradients.GradientTable
        Gradient table of the N volumes; b-values in s/mm^2, b-vectors in the
        frame in which ``v1`` is wanted (normally the FSL voxel frame of the
        ``.bvec`` file). Only its ``bvals`` (N,) and unit ``bvecs`` (N, 3) are
        read, so any object with those two attributes works.
    mask : ndarray (X, Y, Z) bool, optional
        Voxels to fit; default all voxels.
    method : {"WLS", "OLS", "NLLS", "RESTORE"}
        Estimator (case-insensitive); see the module docstring.
    sigma : float or ndarray (X, Y, Z), optional
        Noise standard deviation, required by RESTORE (ignored otherwise).
    min_diffusivity : float, optional
        Floor for the eigenvalues in mm^2/s. Default DIPY's value ``1e-6`` divided
        by the largest diagonal b-matrix entry ``max(b g_i^2)`` (about 1e-9 at
        b = 1000).
    min_signal : float
        Floor for the signal before the logarithm (DIPY's default 1e-4).
    n_procs : int
        Parallel workers over chunks of the mask: threads for WLS/OLS (numpy's
        linear algebra releases the GIL), processes for NLLS/RESTORE (their
        per-voxel optimiser holds it). ``0`` or negative means all CPUs.

    Returns
    -------
    TensorMaps

    Raises
    ------
    ValueError
        Unknown method, RESTORE without sigma, or shapes that do not match.
    """
    method = method.upper()
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    data = np.asarray(data)
    if data.ndim != 4:
        raise ValueError(f"expected a 4D DWI series (X, Y, Z, N), got shape {data.shape}")
    spatial = data.shape[:3]
    n_vol = data.shape[3]
    if len(gtab.bvals) != n_vol:
        raise ValueError(
            f"gradient table has {len(gtab.bvals)} entries but the series has {n_vol} volumes"
        )
    if method == "RESTORE":
        sigma = _check_sigma(sigma, spatial)
    if mask is None:
        mask = np.ones(spatial, dtype=bool)
    else:
        mask = np.asarray(mask).astype(bool, copy=False)
        if mask.shape != spatial:
            raise ValueError(f"mask shape {mask.shape} does not match the data {spatial}")
    design = design_matrix(gtab.bvals, gtab.bvecs)
    if min_diffusivity is None:
        min_diffusivity = 1e-6 / -design.min()
    if n_procs <= 0:
        n_procs = os.cpu_count() or 1

    idx = np.flatnonzero(mask)
    flat = data.reshape(-1, n_vol)
    in_mask = flat[idx]  # one copy of the masked voxels, original dtype
    if method in ("WLS", "OLS"):
        step = CHUNK_VOXELS
        work: Callable[[tuple], dict[str, np.ndarray]] = _fit_linear_chunk
        jobs = [
            (design, in_mask[i : i + step], method == "WLS", min_diffusivity, min_signal)
            for i in range(0, len(idx), step)
        ]
    else:
        step = max(1, min(2048, -(-len(idx) // max(n_procs, 1))))
        work = _fit_dipy_chunk
        sig_vox = (
            sigma[mask] if isinstance(sigma, np.ndarray) else sigma  # type: ignore[index]
        )
        jobs = [
            (
                design,
                in_mask[i : i + step],
                method,
                sig_vox[i : i + step] if isinstance(sig_vox, np.ndarray) else sig_vox,
                min_diffusivity,
                min_signal,
            )
            for i in range(0, len(idx), step)
        ]
    with single_threaded_blas():
        if n_procs > 1 and len(jobs) > 1:
            pool_cls = ThreadPoolExecutor if method in ("WLS", "OLS") else ProcessPoolExecutor
            with pool_cls(max_workers=n_procs) as pool:
                parts = list(pool.map(work, jobs))
        else:
            parts = [work(job) for job in jobs]

    def gather(key: str, width: int = 0) -> np.ndarray:
        shape = (*spatial, width) if width else spatial
        out = np.zeros((int(np.prod(spatial)), *((width,) if width else ())), dtype=np.float32)
        if parts:
            out[idx] = np.concatenate([p[key] for p in parts])
        return out.reshape(shape)

    ok = np.zeros(int(np.prod(spatial)), dtype=bool)
    negative = np.zeros_like(ok)
    if parts:
        ok[idx] = np.concatenate([p["ok"] for p in parts])
        negative[idx] = np.concatenate([p["negative"] for p in parts])
    fa = gather("fa")
    v1 = gather("v1", 3)
    rgb = np.clip(np.abs(v1) * fa[..., None], 0.0, 1.0).astype(np.float32)
    return TensorMaps(
        fa=fa,
        md=gather("md"),
        ad=gather("ad"),
        rd=gather("rd"),
        evals=gather("evals", 3),
        v1=v1,
        rgb=rgb,
        s0=gather("s0"),
        residual=gather("residual"),
        mask=ok.reshape(spatial),
        n_voxels_fitted=int(ok.sum()),
        n_negative_eigenvalue_voxels=int(negative.sum()),
        n_failed_voxels=int(idx.size - ok.sum()),
        method=method,
        min_diffusivity=float(min_diffusivity),
    )


def to_nifti_dict(maps: TensorMaps, affine: np.ndarray) -> dict[str, nib.Nifti1Image]:
    """NIfTI images of the maps, keyed ``fa``, ``md``, ``ad``, ``rd``, ``evals``,
    ``v1``, ``rgb``, ``s0``, ``residual`` (float32) and ``mask`` (uint8)."""
    import nibabel as nib

    out: dict[str, nib.Nifti1Image] = {}
    for name in ("fa", "md", "ad", "rd", "evals", "v1", "rgb", "s0", "residual", "mask"):
        arr = getattr(maps, name)
        arr = arr.astype(np.uint8) if name == "mask" else arr.astype(np.float32, copy=False)
        img = nib.Nifti1Image(arr, np.asarray(affine, dtype=float))
        img.header.set_xyzt_units("mm", "sec")
        img.header.set_qform(affine, code=1)
        img.header.set_sform(affine, code=1)
        out[name] = img
    return out
