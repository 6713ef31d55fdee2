"""Rigid head motion: parameters, matrices, framewise displacement, simulated traces.

Convention (shared by the DWI and BOLD code)
---------------------------------------------
A head pose is six rigid parameters ``(tx, ty, tz, rx, ry, rz)``: translations in
mm and rotations in radians, expressed in RAS+ scanner world mm and applied about
the world origin (the scanner isocentre).  The matrix of a pose is

    M = T @ Rz @ Ry @ Rx

for column vectors, i.e. the x-rotation is applied first, then y, then z, then the
translation.  ``M`` maps a point of the head at rest to where that point is at the
given pose.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "framewise_displacement",
    "rigid_matrix",
    "rigid_params",
    "simulate_motion_trace",
]


def rigid_matrix(params: ArrayLike) -> np.ndarray:
    """Homogeneous matrix of rigid parameters.

    Parameters
    ----------
    params : array-like, shape (..., 6)
        ``(tx, ty, tz, rx, ry, rz)``, translations in mm, rotations in radians.

    Returns
    -------
    numpy.ndarray, shape (..., 4, 4)
        ``T @ Rz @ Ry @ Rx`` (column-vector convention, x-rotation applied first).
    """
    p = np.asarray(params, dtype=float)
    if p.shape[-1:] != (6,):
        raise ValueError(f"expected rigid parameters of shape (..., 6), got {p.shape}")
    cx, cy, cz = np.cos(p[..., 3]), np.cos(p[..., 4]), np.cos(p[..., 5])
    sx, sy, sz = np.sin(p[..., 3]), np.sin(p[..., 4]), np.sin(p[..., 5])
    m = np.zeros((*p.shape[:-1], 4, 4))
    # Rz @ Ry @ Rx written out.
    m[..., 0, 0] = cz * cy
    m[..., 0, 1] = cz * sy * sx - sz * cx
    m[..., 0, 2] = cz * sy * cx + sz * sx
    m[..., 1, 0] = sz * cy
    m[..., 1, 1] = sz * sy * sx + cz * cx
    m[..., 1, 2] = sz * sy * cx - cz * sx
    m[..., 2, 0] = -sy
    m[..., 2, 1] = cy * sx
    m[..., 2, 2] = cy * cx
    m[..., :3, 3] = p[..., :3]
    m[..., 3, 3] = 1.0
    return m


def rigid_params(matrix: ArrayLike) -> np.ndarray:
    """Rigid parameters of a homogeneous rigid matrix (inverse of :func:`rigid_matrix`).

    Parameters
    ----------
    matrix : array-like, shape (..., 4, 4)
        Rigid matrices ``T @ Rz @ Ry @ Rx``.

    Returns
    -------
    numpy.ndarray, shape (..., 6)
        ``(tx, ty, tz, rx, ry, rz)``; exact for rotations with ``|angle| < pi/2``.

    Raises
    ------
    ValueError
        If the shape is wrong or the upper-left 3x3 block is not a proper rotation.
    """
    m = np.asarray(matrix, dtype=float)
    if m.shape[-2:] != (4, 4):
        raise ValueError(f"expected matrices of shape (..., 4, 4), got {m.shape}")
    r = m[..., :3, :3]
    eye = np.broadcast_to(np.eye(3), r.shape)
    if not np.allclose(r @ np.swapaxes(r, -1, -2), eye, atol=1e-6) or np.any(np.linalg.det(r) < 0):
        raise ValueError("matrix is not rigid: its 3x3 block is not a proper rotation")
    out = np.empty((*m.shape[:-2], 6))
    out[..., :3] = m[..., :3, 3]
    out[..., 3] = np.arctan2(r[..., 2, 1], r[..., 2, 2])
    out[..., 4] = np.arctan2(-r[..., 2, 0], np.hypot(r[..., 0, 0], r[..., 1, 0]))
    out[..., 5] = np.arctan2(r[..., 1, 0], r[..., 0, 0])
    return out


def framewise_displacement(params: ArrayLike, *, radius: float = 50.0) -> np.ndarray:
    """Framewise displacement of Power et al. (2012).

    ``FD[t] = sum_k |p[t, k] - p[t-1, k]|`` over the six parameters, with the
    rotations (radians) converted to arc length in mm on a sphere of ``radius`` mm.

    Parameters
    ----------
    params : array-like, shape (T, 6)
        Motion trace ``(tx, ty, tz, rx, ry, rz)`` per volume (mm, radians).
    radius : float
        Head radius in mm used to convert rotations to mm.

    Returns
    -------
    numpy.ndarray, shape (T,)
        FD in mm; ``FD[0] = 0``.
    """
    p = np.asarray(params, dtype=float)
    if p.ndim != 2 or p.shape[1] != 6:
        raise ValueError(f"expected a motion trace of shape (T, 6), got {p.shape}")
    fd = np.zeros(p.shape[0])
    if p.shape[0] > 1:
        d = np.abs(np.diff(p, axis=0))
        fd[1:] = d[:, :3].sum(axis=1) + radius * d[:, 3:].sum(axis=1)
    return fd


# Relative size of each parameter's motion (tx, ty, tz, rx, ry, rz): in-scanner
# motion is mostly through-plane translation (z) and nodding (rotation about x).
_AXIS_SCALE = np.array([0.6, 0.9, 1.3, 1.4, 0.6, 0.6])
_AXIS_SCALE = _AXIS_SCALE / np.sqrt(np.mean(_AXIS_SCALE**2))


def simulate_motion_trace(
    n_volumes: int,
    *,
    rng: np.random.Generator,
    drift_mm: float = 0.3,
    jitter_mm: float = 0.04,
    n_spikes: int = 3,
    spike_mm: tuple[float, float] = (0.5, 1.2),
    radius: float = 50.0,
) -> np.ndarray:
    """Simulate a realistic head-motion trace relative to the first volume.

    The trace is the sum of

    * a slow drift: per parameter, a Gaussian-smoothed random walk rescaled so
      that its largest excursion is ``drift_mm`` times a random factor in [0.3, 1];
    * jitter: per parameter, an AR(1) process (coefficient 0.7) with stationary
      standard deviation ``jitter_mm``; frame-to-frame changes are then small
      (typical FD about 0.1-0.2 mm for the defaults);
    * ``n_spikes`` motion events at random, well separated volumes: a sudden
      displacement in a random direction whose summed absolute size (the FD it
      adds, in mm) is uniform in ``spike_mm``, followed by a partial return
      (30-70 % of the jump decays away with a time constant of 1-3 volumes).

    All sizes are mm-equivalent: rotations are ``mm / radius`` radians, so
    rotations and translations contribute comparably to FD at ``radius`` mm.
    Parameters differ in scale (z-translation and x-rotation, i.e. nodding,
    dominate).  The trace is expressed relative to the first volume
    (``trace[0] == 0``), like realignment estimates.

    Parameters
    ----------
    n_volumes : int
        Number of volumes T.
    rng : numpy.random.Generator
        Source of randomness (the trace is deterministic given its state).
    drift_mm, jitter_mm : float
        Size of the slow drift and of the frame-to-frame jitter (mm).
    n_spikes : int
        Number of motion events (fewer if the run is too short to separate them).
    spike_mm : (float, float)
        Range of the summed absolute size of each sudden jump (mm).
    radius : float
        Head radius (mm) converting mm-equivalents to radians.

    Returns
    -------
    numpy.ndarray, shape (T, 6)
        ``(tx, ty, tz, rx, ry, rz)`` per volume, mm and radians.
    """
    if n_volumes < 1:
        raise ValueError(f"n_volumes must be >= 1, got {n_volumes}")
    if not spike_mm[0] <= spike_mm[1]:
        raise ValueError(f"spike_mm must be (low, high) with low <= high, got {spike_mm}")
    t_len = int(n_volumes)
    from scipy.ndimage import gaussian_filter1d

    # Slow drift: smoothed random walk, max excursion drift_mm * U(0.3, 1).
    walk = np.cumsum(rng.standard_normal((t_len, 6)), axis=0)
    walk = gaussian_filter1d(walk, sigma=max(t_len / 15.0, 1.0), axis=0, mode="nearest")
    walk -= walk[0]
    peak = np.abs(walk).max(axis=0)
    peak[peak == 0] = 1.0
    drift = walk / peak * drift_mm * rng.uniform(0.3, 1.0, size=6)

    # Jitter: AR(1), stationary sd jitter_mm.
    phi = 0.7
    innov = rng.standard_normal((t_len, 6)) * jitter_mm * np.sqrt(1 - phi**2)
    jitter = np.empty((t_len, 6))
    jitter[0] = rng.standard_normal(6) * jitter_mm
    for t in range(1, t_len):
        jitter[t] = phi * jitter[t - 1] + innov[t]

    # Spikes: sudden jumps with partial return.
    spikes = np.zeros((t_len, 6))
    onsets = _spike_onsets(t_len, n_spikes, rng)
    for onset in onsets:
        direction = rng.standard_normal(6) * _AXIS_SCALE
        direction /= np.abs(direction).sum()
        jump = direction * rng.uniform(*spike_mm)
        kept = rng.uniform(0.3, 0.7)
        tau = rng.uniform(1.0, 3.0)
        age = np.arange(t_len - onset)
        profile = kept + (1.0 - kept) * np.exp(-age / tau)
        spikes[onset:] += profile[:, None] * jump

    trace_mm = drift * _AXIS_SCALE + jitter * _AXIS_SCALE + spikes
    trace_mm -= trace_mm[0]
    trace = trace_mm.copy()
    trace[:, 3:] /= radius
    return trace


def _spike_onsets(t_len: int, n_spikes: int, rng: np.random.Generator) -> list[int]:
    """Random spike volumes at least 5 volumes apart and away from volume 0."""
    candidates = np.arange(2, t_len)
    onsets: list[int] = []
    for _ in range(max(int(n_spikes), 0)):
        free = [c for c in candidates if all(abs(c - o) >= 5 for o in onsets)]
        if not free:
            break
        onsets.append(int(rng.choice(free)))
    return sorted(onsets)
