"""Diffusion-weighted images of the phantom: one diffusion tensor per voxel.

Each voxel holds a single cylindrically symmetric tensor whose axis is the
local fibre direction (from :func:`pipeline.phantom.anatomy.tract_field`,
carried into the scanner frame by the local rotation of the subject's
transform) and whose parallel / perpendicular diffusivities are the
partial-volume weighted averages of the tissue compartments below. Because the
signal is generated from a single tensor, fitting the tensor model to the
noiseless signal recovers the ground truth exactly, which lets tests prove the
gradient-table and affine conventions.

With ``kurtosis=True`` the signal is the diffusion kurtosis (DKI) cumulant
representation ``S = S0 exp(-b D(n) + b² D(n)² K(n) / 6)`` with the same
diffusion tensor and a kurtosis tensor that is cylindrically symmetric about
the fibre axis (see :func:`kurtosis_tensor_metrics`), so that a DKI fit of the
noiseless signal recovers the truth exactly as well. A tensor fitted to such a
signal is biased: its MD is lower than the truth by about ``b D K / 6``
(relative), the known bias of DTI in tissue with positive kurtosis.

Head motion between volumes is simulated the way it happens in a scanner: the
head (and its tensors) rotates, while the gradient directions stay fixed in the
scanner frame and are written to the .bvec file unrotated. A pipeline that does
not rotate its b-vectors after motion correction therefore fits tensors whose
directions are wrong by the motion angle.

Diffusivities are in mm^2/s.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.motion import rigid_matrix
from pipeline.phantom.anatomy import (
    CC_SEGMENTS,
    TRACTS,
    Lesion,
    Template,
    TractField,
    apply_affine,
    grid_points,
    lesion_probability,
    sample_template,
)

__all__ = [
    "COMPARTMENTS",
    "KURTOSIS",
    "DwiPhantom",
    "gradient_scheme",
    "kurtosis_tensor_metrics",
    "multishell_scheme",
    "simulate_dwi",
    "tensor_metrics",
]

#: (parallel, perpendicular) diffusivity in mm^2/s and relative b = 0 signal per compartment.
COMPARTMENTS: dict[str, dict[str, float]] = {
    "wm_tract": {"ad": 1.65e-3, "rd": 0.38e-3, "s0": 1.00},  # FA 0.73
    "wm": {"ad": 1.40e-3, "rd": 0.50e-3, "s0": 1.00},  # FA 0.57
    "gm": {"ad": 0.95e-3, "rd": 0.78e-3, "s0": 1.25},  # FA 0.13
    "csf": {"ad": 3.0e-3, "rd": 3.0e-3, "s0": 2.40},  # isotropic
    "lesion": {"ad": 1.50e-3, "rd": 0.95e-3, "s0": 1.60},  # FA 0.27, raised MD
}

#: Axial (along the fibre) and radial (perpendicular) kurtosis per compartment,
#: used when :func:`simulate_dwi` is called with ``kurtosis=True``. Values in the
#: range reported for healthy adult brain at b <= 2500 s/mm^2 (white matter AK
#: ~0.7-0.9, RK ~1.0-1.5 with the highest RK in coherent tracts; cortical grey
#: matter MK ~0.7-0.9 and nearly isotropic; free water 0) and lower in MS lesions.
KURTOSIS: dict[str, dict[str, float]] = {
    "wm_tract": {"ak": 0.80, "rk": 1.40},
    "wm": {"ak": 0.80, "rk": 1.10},
    "gm": {"ak": 0.80, "rk": 0.80},
    "csf": {"ak": 0.0, "rk": 0.0},
    "lesion": {"ak": 0.60, "rk": 0.70},
}

#: Gauss-Legendre nodes on [0, 1] for the mean kurtosis over the sphere of a
#: cylindrically symmetric (D, W): the integrand in cos(angle to the axis) is a
#: rational function without poles on [0, 1], so 64 nodes give machine precision.
_GL_NODES, _GL_WEIGHTS = np.polynomial.legendre.leggauss(64)


def kurtosis_tensor_metrics(
    ad: np.ndarray, rd: np.ndarray, ak: np.ndarray, rk: np.ndarray
) -> dict[str, np.ndarray]:
    """Kurtosis tensor and its MK, AK, RK, KFA for the phantom's cylindrical model.

    The diffusion tensor has eigenvalues ``(ad, rd, rd)`` about an axis ``v``.
    The kurtosis tensor is the fully symmetric ``W = sym(A ⊗ I)``, i.e.
    ``W_ijkl = (A_ij δ_kl + A_ik δ_jl + A_il δ_jk + A_kl δ_ij + A_jl δ_ik +
    A_jk δ_il) / 6``, with ``A = β I + (α - β) v vᵀ``, ``α = ak ad² / MD²``
    and ``β = rk rd² / MD²``. In the eigenframe (axis 1 = v): ``W1111 = α``,
    ``W2222 = W3333 = β = 3 W2233``, ``W1122 = W1133 = (α + β) / 6``, all
    other elements 0. Along a unit direction n at cosine ``c = v·n`` to the axis
    ``W(n) = α c² + β (1 - c²)``, so the apparent kurtosis
    ``K(n) = MD² W(n) / D(n)²`` is ``ak`` along v and ``rk`` in every direction
    perpendicular to it, and ``D(n)² K(n) = rk rd² + (ak ad² - rk rd²) c²``.

    The metrics follow DIPY's definitions (``dipy.reconst.dki``), computed here
    with exact formulas of this model, not with DIPY:

    * MK, the mean of K(n) over the sphere, is ``∫_0^1 K(c) dc`` (c is uniform
      on [-1, 1] for uniform directions), by 64-node Gauss-Legendre quadrature
      (exact to rounding: the integrand is smooth on [0, 1]);
    * AK = K(v) = ``ak`` and RK, the mean of K over directions perpendicular to
      v, = ``rk``;
    * KFA = ``||W - MKT I4||_F / ||W||_F`` (Glenn et al. 2015) with the mean
      kurtosis tensor ``MKT = (α + 2β) / 3`` and ``I4`` the fully symmetric
      isotropic tensor, from the eigenframe elements above; 0 where
      ``||W|| = 0`` or ``MKT <= 1e-8`` (as DIPY).

    Voxels with ``MD = 0`` (no tissue) get 0 everywhere.

    Returns
    -------
    dict
        ``mk``, ``ak``, ``rk``, ``kfa`` and the eigenframe elements ``w1111``,
        ``w2222``, ``w1122``, ``w2233`` (arrays of the input shape).
    """
    ad, rd, ak, rk = (np.asarray(x, dtype=float) for x in (ad, rd, ak, rk))
    md = (ad + 2 * rd) / 3
    valid = md > 0
    md2 = np.where(valid, md * md, 1.0)
    alpha = np.where(valid, ak * ad * ad / md2, 0.0)
    beta = np.where(valid, rk * rd * rd / md2, 0.0)
    c2 = ((_GL_NODES + 1.0) / 2.0) ** 2  # nodes mapped to [0, 1]
    num = (rk * rd * rd)[..., None] + (ak * ad * ad - rk * rd * rd)[..., None] * c2
    den = rd[..., None] + (ad - rd)[..., None] * c2
    with np.errstate(divide="ignore", invalid="ignore"):
        k_c = np.where(valid[..., None], num / np.where(valid[..., None], den * den, 1.0), 0.0)
    mk = k_c @ (_GL_WEIGHTS / 2.0)
    w1111, w2222, w1122, w2233 = alpha, beta, (alpha + beta) / 6.0, beta / 3.0
    mkt = (alpha + 2.0 * beta) / 3.0
    dev = (
        (w1111 - mkt) ** 2
        + 2.0 * (w2222 - mkt) ** 2
        + 6.0 * (2.0 * (w1122 - mkt / 3.0) ** 2 + (w2233 - mkt / 3.0) ** 2)
    )
    norm = w1111**2 + 2.0 * w2222**2 + 6.0 * (2.0 * w1122**2 + w2233**2)
    ok = (norm > 0) & (mkt > 1e-8)
    kfa = np.sqrt(np.divide(dev, norm, out=np.zeros_like(dev), where=ok))
    return {
        "mk": mk,
        "ak": np.where(valid, ak, 0.0),
        "rk": np.where(valid, rk, 0.0),
        "kfa": kfa,
        "w1111": w1111,
        "w2222": w2222,
        "w1122": w1122,
        "w2233": w2233,
    }


def tensor_metrics(ad: np.ndarray, rd: np.ndarray) -> dict[str, np.ndarray]:
    """FA, MD, AD, RD of cylindrically symmetric tensors (eigenvalues ad, rd, rd)."""
    md = (ad + 2 * rd) / 3
    num = np.sqrt((ad - md) ** 2 + 2 * (rd - md) ** 2)
    den = np.sqrt(ad**2 + 2 * rd**2)
    fa = np.where(den > 0, np.sqrt(1.5) * num / np.where(den > 0, den, 1), 0.0)
    return {"fa": fa, "md": md, "ad": ad, "rd": rd}


def gradient_scheme(
    n_b0: int, n_directions: int, bvalue: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """A single-shell scheme: b-values (N,) and unit world directions (N, 3).

    Directions are spread by electrostatic repulsion (DIPY); b = 0 volumes are
    interleaved (first volume and evenly through the series), as on scanners.
    """
    dirs = _spread_directions(n_directions, rng)
    n = n_b0 + n_directions
    b0_pos = np.unique(np.round(np.linspace(0, n, n_b0, endpoint=False)).astype(int))
    bvals = np.full(n, float(bvalue))
    bvecs = np.zeros((n, 3))
    bvals[b0_pos] = 0.0
    bvecs[np.setdiff1d(np.arange(n), b0_pos)] = dirs
    return bvals, bvecs


def _spread_directions(n_directions: int, rng: np.random.Generator) -> np.ndarray:
    """Unit directions (n, 3) on a hemisphere spread by electrostatic repulsion (DIPY)."""
    from dipy.core.sphere import HemiSphere, disperse_charges

    theta = np.arccos(rng.uniform(-1, 1, n_directions))
    phi = rng.uniform(0, 2 * np.pi, n_directions)
    hemi, _ = disperse_charges(HemiSphere(theta=theta, phi=phi), 500)
    return hemi.vertices


def multishell_scheme(
    n_b0: int,
    shells: Mapping[float, int] | Sequence[tuple[float, int]],
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """A multi-shell scheme: b-values (N,) and unit world directions (N, 3).

    Parameters
    ----------
    n_b0 : int
        Number of b = 0 volumes, interleaved as in :func:`gradient_scheme`
        (first volume and evenly through the series).
    shells : mapping or sequence of (b-value, n_directions)
        Diffusion-weighted shells in acquisition order, e.g.
        ``{1000.0: 30, 2000.0: 30}``.
    rng : numpy.random.Generator
        Each shell gets its own set of directions spread by electrostatic
        repulsion on the hemisphere (as :func:`gradient_scheme`), so the shells
        do not share directions.

    Returns
    -------
    bvals : ndarray (N,)
    bvecs : ndarray (N, 3)
        Zero rows for the b = 0 volumes. The diffusion-weighted volumes are
        ordered shell by shell (in the order given).
    """
    items = list(shells.items()) if isinstance(shells, Mapping) else list(shells)
    if not items:
        raise ValueError("multishell_scheme needs at least one diffusion-weighted shell")
    if n_b0 < 0:
        raise ValueError(f"n_b0 must be >= 0, got {n_b0}")
    dw_b: list[np.ndarray] = []
    dw_dirs: list[np.ndarray] = []
    for bvalue, n_dirs in items:
        if float(bvalue) <= 0 or int(n_dirs) < 1:
            raise ValueError(
                f"each shell needs a positive b-value and >= 1 direction, got ({bvalue}, {n_dirs})"
            )
        dw_dirs.append(_spread_directions(int(n_dirs), rng))
        dw_b.append(np.full(int(n_dirs), float(bvalue)))
    n_dw = sum(len(b) for b in dw_b)
    n = n_b0 + n_dw
    b0_pos = np.unique(np.round(np.linspace(0, n, n_b0, endpoint=False)).astype(int))
    dw_pos = np.setdiff1d(np.arange(n), b0_pos)
    bvals = np.zeros(n)
    bvecs = np.zeros((n, 3))
    bvals[dw_pos] = np.concatenate(dw_b)
    bvecs[dw_pos] = np.concatenate(dw_dirs)
    return bvals, bvecs


@dataclass(frozen=True, eq=False)
class DwiPhantom:
    """A simulated DWI series and its voxel-wise truth (all on the DWI grid).

    Attributes
    ----------
    data : ndarray (X, Y, Z, N) float32
    affine : ndarray (4, 4)
    bvals : ndarray (N,)
    bvecs_world : ndarray (N, 3)
        Unit gradient directions in the scanner (world RAS+) frame, as the
        scanner applied them (not rotated by the head motion).
    motion : ndarray (N, 6)
        Head pose of every volume relative to the session's rest position
        (tx, ty, tz mm, rx, ry, rz rad; see :mod:`pipeline.motion`).
    truth : dict
        ``fa``, ``md``, ``ad``, ``rd`` (X, Y, Z), ``v1`` (X, Y, Z, 3) unit
        principal direction in world coordinates, ``s0``, ``brain`` mask,
        tissue probabilities ``gm``, ``wm``, ``csf``, ``lesion``, ``left``
        hemisphere mask, and one boolean mask per bundle in ``TRACTS``.
        With ``kurtosis=True`` also ``mk``, ``ak``, ``rk``, ``kfa`` (X, Y, Z)
        of the kurtosis tensor (:func:`kurtosis_tensor_metrics`).
    sigma : float
        Standard deviation of the Gaussian noise in each channel (Rician noise).
    dropout_volumes : tuple of int
        Volumes where a slice has signal dropout.
    """

    data: np.ndarray
    affine: np.ndarray
    bvals: np.ndarray
    bvecs_world: np.ndarray
    motion: np.ndarray
    truth: dict[str, np.ndarray]
    sigma: float
    dropout_volumes: tuple[int, ...]


def _local_rotation(
    to_template: Callable[[np.ndarray], np.ndarray], points: np.ndarray, step: float = 1.0
) -> np.ndarray:
    """Jacobian d(template)/d(scanner) at points by central differences, (N, 3, 3)."""
    jac = np.empty((len(points), 3, 3))
    for j in range(3):
        off = np.zeros(3)
        off[j] = step
        jac[:, :, j] = (to_template(points + off) - to_template(points - off)) / (2 * step)
    return jac


def simulate_dwi(
    *,
    grid_shape: Sequence[int],
    grid_affine: np.ndarray,
    to_template: Callable[[np.ndarray], np.ndarray],
    template: Template,
    tracts: TractField,
    lesions: Sequence[Lesion],
    session_index: int,
    rd_change_left_nawm: float,
    bvals: np.ndarray,
    bvecs_world: np.ndarray,
    rng: np.random.Generator,
    snr_b0: float = 25.0,
    motion: np.ndarray | None = None,
    n_dropout: int = 0,
    bias_field: np.ndarray | None = None,
    noiseless: bool = False,
    kurtosis: bool = False,
) -> DwiPhantom:
    """Simulate one session's DWI series.

    Parameters
    ----------
    rd_change_left_nawm : float
        Relative change of the white-matter perpendicular diffusivity in the left
        hemisphere outside lesions (e.g. -0.06 for a 6 % decrease).
    snr_b0 : float
        b = 0 white-matter signal divided by the noise standard deviation.
    motion : ndarray (N, 6), optional
        Rigid head pose of each volume; None means no motion.
    noiseless : bool
        No noise, no motion and no dropout (for convention tests).
    kurtosis : bool
        Add the DKI term ``b² D(n)² K(n) / 6`` to the log-signal, with the
        partial-volume weighted axial / radial kurtosis of :data:`KURTOSIS`
        about the fibre axis (which moves with the head as the tensor does),
        and the truth maps ``mk``, ``ak``, ``rk``, ``kfa``. False (default)
        gives exactly the diffusion-tensor signal, as before this option.
    """
    shape = tuple(int(s) for s in grid_shape[:3])
    n_vol = len(bvals)
    pts = grid_points(shape, grid_affine)
    rest_jac = _local_rotation(to_template, pts)  # d(template)/d(head), at rest

    def tissue(head_points: np.ndarray) -> dict[str, np.ndarray]:
        """The head's tissue model at head-frame points (rest position coordinates).

        The fibre direction uses the rest-position Jacobian at the voxel: head
        motion is below a few millimetres and the deformation varies over
        centimetres, so J(p) = J(x) to far below the angular precision of a fit.
        """
        mni = to_template(head_points)
        inv = template.inv_affine
        prob = {k: sample_template(inv, template.maps[k], mni) for k in ("gm", "wm", "csf", "brain")}
        les = lesion_probability(mni, lesions, session_index) * prob["brain"]
        keep = 1.0 - les
        gm, wm, csf = prob["gm"] * keep, prob["wm"] * keep, prob["csf"] * keep
        labels = sample_template(inv, tracts.labels, mni, order=0).astype(np.uint8)
        in_tract = labels > 0
        left = mni[:, 0] < 0
        # fibre direction: nearest template orientation, pushed into the head frame
        brain_idx = np.flatnonzero(prob["brain"] > 0.01)
        e_mni = np.stack(
            [sample_template(inv, tracts.orientation[..., c], mni[brain_idx], order=0)
             for c in range(3)],
            axis=1,
        )
        e_head = np.linalg.solve(rest_jac[brain_idx], e_mni[..., None])[..., 0]
        e_head /= np.maximum(np.linalg.norm(e_head, axis=1, keepdims=True), 1e-12)
        v1 = np.zeros((len(head_points), 3))
        v1[brain_idx] = e_head
        c = COMPARTMENTS
        wm_ad = np.where(in_tract, c["wm_tract"]["ad"], c["wm"]["ad"])
        wm_rd = np.where(in_tract, c["wm_tract"]["rd"], c["wm"]["rd"])
        wm_rd = np.where(left, wm_rd * (1.0 + rd_change_left_nawm), wm_rd)
        weights = {"gm": gm, "wm": wm, "csf": csf, "lesion": les}
        total = gm + wm + csf + les
        safe = np.where(total > 0, total, 1.0)
        ad = (wm * wm_ad + gm * c["gm"]["ad"] + csf * c["csf"]["ad"] + les * c["lesion"]["ad"]) / safe
        rd = (wm * wm_rd + gm * c["gm"]["rd"] + csf * c["csf"]["rd"] + les * c["lesion"]["rd"]) / safe
        s0 = sum(w * c[k]["s0"] for k, w in weights.items()) * 1000.0
        kurt: dict[str, np.ndarray] = {}
        if kurtosis:  # partial-volume weighted axial / radial kurtosis
            for key in ("ak", "rk"):
                kv = KURTOSIS
                wm_k = np.where(in_tract, kv["wm_tract"][key], kv["wm"][key])
                val = (wm * wm_k + gm * kv["gm"][key] + csf * kv["csf"][key]
                       + les * kv["lesion"][key]) / safe
                kurt[key] = np.where(total > 0, val, 0.0)
        if bias_field is not None:  # the coil's sensitivity is fixed in the scanner frame
            s0 = s0 * bias_field.reshape(-1)
        return {"ad": np.where(total > 0, ad, 0.0), "rd": np.where(total > 0, rd, 0.0),
                "s0": s0, "v1": v1, "weights": weights, "left": left, "labels": labels,
                "brain": prob["brain"], "mni": mni, **kurt}

    if noiseless:
        motion = None
        n_dropout = 0
    if motion is None:
        motion = np.zeros((n_vol, 6))
    motion = np.asarray(motion, dtype=float)
    rest = tissue(pts)
    data = np.empty((*shape, n_vol), dtype=np.float32)
    for k in range(n_vol):
        mat = rigid_matrix(motion[k])
        # image_k(x) = head(M_k^-1 x): the tissue model is evaluated at the moved
        # positions (not interpolated from the rest image, which would blur tissue
        # boundaries and lower FA as no scanner does), and a scanner-frame gradient
        # g probes the head-frame direction M_k^T g.
        model = rest if not np.any(motion[k]) else tissue(apply_affine(np.linalg.inv(mat), pts))
        g_head = mat[:3, :3].T @ bvecs_world[k]
        proj = model["v1"] @ g_head
        if not kurtosis:
            sig = model["s0"] * np.exp(
                -bvals[k] * (model["rd"] + (model["ad"] - model["rd"]) * proj**2)
            )
        else:  # DKI: ln S = ln S0 - b D(n) + b² D(n)² K(n) / 6 (kurtosis_tensor_metrics)
            c2 = proj**2
            d_n = model["rd"] + (model["ad"] - model["rd"]) * c2
            rk_rd2 = model["rk"] * model["rd"] ** 2
            d2k = rk_rd2 + (model["ak"] * model["ad"] ** 2 - rk_rd2) * c2
            sig = model["s0"] * np.exp(-bvals[k] * d_n + bvals[k] ** 2 * d2k / 6.0)
        data[..., k] = sig.reshape(shape).astype(np.float32)
    ad, rd, s0, v1 = rest["ad"], rest["rd"], rest["s0"], rest["v1"]
    weights, left, labels = rest["weights"], rest["left"], rest["labels"]
    cc_segment = sample_template(template.inv_affine, tracts.cc_segment, rest["mni"], order=0)
    wm = weights["wm"]
    prob = {"brain": rest["brain"]}
    wm_signal = float(np.median(s0[(wm > 0.9)])) if np.any(wm > 0.9) else float(s0.max())
    sigma = 0.0 if noiseless else wm_signal / float(snr_b0)
    dropout: list[int] = []
    if n_dropout:
        dw = np.flatnonzero(bvals > 50)
        dropout = sorted(
            int(v) for v in rng.choice(dw, size=min(n_dropout, len(dw)), replace=False)
        )
        for k in dropout:
            z = int(rng.integers(shape[2] // 3, 2 * shape[2] // 3))
            data[:, :, z, k] *= 0.25
    if sigma > 0:
        n1 = rng.normal(0.0, sigma, data.shape).astype(np.float32)
        n2 = rng.normal(0.0, sigma, data.shape).astype(np.float32)
        data = np.sqrt((data + n1) ** 2 + n2**2)

    metrics = tensor_metrics(ad, rd)
    truth: dict[str, np.ndarray] = {
        k: v.reshape(shape).astype(np.float32) for k, v in metrics.items()
    }
    if kurtosis:
        kmet = kurtosis_tensor_metrics(ad, rd, rest["ak"], rest["rk"])
        for key in ("mk", "ak", "rk", "kfa"):
            truth[key] = kmet[key].reshape(shape).astype(np.float32)
    truth["v1"] = v1.reshape(*shape, 3).astype(np.float32)
    truth["s0"] = s0.reshape(shape).astype(np.float32)
    truth["brain"] = (prob["brain"] >= 0.5).reshape(shape)
    for k, w in weights.items():
        truth[k] = w.reshape(shape).astype(np.float32)
    truth["left"] = left.reshape(shape)
    for i, name in enumerate(TRACTS):
        truth[f"tract_{name}"] = (labels == i + 1).reshape(shape)
    for k, (name, _, _) in enumerate(CC_SEGMENTS):
        truth[f"tract_{name}"] = (cc_segment == k + 1).reshape(shape)
    return DwiPhantom(
        data=data,
        affine=np.asarray(grid_affine, dtype=float),
        bvals=np.asarray(bvals, dtype=float),
        bvecs_world=np.asarray(bvecs_world, dtype=float),
        motion=motion,
        truth=truth,
        sigma=sigma,
        dropout_volumes=tuple(dropout),
    )
