"""Tractography (DIPY ``LocalTracking``) with an explicit lesion policy.

Directions come from the diffusion tensor's principal eigenvector
(:func:`track_tensor`) or from a CSA / CSD orientation fit
(:func:`track_odf`, models in :mod:`pipeline.tract.odf`):

``"deterministic"``
    EuDX-style deterministic tracking on the peaks (DIPY
    :class:`~dipy.direction.peaks.PeaksAndMetrics` used as direction getter):
    the tensor's one peak per voxel, or the CSA / CSD peaks (up to
    ``npeaks``, the one closest to the incoming direction is followed, so
    crossings are traversed).
``"probabilistic"``
    :class:`~dipy.direction.ProbabilisticDirectionGetter`: for the tensor, on a
    tensor-derived fibre ODF, ``pmf(u) = |u . v1| ** odf_power`` on a sphere
    (only voxels of the tracking mask are filled, the rest is 0); for CSA / CSD,
    on the model's spherical-harmonic ODF (``from_shcoeff``, negative lobes
    clipped).

Stopping: a binary criterion on the *tracking mask*, ``brain & FA >= fa_threshold``.
With ``lesion_policy="pass"`` (default) the lesion voxels are added to the
tracking mask, so streamlines cross lesions (whose FA is lowered by demyelination
and oedema) instead of stopping inside them, which would truncate every bundle
running through a lesion and bias the tract profiles towards normal-appearing
tissue. ``lesion_policy="stop"`` applies the FA threshold everywhere.

Streamlines are returned in world (scanner RAS+) millimetres of the DWI image.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

__all__ = [
    "LESION_POLICIES",
    "METHODS",
    "TrackingParams",
    "track_odf",
    "track_tensor",
    "tracking_mask",
]

METHODS = ("deterministic", "probabilistic")
LESION_POLICIES = ("pass", "stop")


@dataclass(frozen=True)
class TrackingParams:
    """Tractography parameters.

    Attributes
    ----------
    method : {"deterministic", "probabilistic"}
    seeds_per_voxel : int
        Seeds per voxel of the seed mask, placed at random inside the voxel.
    step_size_mm : float
        Tracking step length.
    max_angle_deg : float
        Maximum turning angle between successive steps.
    min_length_mm, max_length_mm : float
        Streamlines outside this length range are discarded.
    fa_threshold : float
        Tracking stops where FA falls below this (outside lesions, see ``lesion_policy``).
    seed_fa_threshold : float
        Seeds only in seed-mask voxels with FA at least this.
    lesion_policy : {"pass", "stop"}
        ``pass``: lesion voxels never stop tracking; ``stop``: they are treated like
        any other voxel (FA threshold).
    lesion_threshold : float
        A voxel is a lesion voxel when the lesion probability is at least this.
    odf_power : float
        Sharpness of the tensor ODF used by the probabilistic method.
    seed : int
        Seed of the random generators (seed placement and probabilistic sampling).
    """

    method: str = "deterministic"
    seeds_per_voxel: int = 1
    step_size_mm: float = 1.0
    max_angle_deg: float = 45.0
    min_length_mm: float = 20.0
    max_length_mm: float = 250.0
    fa_threshold: float = 0.2
    seed_fa_threshold: float = 0.3
    lesion_policy: str = "pass"
    lesion_threshold: float = 0.5
    odf_power: float = 20.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"tracking method must be one of {METHODS}, got {self.method!r}")
        if self.lesion_policy not in LESION_POLICIES:
            raise ValueError(
                f"lesion_policy must be one of {LESION_POLICIES}, got {self.lesion_policy!r}"
            )
        if self.seeds_per_voxel < 1:
            raise ValueError(f"seeds_per_voxel must be >= 1, got {self.seeds_per_voxel}")
        if self.step_size_mm <= 0 or not 0 < self.max_angle_deg <= 90:
            raise ValueError("step_size_mm must be > 0 and max_angle_deg in (0, 90]")
        if not 0 <= self.min_length_mm < self.max_length_mm:
            raise ValueError("need 0 <= min_length_mm < max_length_mm")

    @classmethod
    def from_dict(cls, values: dict | None) -> TrackingParams:
        """Build from a (config) mapping; unknown keys raise ``ValueError``."""
        values = dict(values or {})
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown tracking parameter(s) {unknown}; expected {sorted(known)}")
        return cls(**values)

    def to_dict(self) -> dict:
        return asdict(self)


def tracking_mask(
    fa: np.ndarray,
    brain_mask: np.ndarray,
    lesion: np.ndarray | None,
    params: TrackingParams,
) -> np.ndarray:
    """Boolean mask where tracking may continue (see the module docstring)."""
    mask = np.asarray(brain_mask, bool) & (np.asarray(fa) >= params.fa_threshold)
    if lesion is not None and params.lesion_policy == "pass":
        mask |= np.asarray(brain_mask, bool) & (np.asarray(lesion) >= params.lesion_threshold)
    return mask


def _sphere():
    from dipy.data import get_sphere

    return get_sphere(name="repulsion724")


def _peaks_getter(v1: np.ndarray, fa: np.ndarray, mask: np.ndarray, max_angle: float):
    """A one-peak-per-voxel EuDX direction getter from the tensor eigenvector."""
    from dipy.direction.peaks import PeaksAndMetrics

    sphere = _sphere()
    shape = fa.shape
    dirs = np.zeros((*shape, 1, 3))
    vals = np.zeros((*shape, 1))
    idx = np.full((*shape, 1), -1, dtype=np.int32)
    v = np.asarray(v1, float)[mask]
    norm = np.linalg.norm(v, axis=1)
    ok = norm > 0
    sel = np.flatnonzero(mask.ravel())[ok]
    v = v[ok] / norm[ok, None]
    flat_dirs = dirs.reshape(-1, 3)
    flat_dirs[sel] = v
    vals.reshape(-1)[sel] = np.asarray(fa, float).ravel()[sel]
    idx.reshape(-1)[sel] = np.argmax(np.abs(v @ sphere.vertices.T), axis=1)
    pam = PeaksAndMetrics()
    pam.sphere = sphere
    pam.peak_dirs = dirs
    pam.peak_values = vals
    pam.peak_indices = idx
    pam.qa = vals
    pam.gfa = vals[..., 0]
    pam.ang_thr = float(max_angle)
    pam.qa_thr = 1e-6
    pam.total_weight = 0.5
    return pam


def _probabilistic_getter(
    v1: np.ndarray, mask: np.ndarray, max_angle: float, power: float
):
    from dipy.direction import ProbabilisticDirectionGetter

    sphere = _sphere()
    pmf = np.zeros((*mask.shape, len(sphere.vertices)), dtype=np.float64)
    v = np.asarray(v1, float)[mask]
    v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    pmf[mask] = np.abs(v @ sphere.vertices.T) ** power
    return ProbabilisticDirectionGetter.from_pmf(pmf, max_angle=max_angle, sphere=sphere)


def _peaks_from_odf(odf, max_angle: float):
    """The ODF fit's peaks as an EuDX direction getter (angle threshold set)."""
    pam = odf.peaks
    pam.ang_thr = float(max_angle)
    pam.qa_thr = 1e-6
    pam.total_weight = 0.5
    return pam


def _odf_probabilistic_getter(odf, max_angle: float):
    from dipy.direction import ProbabilisticDirectionGetter

    return ProbabilisticDirectionGetter.from_shcoeff(
        np.asarray(odf.shm_coeff, dtype=np.float64), max_angle=max_angle, sphere=odf.sphere,
        pmf_threshold=0.1,
    )


def track_tensor(
    v1: np.ndarray,
    fa: np.ndarray,
    affine: np.ndarray,
    *,
    brain_mask: np.ndarray,
    seed_mask: np.ndarray,
    lesion: np.ndarray | None = None,
    params: TrackingParams | None = None,
):
    """Whole-brain tensor tractography.

    Parameters
    ----------
    v1 : ndarray (X, Y, Z, 3)
        Principal eigenvector in the voxel-array frame (as returned by
        :func:`pipeline.dwi.tensor.fit_tensor` with a gradient table from
        :meth:`pipeline.dwi.gradtable.DwiGradients.dipy_gtab`).
    fa : ndarray (X, Y, Z)
    affine : ndarray (4, 4)
        Voxel-to-world affine of the DWI grid (isotropic voxels assumed by DIPY's
        step scaling).
    brain_mask, seed_mask : ndarray (X, Y, Z) bool
        Brain mask (bounds the tracking mask) and seeding region (normally white
        matter, lesions included).
    lesion : ndarray (X, Y, Z), optional
        Lesion probability or mask on the DWI grid (used by ``lesion_policy``).
    params : TrackingParams, optional

    Returns
    -------
    dipy.tracking.streamline.Streamlines
        Streamlines in world mm, lengths within ``[min_length_mm, max_length_mm]``.
    """
    params = params or TrackingParams()

    def getter(track):
        if params.method == "deterministic":
            return _peaks_getter(v1, np.nan_to_num(np.asarray(fa, float)), track,
                                 params.max_angle_deg)
        return _probabilistic_getter(v1, track, params.max_angle_deg, params.odf_power)

    return _track(getter, fa, affine, brain_mask=brain_mask, seed_mask=seed_mask,
                  lesion=lesion, params=params)


def track_odf(
    odf,
    fa: np.ndarray,
    affine: np.ndarray,
    *,
    brain_mask: np.ndarray,
    seed_mask: np.ndarray,
    lesion: np.ndarray | None = None,
    params: TrackingParams | None = None,
):
    """Whole-brain tractography on a CSA / CSD fit (:func:`pipeline.tract.odf.fit_odf`).

    Seeding, stopping (tensor FA and the lesion policy) and length limits are
    those of :func:`track_tensor`; ``params.odf_power`` does not apply. The fit
    must cover the tracking mask (fit it there) and be in the voxel-array frame.
    """
    params = params or TrackingParams()
    if odf.shm_coeff.shape[:3] != np.shape(fa):
        raise ValueError(f"ODF fit grid {odf.shm_coeff.shape[:3]} differs from FA {np.shape(fa)}")

    def getter(track):
        if params.method == "deterministic":
            return _peaks_from_odf(odf, params.max_angle_deg)
        return _odf_probabilistic_getter(odf, params.max_angle_deg)

    return _track(getter, fa, affine, brain_mask=brain_mask, seed_mask=seed_mask,
                  lesion=lesion, params=params)


def _track(make_getter, fa, affine, *, brain_mask, seed_mask, lesion, params: TrackingParams):
    """Seeding, stopping criterion and LocalTracking shared by every direction model."""
    from dipy.tracking import utils
    from dipy.tracking.local_tracking import LocalTracking
    from dipy.tracking.stopping_criterion import BinaryStoppingCriterion
    from dipy.tracking.streamline import Streamlines, length

    fa = np.nan_to_num(np.asarray(fa, float))
    affine = np.asarray(affine, float)
    track = tracking_mask(fa, brain_mask, lesion, params)
    seeds_in = np.asarray(seed_mask, bool) & track & (fa >= params.seed_fa_threshold)
    if lesion is not None and params.lesion_policy == "pass":
        seeds_in |= np.asarray(seed_mask, bool) & (np.asarray(lesion) >= params.lesion_threshold)
    if not seeds_in.any():
        return Streamlines()
    seeds = utils.random_seeds_from_mask(
        seeds_in,
        affine,
        seeds_count=int(params.seeds_per_voxel),
        seed_count_per_voxel=True,
        random_seed=int(params.seed),
    )
    criterion = BinaryStoppingCriterion(track.astype(np.uint8))
    vox = float(np.mean(np.sqrt((affine[:3, :3] ** 2).sum(axis=0))))
    maxlen = int(np.ceil(params.max_length_mm / params.step_size_mm)) + 2
    gen = LocalTracking(
        make_getter(track),
        criterion,
        seeds,
        affine,
        step_size=params.step_size_mm,
        maxlen=maxlen,
        minlen=max(2, int(params.min_length_mm / max(vox, 1e-6) / 4)),
        return_all=True,
        random_seed=int(params.seed),
    )
    streamlines = Streamlines(gen)
    if len(streamlines) == 0:
        return streamlines
    lengths = np.asarray(length(streamlines))
    keep = (lengths >= params.min_length_mm) & (lengths <= params.max_length_mm)
    return Streamlines([s for s, k in zip(streamlines, keep, strict=True) if k])
