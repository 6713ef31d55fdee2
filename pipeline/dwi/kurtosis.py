"""Diffusion kurtosis imaging (DKI): MK, AK, RK, KFA and the DKI's own tensor maps.

:func:`fit_kurtosis` fits the DKI cumulant representation

    ln S(b, n) = ln S0 - b D(n) + b² MD² W(n) / 6

(22 unknowns: 6 diffusion tensor, 15 kurtosis tensor elements and ln S0) in
every voxel of a multi-shell DWI series and returns plain arrays in a
:class:`KurtosisMaps`. It reproduces DIPY's
``dipy.reconst.dki.DiffusionKurtosisModel(gtab, fit_method=...)`` estimators:

``"WLS"`` (default)
    Log-linear least squares, two passes as DIPY's ``ls_fit_dki`` with
    ``weights=True`` (Veraart et al. 2013): an ordinary least-squares pass,
    then one weighted pass with weights equal to the squared signal predicted
    by the first.
``"OLS"``
    Ordinary log-linear least squares (``ls_fit_dki`` with ``weights=False``).

The linear algebra of the fit is written here, vectorised over voxels (see
:func:`_linear_fit` for why: DIPY's per-voxel pseudo-inverse is ~40x slower,
measured), and so are MK and RK (:func:`_mk_rk`: DIPY's analytical ones cost ~19
and ~9 µs per voxel, three times the fit). Everything else is DIPY's: the design
matrix (``dki.design_matrix``), the conversion of the 22 coefficients into DIPY's
27 ``dki_params`` (eigenvalues raised to DIPY's ``min_diffusivity``, kurtosis
tensor divided by MD²), and the other metrics. The definitions are DIPY's:

* MK: mean of the apparent kurtosis K(n) = MD² W(n) / D(n)² over all
  directions (Tabesh et al. 2011), here by a Gauss-Legendre x azimuth
  quadrature of the half sphere (:data:`MK_NODES`): within 1e-7 (float32) of
  the exact truth on the noiseless phantom and 7e-7 (p99) of a 64 x 128-node
  rule on noisy fits; DIPY's elliptic-integral MK is off by 2e-4 and 2e-3;
* AK (``dki.axial_kurtosis``, numpy path ``fast=False``, equal to its Cython
  path and ~6x faster, measured): K along the principal eigenvector;
* RK: mean of K over the directions perpendicular to the principal
  eigenvector, by the trapezoid rule on that circle (:data:`RK_NODES`; exact to
  1e-9). DIPY 1.12's numpy RK (``fast=False``) is wrong for cylindrically
  symmetric tensors (errors up to 0.8 on the noiseless phantom), its Cython path
  is right to ~6e-4 (p99 on noisy fits);
* KFA (``dki.kurtosis_fractional_anisotropy``, Glenn et al. 2015).

MK, AK and RK are clipped to ``[min_kurtosis, max_kurtosis]``, DIPY's
defaults of ``DiffusionKurtosisFit.mk/ak/rk``: -3/7 (the kurtosis of water in
spherical pores, Jensen et al. 2005) and 10.

Conventions
-----------
* Diffusivities in mm²/s when the b-values are in s/mm²; kurtosis is
  dimensionless.
* The fit needs at least two distinct non-zero shells (grouped as
  :func:`pipeline.gradients.group_shells` does, 100 s/mm² tolerance), at
  least 15 distinct diffusion-weighted directions, and a gradient table for
  which the 22-column design matrix has full rank; otherwise ``ValueError``.
* Voxels outside the mask and voxels whose fit fails (NaN/Inf in the data,
  singular system, non-finite result, all eigenvalues at the floor) are 0 in
  every output; no output contains NaN or Inf. FA and KFA are in [0, 1].
* Signal values below ``min_signal`` (DIPY's 1e-4) are raised to it before
  taking logarithms.
"""

from __future__ import annotations

import os
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from pipeline.dwi.tensor import weighted_normal_solve
from pipeline.gradients import count_unique_directions, group_shells
from pipeline.parallel import single_threaded_blas

if TYPE_CHECKING:  # pragma: no cover
    import nibabel as nib
    from dipy.core.gradients import GradientTable

__all__ = [
    "MAX_KURTOSIS",
    "METHODS",
    "MIN_DIRECTIONS",
    "MIN_KURTOSIS",
    "KurtosisMaps",
    "check_dki_scheme",
    "fit_kurtosis",
    "to_nifti_dict",
]

#: Estimators accepted by :func:`fit_kurtosis`.
METHODS = ("WLS", "OLS")

#: DIPY's defaults for clipping MK/AK/RK (``DiffusionKurtosisFit.mk`` etc.).
MIN_KURTOSIS = -3.0 / 7.0
MAX_KURTOSIS = 10.0

#: DIPY's floor for the signal before taking logarithms.
MIN_SIGNAL = 1e-4

#: Distinct diffusion-weighted directions needed for the 15 kurtosis elements.
MIN_DIRECTIONS = 15

#: Unknowns of the DKI model (6 diffusion, 15 kurtosis, ln S0).
N_PARAMS = 22

#: Voxels per chunk (a few (chunk, 253) float64 work arrays: ~30 MB at 8192).
CHUNK_VOXELS = 8192

_MAPS = ("mk", "ak", "rk", "kfa", "fa", "md", "ad", "rd", "s0")


@dataclass(frozen=True, eq=False)
class KurtosisMaps:
    """DKI-derived maps of one DWI series (all on the DWI voxel grid).

    Attributes
    ----------
    mk, ak, rk : ndarray (X, Y, Z) float32
        Mean, axial and radial kurtosis (dimensionless), clipped to
        ``[min_kurtosis, max_kurtosis]`` in fitted voxels.
    kfa : ndarray (X, Y, Z) float32
        Kurtosis fractional anisotropy in [0, 1].
    fa, md, ad, rd : ndarray (X, Y, Z) float32
        Maps of the DKI's own diffusion tensor (mm²/s): free of the low bias
        of a DTI fit at high b in tissue with positive kurtosis.
    s0 : ndarray (X, Y, Z) float32
        Fitted non-diffusion-weighted signal.
    mask : ndarray (X, Y, Z) bool
        Voxels fitted successfully.
    n_voxels_fitted : int
    n_failed_voxels : int
        Voxels of the input mask whose fit failed (set to 0).
    method : str
    shells : tuple of float
        Non-zero shell b-values used (s/mm², as grouped by
        :func:`pipeline.gradients.group_shells`).
    n_directions : int
        Distinct diffusion-weighted directions (antipodes counted once).
    min_kurtosis, max_kurtosis : float
    """

    mk: np.ndarray
    ak: np.ndarray
    rk: np.ndarray
    kfa: np.ndarray
    fa: np.ndarray
    md: np.ndarray
    ad: np.ndarray
    rd: np.ndarray
    s0: np.ndarray
    mask: np.ndarray
    n_voxels_fitted: int
    n_failed_voxels: int
    method: str
    shells: tuple[float, ...]
    n_directions: int
    min_kurtosis: float
    max_kurtosis: float


def check_dki_scheme(bvals: np.ndarray, bvecs: np.ndarray) -> tuple[tuple[float, ...], int]:
    """Check that a gradient scheme supports a DKI fit.

    Parameters
    ----------
    bvals : ndarray (N,)
    bvecs : ndarray (N, 3)

    Returns
    -------
    shells : tuple of float
        Non-zero shell b-values.
    n_directions : int
        Distinct diffusion-weighted directions.

    Raises
    ------
    ValueError
        Fewer than two non-zero shells, fewer than :data:`MIN_DIRECTIONS`
        distinct directions, fewer volumes than the 22 unknowns, or a
        rank-deficient design matrix; the message says what is missing.
    """
    from dipy.reconst.dki import design_matrix

    bvals = np.asarray(bvals, dtype=float).ravel()
    bvecs = np.asarray(bvecs, dtype=float)
    shells = tuple(b for b, _ in group_shells(bvals) if b > 0)
    if len(shells) < 2:
        have = "no diffusion-weighted volume" if not shells else f"only b = {shells[0]:g}"
        raise ValueError(
            "DKI needs at least two non-zero b-value shells (e.g. b = 1000 and 2000); "
            f"this series has {have}"
        )
    dw = bvals > 50.0
    n_dirs = count_unique_directions(bvecs[dw])
    if n_dirs < MIN_DIRECTIONS:
        raise ValueError(
            f"DKI needs at least {MIN_DIRECTIONS} distinct diffusion-weighted directions "
            f"(15 kurtosis tensor elements); this series has {n_dirs}"
        )
    if len(bvals) < N_PARAMS:
        raise ValueError(
            f"DKI has {N_PARAMS} unknowns per voxel (6 diffusion, 15 kurtosis, S0); "
            f"this series has only {len(bvals)} volumes"
        )
    scheme = type("Scheme", (), {"bvals": bvals, "bvecs": bvecs})()
    design = design_matrix(scheme)
    scaled = design / np.maximum(np.linalg.norm(design, axis=0), 1e-300)
    rank = int(np.linalg.matrix_rank(scaled))
    if rank < N_PARAMS:
        raise ValueError(
            f"the DKI design matrix of this gradient scheme has rank {rank} < {N_PARAMS}: "
            "the directions and b-values do not determine the diffusion and kurtosis tensors"
        )
    return shells, n_dirs


def _linear_fit(
    design: np.ndarray, sig: np.ndarray, weighted: bool
) -> tuple[np.ndarray, np.ndarray]:
    """OLS or two-pass WLS log-linear DKI fit of a chunk of voxels.

    Same estimate as DIPY's ``ls_fit_dki``, which computes, per voxel, the
    pseudo-inverse (an SVD) of the g x 22 weighted design matrix inside
    ``multi_voxel_fit``: ~300 µs per voxel measured, i.e. over a minute for a
    2 mm brain (about 250 k voxels) where MRtrix3 ``dwi2tensor -dkt`` needs
    ~3 s. Here the weighted normal equations of all voxels of a chunk are
    built by one matrix product (``w² @ vec(x xᵀ)``, 253 distinct entries)
    and solved by a batched 22 x 22 ``np.linalg.solve``. Design columns are
    scaled to unit norm first (b² ~ 1e6 next to the intercept's 1) so the
    normal equations stay well conditioned.

    Parameters
    ----------
    design : ndarray (g, 22)
        DIPY's DKI design matrix.
    sig : ndarray (n, g)
        Signal, already floored at ``min_signal``.

    Returns
    -------
    beta : ndarray (n, 22)
        Coefficients in DIPY's order (rows of failed voxels 0).
    ok : ndarray (n,) bool
    """
    scale = np.linalg.norm(design, axis=0)
    xs = design / scale
    log_s = np.log(sig, dtype=np.float64)
    beta = log_s @ np.linalg.pinv(xs).T  # OLS
    if weighted:
        # weights = squared predicted signal, normalised per voxel so exp cannot overflow
        pred = beta @ xs.T
        pred -= pred.max(axis=1, keepdims=True)
        w2 = np.exp(2.0 * pred)
        beta = weighted_normal_solve(xs, w2, log_s)
    beta = beta / scale
    ok = np.all(np.isfinite(beta), axis=1)
    beta[~ok] = 0.0
    return beta, ok


def _dki_params(beta: np.ndarray, min_diffusivity: float) -> tuple[np.ndarray, np.ndarray]:
    """DIPY's 27 ``dki_params`` from the 22 coefficients (``params_to_dki_params``,
    vectorised): eigenvalues largest first, floored at ``min_diffusivity``;
    eigenvectors as columns, row-major; kurtosis elements divided by MD².
    Also returns S0."""
    lt = beta[:, :6]
    mat = lt[:, [0, 1, 3, 1, 2, 4, 3, 4, 5]].reshape(-1, 3, 3)
    evals, evecs = np.linalg.eigh(mat)
    evals = np.maximum(evals[:, ::-1], min_diffusivity)
    evecs = evecs[:, :, ::-1]
    md2 = evals.mean(axis=1) ** 2
    kt = np.divide(beta[:, 6:21], md2[:, None], out=np.zeros((len(beta), 15)),
                   where=md2[:, None] > 0)
    params = np.concatenate([evals, evecs.reshape(-1, 9), kt], axis=1)
    return params, np.exp(-beta[:, 21])


#: Kurtosis tensor elements in DIPY's order (W1111, W2222, W3333, W1112, W1113, W1222,
#: W2223, W1333, W2333, W1122, W1133, W2233, W1123, W1223, W1233) and their multiplicity
#: in W(n) = sum W_ijkl n_i n_j n_k n_l.
_KT_INDEX = ((0, 0, 0, 0), (1, 1, 1, 1), (2, 2, 2, 2), (0, 0, 0, 1), (0, 0, 0, 2), (0, 1, 1, 1),
             (1, 1, 1, 2), (0, 2, 2, 2), (1, 2, 2, 2), (0, 0, 1, 1), (0, 0, 2, 2), (1, 1, 2, 2),
             (0, 0, 1, 2), (0, 1, 1, 2), (0, 1, 2, 2))
_KT_MULT = np.array([1, 1, 1, 4, 4, 4, 4, 4, 4, 6, 6, 6, 12, 12, 12], dtype=float)

#: Quadrature of the sphere average (MK): Gauss-Legendre nodes in cos(theta) on the
#: half sphere (K(n) = K(-n)) x equally spaced azimuths; of the circle average (RK):
#: equally spaced angles over a half turn. Both converge exponentially for the smooth
#: K(n) of a positive definite tensor: on the noiseless phantom MK is within 1e-9 of
#: the exact truth, RK within 1e-12 (DIPY's elliptic-integral MK: 2e-4 at the 99th
#: percentile, 1.2e-3 at worst).
MK_NODES = (16, 32)
RK_NODES = 32


def _kt_monomials(n: np.ndarray) -> np.ndarray:
    """(..., 3) unit vectors -> (..., 15): W(n) = monomials @ kt."""
    return np.stack([n[..., i] * n[..., j] * n[..., k] * n[..., l]
                     for i, j, k, l in _KT_INDEX], axis=-1) * _KT_MULT


def _half_sphere_rule() -> tuple[np.ndarray, np.ndarray]:
    """Unit directions (g, 3) on the half sphere z > 0 and weights (g,) summing to 1."""
    n_theta, n_phi = MK_NODES
    x, w = np.polynomial.legendre.leggauss(n_theta)
    cos_t, w_t = 0.5 * (x + 1.0), 0.5 * w
    sin_t = np.sqrt(1.0 - cos_t**2)
    phi = 2.0 * np.pi * np.arange(n_phi) / n_phi
    dirs = np.stack([np.outer(sin_t, np.cos(phi)), np.outer(sin_t, np.sin(phi)),
                     np.repeat(cos_t[:, None], n_phi, axis=1)], axis=-1).reshape(-1, 3)
    weights = np.repeat(w_t, n_phi) / n_phi
    return dirs, weights


def _mk_rk(params: np.ndarray, kmin: float, kmax: float) -> tuple[np.ndarray, np.ndarray]:
    """Mean and radial kurtosis of DIPY ``dki_params`` (n, 27) by quadrature.

    Written here because DIPY's analytical MK and RK (Tabesh et al. 2011, Carlson's
    elliptic integrals) cost ~19 and ~9 us per voxel, three quarters of the whole DKI
    fit (measured); the vectorised quadrature costs ~1 us and is exact to 1e-9 (see
    :data:`MK_NODES`). Same definitions: MK the average of K(n) = MD^2 W(n) / D(n)^2
    over all directions, RK its average over the directions perpendicular to the
    principal eigenvector, each clipped to [kmin, kmax] afterwards (not per direction).
    """
    evals, evecs, kt = params[:, :3], params[:, 3:12].reshape(-1, 3, 3), params[:, 12:]
    md2 = evals.mean(axis=1) ** 2
    # MK: the diffusion tensor in the gradient frame, D(n) = n^T D n on a fixed rule
    dirs, weights = _half_sphere_rule()
    tensor = np.einsum("vik,vk,vjk->vij", evecs, evals, evecs)
    adc = np.einsum("gi,vij,gj->vg", dirs, tensor, dirs)
    adv = kt @ _kt_monomials(dirs).T
    with np.errstate(all="ignore"):
        mk = (adv / adc**2) @ weights * md2
    # RK: the circle spanned by the 2nd and 3rd eigenvectors, D(n) = l2 cos^2 + l3 sin^2
    phi = np.pi * np.arange(RK_NODES) / RK_NODES
    c, s = np.cos(phi), np.sin(phi)
    circle = c[None, :, None] * evecs[:, None, :, 1] + s[None, :, None] * evecs[:, None, :, 2]
    adc_r = evals[:, None, 1] * c**2 + evals[:, None, 2] * s**2
    adv_r = np.einsum("vqm,vm->vq", _kt_monomials(circle), kt)
    with np.errstate(all="ignore"):
        rk = (adv_r / adc_r**2).mean(axis=1) * md2
    return np.clip(mk, kmin, kmax), np.clip(rk, kmin, kmax)


def _fit_chunk(args: tuple) -> dict[str, np.ndarray]:
    from dipy.reconst import dki

    design, data, weighted, min_diffusivity, min_signal, kmin, kmax = args
    sig = np.maximum(data, np.float32(min_signal), dtype=np.float32)
    finite = np.all(np.isfinite(sig), axis=1)
    if not np.all(finite):
        sig[~finite] = 1.0
    beta, ok = _linear_fit(design, sig, weighted)
    ok &= finite
    with np.errstate(all="ignore"):
        params, s0 = _dki_params(beta, min_diffusivity)
    ok &= np.all(np.isfinite(params), axis=1) & np.isfinite(s0)
    params[~ok] = 0.0
    evals = params[:, :3]
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        mk, rk = _mk_rk(params, kmin, kmax)
        out = {
            "mk": mk,
            "ak": dki.axial_kurtosis(params, min_kurtosis=kmin, max_kurtosis=kmax, fast=False),
            "rk": rk,
            "kfa": np.clip(dki.kurtosis_fractional_anisotropy(params), 0.0, 1.0),
        }
    l1, l2, l3 = evals[:, 0], evals[:, 1], evals[:, 2]
    den = l1 * l1 + l2 * l2 + l3 * l3
    num = 0.5 * ((l1 - l2) ** 2 + (l2 - l3) ** 2 + (l3 - l1) ** 2)
    out["fa"] = np.clip(np.sqrt(np.divide(num, den, out=np.zeros(len(den)), where=den > 0)), 0, 1)
    out["md"] = evals.mean(axis=1)
    out["ad"] = l1.copy()
    out["rd"] = 0.5 * (l2 + l3)
    out["s0"] = s0
    for key in _MAPS:
        ok &= np.isfinite(out[key])
    for key in _MAPS:
        out[key] = np.where(ok, out[key], 0.0).astype(np.float32)
    out["ok"] = ok
    return out


def fit_kurtosis(
    data: np.ndarray,
    gtab: GradientTable,
    mask: np.ndarray | None = None,
    *,
    method: str = "WLS",
    min_kurtosis: float = MIN_KURTOSIS,
    max_kurtosis: float = MAX_KURTOSIS,
    min_signal: float = MIN_SIGNAL,
    n_procs: int = 1,
) -> KurtosisMaps:
    """Fit the diffusion kurtosis model in every voxel of a multi-shell DWI series.

    Parameters
    ----------
    data : ndarray (X, Y, Z, N)
        DWI series, any real dtype (copied to float only chunk by chunk).
    gtab : dipy.core.gradients.GradientTable
        Gradient table of the N volumes (b-values in s/mm²). Only its ``bvals``
        and unit ``bvecs`` are read. The metrics do not depend on the frame of
        the b-vectors.
    mask : ndarray (X, Y, Z) bool, optional
        Voxels to fit; default all voxels.
    method : {"WLS", "OLS"}
        Estimator (case-insensitive); see the module docstring.
    min_kurtosis, max_kurtosis : float
        Clipping range of MK, AK and RK (DIPY's defaults -3/7 and 10).
    min_signal : float
        Floor for the signal before the logarithm (DIPY's 1e-4).
    n_procs : int
        Worker processes over chunks of the mask; ``0`` or negative means all
        CPUs.

    Returns
    -------
    KurtosisMaps

    Raises
    ------
    ValueError
        Unknown method, shapes that do not match, or a gradient scheme that
        cannot support DKI (see :func:`check_dki_scheme`).
    """
    from dipy.reconst.dki import design_matrix

    method = method.upper()
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    data = np.asarray(data)
    if data.ndim != 4:
        raise ValueError(f"expected a 4D DWI series (X, Y, Z, N), got shape {data.shape}")
    spatial = data.shape[:3]
    n_vol = data.shape[3]
    bvals = np.asarray(gtab.bvals, dtype=float)
    bvecs = np.asarray(gtab.bvecs, dtype=float)
    if len(bvals) != n_vol:
        raise ValueError(
            f"gradient table has {len(bvals)} entries but the series has {n_vol} volumes"
        )
    if not min_kurtosis < max_kurtosis:
        raise ValueError(f"need min_kurtosis < max_kurtosis, got {min_kurtosis}, {max_kurtosis}")
    shells, n_dirs = check_dki_scheme(bvals, bvecs)
    if mask is None:
        mask = np.ones(spatial, dtype=bool)
    else:
        mask = np.asarray(mask).astype(bool, copy=False)
        if mask.shape != spatial:
            raise ValueError(f"mask shape {mask.shape} does not match the data {spatial}")
    scheme = type("Scheme", (), {"bvals": bvals, "bvecs": bvecs})()
    design = design_matrix(scheme)
    min_diffusivity = 1e-6 / -design.min()  # DIPY's DiffusionKurtosisModel floor
    if n_procs <= 0:
        n_procs = os.cpu_count() or 1

    idx = np.flatnonzero(mask)
    in_mask = data.reshape(-1, n_vol)[idx]
    step = CHUNK_VOXELS
    jobs = [
        (design, in_mask[i : i + step], method == "WLS", min_diffusivity, min_signal,
         float(min_kurtosis), float(max_kurtosis))
        for i in range(0, len(idx), step)
    ]
    with single_threaded_blas():
        if n_procs > 1 and len(jobs) > 1:
            # processes, not threads: DIPY's Cython MK/RK hold the GIL (measured: 2
            # threads slower than 1), and they are ~80 % of the time per voxel
            with ProcessPoolExecutor(max_workers=n_procs) as pool:
                parts = list(pool.map(_fit_chunk, jobs))
        else:
            parts = [_fit_chunk(job) for job in jobs]

    n_all = int(np.prod(spatial))
    ok = np.zeros(n_all, dtype=bool)
    maps: dict[str, np.ndarray] = {}
    for key in _MAPS:
        arr = np.zeros(n_all, dtype=np.float32)
        if parts:
            arr[idx] = np.concatenate([p[key] for p in parts])
        maps[key] = arr.reshape(spatial)
    if parts:
        ok[idx] = np.concatenate([p["ok"] for p in parts])
    return KurtosisMaps(
        **maps,
        mask=ok.reshape(spatial),
        n_voxels_fitted=int(ok.sum()),
        n_failed_voxels=int(idx.size - ok.sum()),
        method=method,
        shells=shells,
        n_directions=n_dirs,
        min_kurtosis=float(min_kurtosis),
        max_kurtosis=float(max_kurtosis),
    )


def to_nifti_dict(maps: KurtosisMaps, affine: np.ndarray) -> dict[str, nib.Nifti1Image]:
    """NIfTI images of the maps, keyed ``mk``, ``ak``, ``rk``, ``kfa``, ``fa``, ``md``,
    ``ad``, ``rd``, ``s0`` (float32) and ``mask`` (uint8)."""
    import nibabel as nib

    aff = np.asarray(affine, dtype=float)
    out: dict[str, nib.Nifti1Image] = {}
    for name in (*_MAPS, "mask"):
        arr = getattr(maps, name)
        arr = arr.astype(np.uint8) if name == "mask" else arr.astype(np.float32, copy=False)
        img = nib.Nifti1Image(arr, aff)
        img.header.set_xyzt_units("mm", "sec")
        img.header.set_qform(aff, code=1)
        img.header.set_sform(aff, code=1)
        out[name] = img
    return out
