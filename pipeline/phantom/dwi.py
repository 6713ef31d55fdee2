"""Diffusion-weighted images of the phantom: one diffusion tensor per voxel.

Each voxel holds a single cylindrically symmetric tensor whose axis is the
local fibre direction (from :func:`pipeline.phantom.anatomy.tract_field`,
carried into the scanner frame by the local rotation of the subject's
transform) and whose parallel / perpendicular diffusivities are the
partial-volume weighted averages of the tissue compartments below. Because the
signal is generated from a single tensor, fitting the tensor model to the
noiseless signal recovers the ground truth exactly, which lets tests prove the
gradient-table and affine conventions.

Head motion between volumes is simulated the way it happens in a scanner: the
head (and its tensors) rotates, while the gradient directions stay fixed in the
scanner frame and are written to the .bvec file unrotated. A pipeline that does
not rotate its b-vectors after motion correction therefore fits tensors whose
directions are wrong by the motion angle.

Diffusivities are in mm^2/s.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
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
    "DwiPhantom",
    "gradient_scheme",
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
    from dipy.core.sphere import HemiSphere, disperse_charges

    theta = np.arccos(rng.uniform(-1, 1, n_directions))
    phi = rng.uniform(0, 2 * np.pi, n_directions)
    hemi, _ = disperse_charges(HemiSphere(theta=theta, phi=phi), 500)
    dirs = hemi.vertices
    n = n_b0 + n_directions
    b0_pos = np.unique(np.round(np.linspace(0, n, n_b0, endpoint=False)).astype(int))
    bvals = np.full(n, float(bvalue))
    bvecs = np.zeros((n, 3))
    bvals[b0_pos] = 0.0
    bvecs[np.setdiff1d(np.arange(n), b0_pos)] = dirs
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
        )  # fmt: skip
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
        if bias_field is not None:  # the coil's sensitivity is fixed in the scanner frame
            s0 = s0 * bias_field.reshape(-1)
        return {"ad": np.where(total > 0, ad, 0.0), "rd": np.where(total > 0, rd, 0.0),
                "s0": s0, "v1": v1, "weights": weights, "left": left, "labels": labels,
                "brain": prob["brain"], "mni": mni}  # fmt: skip

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
        sig = model["s0"] * np.exp(-bvals[k] * (model["rd"] + (model["ad"] - model["rd"]) * proj**2))
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
