"""Resting-state fMRI part of the synthetic longitudinal trial ("phantom").

Everything is generated from files shipped with installed packages (nilearn's
coordinate atlases and MNI152 tissue templates); nothing is downloaded.

Generative model
----------------
Regions.  A coordinate atlas gives ``M`` regions (MNI mm) with a network label
each.  Region ``i`` at session ``s`` has the time series

    x_i(t) = a_i f_net(i)(t) + d_i u_sys(i)(t) + c_i g(t)
             + e_s * sum_{planted (i, j)} h_ij(t) + b_is eps_i(t)

where ``f_n`` (one per network), ``u_k`` (one per large-scale system of
:data:`SYSTEMS`: sensorimotor, control, default), ``g`` (global), ``h_ij`` (one per
planted edge) and ``eps_i`` (private) are independent, band-limited (``BAND_HZ`` =
0.01-0.1 Hz, capped at the Nyquist frequency) stationary Gaussian processes of unit
variance.  The loadings ``a_i ~ sqrt(within - system - global_)`` (``sqrt(within -
global_)`` for a network in no system), ``d_i ~ sqrt(system)`` and ``c_i ~
sqrt(global_)`` (each times ``U(1 - jitter, 1 + jitter)``; regions labelled
``"unassigned"`` have ``a_i = d_i = 0``) come from :func:`network_loadings`
(defaults ``within`` 0.6, ``system`` 0.25, ``global_`` 0.05: a graded matrix, as
resting-state matrices are, Power et al. 2011), ``e_s`` is the planted effect of the
session (0 at baseline, larger at follow-up) and ``b_is`` is chosen so that every
region has unit variance at every session:

    b_is**2 = 1 - a_i**2 - d_i**2 - c_i**2 - deg_i * e_s**2,

``deg_i`` being the number of planted edges at region ``i``.  The population
covariance is therefore known exactly, is a correlation matrix and is positive
definite (as long as ``b_is**2 >= PRIVATE_VARIANCE_FLOOR``, see
:func:`max_planted_effect`):

* same network:                ``r_ij = a_i a_j + d_i d_j + c_i c_j`` (about ``within``)
* other network, same system:  ``r_ij = d_i d_j + c_i c_j``  (about ``system + global_``)
* otherwise:                   ``r_ij = c_i c_j``            (about ``global_``)
* planted edge:      the above ``+ e_s**2``; every other entry (including pairs of
  planted regions that are not a planted edge) is identical at all sessions.

Image.  A BOLD run is simulated on a scanner grid.  The head at rest is mapped to
MNI space by a caller-supplied ``to_template``; the tissue probabilities
(GM/WM/CSF) are sampled from MNI152 templates with linear interpolation.  At
volume ``t`` the head has moved rigidly by ``motion[t]``
(:func:`pipeline.motion.rigid_matrix`), so the tissue seen at scanner position
``x`` is the tissue at ``inv(M_t) @ x`` of the resting head.  With tissue
fractions ``p_gm, p_wm, p_csf`` at that point the voxel intensity is

    S = B(x) [800 p_gm (1 + s_gm) + 650 p_wm (1 + s_wm) + 1000 p_csf (1 + s_csf)]
          (1 + d(t)) (1 + m(t) E) + n(x, t) S_0

* ``B``: a smooth receive-bias field fixed in scanner space (random quadratic,
  clipped to 0.7-1.3);
* ``s_gm``: ``signal_pct/100 * x_i(t)`` if the point's MNI position lies within
  ``region_radius_mm`` of region ``i`` (the nearest such region) and
  ``p_gm > 0.2``; otherwise ``signal_pct/100 * 0.5 g(t)`` (weak global signal);
  plus a physiological component ``0.5 % * (w(t) + c(t)) / sqrt(2)``;
* ``s_wm = 0.6 % * w(t)`` and ``s_csf = 1.5 % * c(t)``: shared white-matter and CSF
  signals (``w`` band-limited like the regions, ``c`` broad-band 0.01 Hz-Nyquist,
  i.e. aliased cardiac/respiratory), independent of the region signals, so that
  WM/CSF regression removes their contamination of grey matter;
* ``d(t)``: slow drift, random linear plus quadratic, at most ``drift_pct`` %;
* ``m(t) E``: spin-history-like motion artefact, ``m(t) = -motion_artefact_pct %
  * FD[t]`` (default 3 % per mm) on volumes with ``FD > 0.3 mm``, plus half of the
  previous volume's; ``E = exp(-depth / 6 mm)`` weights the brain's periphery
  (``depth``: distance inside the template brain mask) and moves with the head;
* ``n(x, t)``: spatially smooth (Gaussian, ``smooth_noise_fwhm_mm``) white-in-time
  Gaussian noise of standard deviation ``noise_pct`` %, times the local tissue
  intensity ``S_0 = B (800 p_gm + 650 p_wm + 1000 p_csf)``.

Tissue probabilities below 0.001 count as 0, and background (no tissue) is
exactly 0.  ``noiseless=True`` drops all nuisance: the physiological signals
(``w``, ``c`` and the GM physiological component), ``n``, ``d`` and the motion
(geometric and artefact), so that the image carries only the region and
weak-global signals on the static tissue intensities.

Cost.  Tissue is sampled once for the rest pose and again only for volumes with
non-zero motion (restricted to voxels the moving brain can reach).  A 3 mm
56x66x56 grid with 150 volumes takes about 1 s without motion and about 6 s with
motion on one core.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
from numpy.typing import ArrayLike

from pipeline.motion import framewise_displacement, rigid_matrix

if TYPE_CHECKING:
    import nibabel as nib

__all__ = [
    "BAND_HZ",
    "PRIVATE_VARIANCE_FLOOR",
    "SYSTEMS",
    "BoldPhantom",
    "CoordinateAtlas",
    "band_limited_noise",
    "choose_planted_subnetwork",
    "load_coordinate_atlas",
    "load_mni_tissue_maps",
    "max_planted_effect",
    "network_loadings",
    "network_system",
    "population_correlation",
    "simulate_bold",
    "simulate_region_timeseries",
]

#: Frequency band (Hz) of all region/factor processes.
BAND_HZ: tuple[float, float] = (0.01, 0.1)
#: Smallest private variance ``b_is**2`` a region may keep.
PRIVATE_VARIANCE_FLOOR = 0.01

UNASSIGNED = "unassigned"
_POPULATION_SEED = 20_180_302  # seed of the default (population) loadings
_S0_GM, _S0_WM, _S0_CSF = 800.0, 650.0, 1000.0
_WM_PCT, _CSF_PCT, _GM_PHYSIO_PCT = 0.6, 1.5, 0.5
_WEAK_GLOBAL = 0.5
_GM_REGION_THRESHOLD = 0.2
_ARTEFACT_FD_MM = 0.3
_RIM_MM = 6.0
_MIN_TISSUE = 1e-3
_POWER_NETWORK_RADIUS_MM = 10.0

AtlasName = Literal["power", "dosenbach", "seitzman"]
Edge = tuple[int, int]


# --------------------------------------------------------------------------- atlas


@dataclass(frozen=True, eq=False)
class CoordinateAtlas:
    """Regions of a coordinate (seed) atlas.

    Attributes
    ----------
    name : str
        ``"power"``, ``"dosenbach"`` or ``"seitzman"``.
    coords : numpy.ndarray, shape (M, 3)
        Region centres, MNI mm (read-only).
    labels : tuple of str
        Unique region labels.
    networks : tuple of str
        Network of each region (``"unassigned"`` if none).
    """

    name: str
    coords: np.ndarray
    labels: tuple[str, ...]
    networks: tuple[str, ...]

    def __post_init__(self) -> None:
        coords = np.array(self.coords, dtype=float)
        if coords.ndim != 2 or coords.shape[1] != 3:
            raise ValueError(f"coords must have shape (M, 3), got {coords.shape}")
        if not len(self.labels) == len(self.networks) == coords.shape[0]:
            raise ValueError("coords, labels and networks must have the same length")
        coords.setflags(write=False)
        object.__setattr__(self, "coords", coords)
        object.__setattr__(self, "labels", tuple(str(x) for x in self.labels))
        object.__setattr__(self, "networks", tuple(str(x) for x in self.networks))

    @property
    def n_regions(self) -> int:
        """Number of regions M."""
        return len(self.labels)

    @property
    def network_names(self) -> tuple[str, ...]:
        """Sorted network names, excluding ``"unassigned"``."""
        return tuple(sorted(set(self.networks) - {UNASSIGNED}))


def load_coordinate_atlas(name: AtlasName) -> CoordinateAtlas:
    """Load a coordinate atlas shipped with nilearn (offline).

    Parameters
    ----------
    name : {"power", "dosenbach", "seitzman"}
        * ``"dosenbach"``: 160 regions (Dosenbach et al. 2010), nilearn's labels
          (e.g. ``"inf cerebellum 155"``) and networks, in nilearn's network order.
        * ``"seitzman"``: 300 regions (Seitzman et al. 2018), labels
          ``"seitzman_001"``... numbered as in the original table, nilearn's
          networks (15 regions are ``"unassigned"``).
        * ``"power"``: 264 regions (Power et al. 2011), labels ``"power_001"``...
          (the original ROI numbers).  nilearn ships no network labels for this
          atlas, so each region gets the network of the nearest Seitzman region if
          that lies within 10 mm, else ``"unassigned"`` (Seitzman's cortical
          regions are Power's, so 255 of 264 regions are matched).

    Returns
    -------
    CoordinateAtlas
    """
    if name not in ("power", "dosenbach", "seitzman"):
        raise ValueError(
            f"unknown coordinate atlas {name!r}; expected 'power', 'dosenbach' or 'seitzman'"
        )
    return _load_coordinate_atlas(name)


@functools.cache
def _load_coordinate_atlas(name: str) -> CoordinateAtlas:
    from nilearn import datasets

    if name == "dosenbach":
        bunch = datasets.fetch_coords_dosenbach_2010()
        coords = bunch.rois[["x", "y", "z"]].to_numpy(float)
        return CoordinateAtlas(name, coords, tuple(bunch.labels), tuple(bunch.networks))
    seitz = datasets.fetch_coords_seitzman_2018()
    s_coords = seitz.rois[["x", "y", "z"]].to_numpy(float)
    s_networks = tuple(str(n) for n in seitz.networks)
    if name == "seitzman":
        labels = tuple(f"seitzman_{int(i) + 1:03d}" for i in seitz.rois.index)
        return CoordinateAtlas(name, s_coords, labels, s_networks)
    from scipy.spatial import cKDTree

    power = datasets.fetch_coords_power_2011()
    coords = power.rois[["x", "y", "z"]].to_numpy(float)
    labels = tuple(f"power_{int(r):03d}" for r in power.rois["roi"])
    dist, idx = cKDTree(s_coords).query(coords)
    networks = tuple(
        s_networks[j] if d <= _POWER_NETWORK_RADIUS_MM else UNASSIGNED
        for d, j in zip(dist, idx, strict=True)
    )
    return CoordinateAtlas(name, coords, labels, networks)


def load_mni_tissue_maps(
    resolution: int = 2,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """MNI152 tissue probability maps shipped with nilearn.

    Parameters
    ----------
    resolution : int
        Voxel size in mm (nilearn's ``resolution``).

    Returns
    -------
    gm, wm, csf : numpy.ndarray, float32, 3-D
        Probabilities; ``csf = clip(brain_mask - gm - wm, 0, 1)``.
    affine : numpy.ndarray, shape (4, 4)
        Template voxel-to-MNI-mm affine.
    """
    from nilearn import datasets

    gm_img = datasets.load_mni152_gm_template(resolution=resolution)
    wm_img = datasets.load_mni152_wm_template(resolution=resolution)
    mask_img = datasets.load_mni152_brain_mask(resolution=resolution)
    gm = gm_img.get_fdata(dtype=np.float32)
    wm = wm_img.get_fdata(dtype=np.float32)
    mask = mask_img.get_fdata(dtype=np.float32)
    csf = np.clip(mask - gm - wm, 0.0, 1.0).astype(np.float32)
    return gm, wm, csf, np.asarray(gm_img.affine, dtype=float)


# --------------------------------------------------------------- population model


#: Large-scale systems grouping the atlases' networks (keywords of the normalised
#: network names; Power et al. 2011, Seitzman et al. 2020, Dosenbach et al. 2010):
#: networks of one system correlate more with each other than with the rest.
SYSTEMS: dict[str, tuple[str, ...]] = {
    "sensorimotor": ("visual", "occipital", "somatomotor", "sensorimotor", "auditory"),
    "control": ("frontoparietal", "cinguloopercular", "salience", "attention"),
    "default": ("defaultmode", "default", "medialtemporal", "parietomedial"),
}


def network_system(network: str) -> str | None:
    """The :data:`SYSTEMS` entry a network belongs to (None: reward, cerebellum, ...)."""
    key = "".join(ch for ch in network.lower() if ch.isalpha())
    for system, words in SYSTEMS.items():
        if any(w in key for w in words):
            return system
    return None


def network_loadings(
    atlas: CoordinateAtlas,
    *,
    within: float = 0.6,
    system: float = 0.25,
    global_: float = 0.05,
    jitter: float = 0.1,
    rng: np.random.Generator,
) -> np.ndarray:
    """Network, system and global factor loadings of every region.

    Three nested levels, so that the population matrix is graded as in real
    resting-state data (strong within networks, intermediate between networks of
    one large-scale system, weak elsewhere) rather than two-valued.

    Parameters
    ----------
    atlas : CoordinateAtlas
        Regions and their networks.
    within : float
        Typical population correlation of two regions of the same network.
    system : float
        Extra correlation shared by the networks of one :data:`SYSTEMS` entry: two
        regions of different networks of one system correlate at about
        ``system + global_``. 0 gives the two-level model.
    global_ : float
        Typical population correlation of two regions of unrelated networks.
    jitter : float
        Each loading is multiplied by ``U(1 - jitter, 1 + jitter)`` (region
        heterogeneity); 0 gives exactly the values above.
    rng : numpy.random.Generator
        Source of the jitter.

    Returns
    -------
    numpy.ndarray, shape (M, K + S + 1)
        Column ``k < K`` is the loading on network ``atlas.network_names[k]``
        (``sqrt(within - system - global_)`` for networks in a system, else
        ``sqrt(within - global_)``, times jitter); the next ``S`` columns the
        system loadings (``sqrt(system)``) in :data:`SYSTEMS` order; the last
        column the global loading (``sqrt(global_)``).  Regions' private variance
        at baseline is ``1 - (row ** 2).sum()``.
    """
    if not (global_ >= 0.0 and system >= 0.0 and global_ + system <= within < 1.0):
        raise ValueError(
            f"need 0 <= global_, 0 <= system, global_ + system <= within < 1, got "
            f"{global_=}, {system=}, {within=}"
        )
    if not 0.0 <= jitter < 1.0:
        raise ValueError(f"jitter must be in [0, 1), got {jitter}")
    if within * (1.0 + jitter) ** 2 > 1.0 - 2 * PRIVATE_VARIANCE_FLOOR:
        raise ValueError(
            f"within={within} with jitter={jitter} leaves no private variance; "
            "lower within or jitter"
        )
    names = atlas.network_names
    systems = list(SYSTEMS)
    n_reg, n_net = atlas.n_regions, len(names)
    loadings = np.zeros((n_reg, n_net + len(systems) + 1))
    u = rng.uniform(1.0 - jitter, 1.0 + jitter, size=(n_reg, 3))
    col = {n: k for k, n in enumerate(names)}
    for i, net in enumerate(atlas.networks):
        if net not in col:
            continue
        sys_name = network_system(net)
        own = within - global_ - (system if sys_name is not None else 0.0)
        loadings[i, col[net]] = math.sqrt(own) * u[i, 0]
        if sys_name is not None:
            loadings[i, n_net + systems.index(sys_name)] = math.sqrt(system) * u[i, 2]
    loadings[:, -1] = math.sqrt(global_) * u[:, 1]
    return loadings


def _check_edges(edges: Sequence[Edge], n_regions: int) -> tuple[Edge, ...]:
    out = []
    for e in edges:
        i, j = (int(v) for v in e)
        if i == j or not (0 <= i < n_regions and 0 <= j < n_regions):
            raise ValueError(f"invalid planted edge {e} for {n_regions} regions")
        out.append((min(i, j), max(i, j)))
    if len(set(out)) != len(out):
        raise ValueError("planted edges contain duplicates")
    return tuple(out)


def _degrees(edges: Sequence[Edge], n_regions: int) -> np.ndarray:
    deg = np.zeros(n_regions)
    for i, j in edges:
        deg[i] += 1
        deg[j] += 1
    return deg


def _private_variance(loadings: np.ndarray, edges: Sequence[Edge], effect: float) -> np.ndarray:
    loadings = np.asarray(loadings, dtype=float)
    edges = _check_edges(edges, loadings.shape[0])
    if effect < 0:
        raise ValueError(f"effect must be >= 0, got {effect}")
    b2 = 1.0 - (loadings**2).sum(axis=1) - _degrees(edges, loadings.shape[0]) * effect**2
    if np.any(b2 < PRIVATE_VARIANCE_FLOOR - 1e-12):
        raise ValueError(
            f"planted effect {effect} is too large for these loadings and edges "
            f"(maximum {max_planted_effect(loadings, edges):.4f})"
        )
    return b2


def max_planted_effect(loadings: ArrayLike, edges: Sequence[Edge]) -> float:
    """Largest planted effect ``e_s`` the model can hold with unit region variances.

    Parameters
    ----------
    loadings : array-like, shape (M, F)
        From :func:`network_loadings`.
    edges : sequence of (int, int)
        Planted edges.

    Returns
    -------
    float
        ``sqrt(min_i (b_i**2 - PRIVATE_VARIANCE_FLOOR) / deg_i)`` over planted
        regions, ``b_i**2`` the baseline private variance.  A planted edge's
        population correlation can rise by at most the square of this.
    """
    loadings = np.asarray(loadings, dtype=float)
    edges = _check_edges(edges, loadings.shape[0])
    deg = _degrees(edges, loadings.shape[0])
    if not edges:
        return math.inf
    b2 = 1.0 - (loadings**2).sum(axis=1)
    planted = deg > 0
    return float(np.sqrt(np.min((b2[planted] - PRIVATE_VARIANCE_FLOOR) / deg[planted])))


def population_correlation(loadings: ArrayLike, edges: Sequence[Edge], effect: float) -> np.ndarray:
    """Exact population correlation matrix of the region time series.

    Parameters
    ----------
    loadings : array-like, shape (M, F)
        From :func:`network_loadings`.
    edges : sequence of (int, int)
        Planted edges.
    effect : float
        Planted effect ``e_s`` of the session (0 at baseline).

    Returns
    -------
    numpy.ndarray, shape (M, M)
        ``L L^T`` with unit diagonal, plus ``effect**2`` on planted edges; positive
        definite.
    """
    loadings = np.asarray(loadings, dtype=float)
    _private_variance(loadings, edges, effect)  # validates
    corr = loadings @ loadings.T
    np.fill_diagonal(corr, 1.0)
    for i, j in _check_edges(edges, loadings.shape[0]):
        corr[i, j] += effect**2
        corr[j, i] += effect**2
    return corr


def band_limited_noise(
    n_volumes: int,
    n_series: int,
    *,
    tr: float,
    rng: np.random.Generator,
    band: tuple[float, float] = BAND_HZ,
) -> np.ndarray:
    """Independent stationary band-limited Gaussian processes of unit variance.

    White Gaussian noise is band-passed with an ideal (circular) filter keeping
    the frequencies ``band[0] <= f <= band[1]`` (capped at Nyquist) and scaled so
    that the population variance is exactly 1.

    Parameters
    ----------
    n_volumes : int
        Number of samples T.
    n_series : int
        Number of independent series.
    tr : float
        Sampling interval (s).
    rng : numpy.random.Generator
        Source of randomness.
    band : (float, float)
        Pass band in Hz.

    Returns
    -------
    numpy.ndarray, shape (T, n_series), float64
    """
    if tr <= 0:
        raise ValueError(f"tr must be > 0, got {tr}")
    freqs = np.fft.rfftfreq(n_volumes, d=tr)
    keep = (freqs >= band[0]) & (freqs <= band[1]) & (freqs > 0)
    weight = np.full(freqs.shape, 2.0)  # each bin stands for +f and -f ...
    if n_volumes % 2 == 0:
        weight[-1] = 1.0  # ... except Nyquist
    n_full = float((weight * keep).sum())
    if n_full == 0:
        raise ValueError(
            f"{n_volumes} volumes at TR {tr} s contain no frequency in {band} Hz; "
            "the run is too short"
        )
    white = rng.standard_normal((n_volumes, n_series))
    spec = np.fft.rfft(white, axis=0) * keep[:, None]
    out = np.fft.irfft(spec, n=n_volumes, axis=0)
    return out * math.sqrt(n_volumes / n_full)


def _region_model(
    loadings: np.ndarray,
    edges: tuple[Edge, ...],
    effect: float,
    n_volumes: int,
    tr: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Realised region series (T, M) and the global factor g (T,)."""
    n_reg, n_fac = loadings.shape
    b2 = _private_variance(loadings, edges, effect)
    z = band_limited_noise(n_volumes, n_fac + len(edges) + n_reg, tr=tr, rng=rng)
    factors, h, eps = z[:, :n_fac], z[:, n_fac : n_fac + len(edges)], z[:, n_fac + len(edges) :]
    x = factors @ loadings.T + eps * np.sqrt(b2)
    for k, (i, j) in enumerate(edges):
        x[:, i] += effect * h[:, k]
        x[:, j] += effect * h[:, k]
    return x, factors[:, -1]


def simulate_region_timeseries(
    loadings: ArrayLike,
    edges: Sequence[Edge],
    effect: float,
    *,
    n_volumes: int,
    tr: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Realise the region time series of the factor model (see module docstring).

    The random draws do not depend on ``effect``: the same generator state gives
    the same factors at any effect.

    Returns
    -------
    numpy.ndarray, shape (T, M)
        Unit population variance; population correlation
        :func:`population_correlation` ``(loadings, edges, effect)``.
    """
    loadings = np.asarray(loadings, dtype=float)
    edges = _check_edges(edges, loadings.shape[0])
    return _region_model(loadings, edges, float(effect), int(n_volumes), float(tr), rng)[0]


def choose_planted_subnetwork(
    atlas: CoordinateAtlas,
    *,
    n_regions: int = 10,
    n_edges: int = 15,
    rng: np.random.Generator,
    candidates: Sequence[int] | None = None,
) -> tuple[Edge, ...]:
    """Choose the planted subnetwork: a connected graph on atlas regions.

    Half of the regions (rounded up) are drawn from one network and the rest from
    a second one (a random ordered pair of networks other than ``"unassigned"``
    with enough regions; if there is none, regions are drawn from all).  The
    regions are joined by a random Hamiltonian path (so the graph is connected),
    then further edges are added between the pairs of lowest summed degree until
    there are ``n_edges`` (this keeps degrees even, which maximises
    :func:`max_planted_effect`).  Draws are repeated until the
    graph has both within-network and between-network edges (when two networks
    are used).

    Parameters
    ----------
    atlas : CoordinateAtlas
        Regions and networks.
    n_regions : int
        Number of regions in the subnetwork (exactly).
    n_edges : int
        Number of edges, ``n_regions - 1 <= n_edges <= n_regions (n_regions - 1) / 2``.
    rng : numpy.random.Generator
        Source of randomness (the result is deterministic given its state).
    candidates : sequence of int, optional
        Restrict the regions to these atlas indices (e.g. regions whose sphere
        contains enough grey matter, so the planted effect is visible).

    Returns
    -------
    tuple of (int, int)
        Sorted edges ``(i, j)`` with ``i < j`` (atlas region indices).
    """
    n, m = int(n_regions), int(n_edges)
    pool = np.arange(atlas.n_regions) if candidates is None else np.unique(candidates)
    if pool.size and (pool.min() < 0 or pool.max() >= atlas.n_regions):
        raise ValueError("candidates must be atlas region indices")
    if not 2 <= n <= pool.size:
        raise ValueError(f"n_regions must be in [2, {pool.size}], got {n}")
    if not n - 1 <= m <= n * (n - 1) // 2:
        raise ValueError(f"n_edges must be in [{n - 1}, {n * (n - 1) // 2}], got {m}")
    networks = np.array(atlas.networks)
    n_a, n_b = (n + 1) // 2, n // 2
    members = {net: pool[networks[pool] == net] for net in atlas.network_names}
    pairs = [
        (a, b)
        for a in atlas.network_names
        for b in atlas.network_names
        if a != b and members[a].size >= n_a and members[b].size >= n_b
    ]
    for _ in range(100):
        if pairs:
            net_a, net_b = pairs[int(rng.integers(len(pairs)))]
            nodes = np.concatenate(
                [
                    rng.choice(members[net_a], n_a, replace=False),
                    rng.choice(members[net_b], n_b, replace=False),
                ]
            )
        else:
            nodes = rng.choice(pool, n, replace=False)
        nodes = [int(v) for v in nodes]
        order = [nodes[k] for k in rng.permutation(n)]
        edges = {(min(a, b), max(a, b)) for a, b in itertools.pairwise(order)}
        deg = dict.fromkeys(nodes, 0)
        for a, b in edges:
            deg[a] += 1
            deg[b] += 1
        ranked = sorted(nodes)
        candidates_e = [
            (a, b) for k, a in enumerate(ranked) for b in ranked[k + 1 :] if (a, b) not in edges
        ]
        while len(edges) < m:
            score = np.array([deg[a] + deg[b] for a, b in candidates_e])
            best = np.flatnonzero(score == score.min())
            a, b = candidates_e.pop(int(rng.choice(best)))
            edges.add((a, b))
            deg[a] += 1
            deg[b] += 1
        same = [networks[a] == networks[b] for a, b in edges]
        if not pairs or (any(same) and not all(same)):
            return tuple(sorted(edges))
    raise RuntimeError("could not draw a planted subnetwork with within and between edges")


# -------------------------------------------------------------------------- image


@dataclass(frozen=True, eq=False)
class BoldPhantom:
    """One simulated resting-state BOLD run.

    Attributes
    ----------
    image : nibabel.Nifti1Image
        4-D run (float32 in memory; header data type int16, so it is written as
        int16 with ``scl_slope``), zooms ``(dx, dy, dz, TR)``, units mm and s.
    region_timeseries : numpy.ndarray, shape (T, M)
        Realised region signals ``x_i(t)``.
    population_correlation : numpy.ndarray, shape (M, M)
        Exact population correlation of the regions at this session.
    motion : numpy.ndarray, shape (T, 6)
        Rigid head motion applied (zeros without motion).
    fd : numpy.ndarray, shape (T,)
        Framewise displacement of ``motion`` (mm).
    atlas : CoordinateAtlas
        The regions.
    edges : tuple of (int, int)
        Planted edges.
    effect : float
        Planted effect ``e_s`` of this session.
    """

    image: nib.Nifti1Image
    region_timeseries: np.ndarray
    population_correlation: np.ndarray
    motion: np.ndarray
    fd: np.ndarray
    atlas: CoordinateAtlas
    edges: tuple[Edge, ...]
    effect: float


def _apply_affine(affine: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return pts @ affine[:3, :3].T + affine[:3, 3]


def _rim_map(gm: np.ndarray, wm: np.ndarray, csf: np.ndarray, voxel_mm: float) -> np.ndarray:
    """Weight (0..1) of the brain's periphery on the template grid.

    ``exp(-depth / RIM_MM)``, depth being the distance (mm) from a brain voxel to
    the nearest non-brain voxel; 0 outside the brain.
    """
    from scipy import ndimage

    brain = (gm + wm + csf) > 0.5
    depth = ndimage.distance_transform_edt(brain) * voxel_mm
    rim = np.where(brain, np.exp(-np.maximum(depth - voxel_mm, 0.0) / _RIM_MM), 0.0)
    return ndimage.gaussian_filter(rim.astype(np.float32), sigma=0.5)


def _bias_field(world: np.ndarray, grid_affine: np.ndarray, grid_shape, rng) -> np.ndarray:
    """Smooth multiplicative receive bias in scanner space (about 0.8-1.2)."""
    corners = np.array(np.meshgrid(*[[0, s - 1] for s in grid_shape], indexing="ij"))
    corners = _apply_affine(grid_affine, corners.reshape(3, -1).T.astype(float))
    centre = corners.mean(axis=0)
    half = np.maximum(np.abs(corners - centre).max(axis=0), 1e-6)
    u = (world - centre) / half
    lin = rng.uniform(-0.08, 0.08, size=3)
    quad = rng.uniform(-0.06, 0.06, size=3)
    bias = 1.0 + u @ lin + (u**2) @ quad
    return np.clip(bias, 0.7, 1.3).astype(np.float32)


def simulate_bold(
    *,
    grid_shape: Sequence[int],
    grid_affine: ArrayLike,
    to_template: Callable[[np.ndarray], np.ndarray],
    template_affine: ArrayLike,
    gm: ArrayLike,
    wm: ArrayLike,
    csf: ArrayLike,
    atlas: CoordinateAtlas,
    edges: Sequence[Edge],
    effect: float,
    n_volumes: int,
    tr: float,
    rng: np.random.Generator,
    region_radius_mm: float = 6.0,
    signal_pct: float = 2.0,
    noise_pct: float = 1.0,
    smooth_noise_fwhm_mm: float = 6.0,
    drift_pct: float = 1.0,
    motion: ArrayLike | None = None,
    motion_artefact_pct: float = 3.0,
    displace: bool = True,
    noiseless: bool = False,
    loadings: ArrayLike | None = None,
) -> BoldPhantom:
    """Simulate one resting-state BOLD run (model in the module docstring).

    Parameters
    ----------
    grid_shape : sequence of 3 int
        Voxel grid of the run.
    grid_affine : array-like, shape (4, 4)
        Voxel-to-scanner-world (RAS+ mm) affine of the grid.
    to_template : callable
        Maps (N, 3) scanner-world mm points of the head at rest (session pose) to
        (N, 3) template (MNI) mm points.
    template_affine : array-like, shape (4, 4)
        Voxel-to-MNI-mm affine of ``gm``, ``wm`` and ``csf``.
    gm, wm, csf : array-like, 3-D
        Tissue probability maps on the template grid (see
        :func:`load_mni_tissue_maps`).
    atlas : CoordinateAtlas
        Regions (MNI mm).
    edges : sequence of (int, int)
        Planted edges (:func:`choose_planted_subnetwork`).
    effect : float
        Planted effect ``e_s`` of this session (0 at baseline); at most
        :func:`max_planted_effect`.
    n_volumes : int
        Number of volumes T.
    tr : float
        Repetition time (s).
    rng : numpy.random.Generator
        Source of randomness; the same state gives identical output.
    region_radius_mm : float
        Radius of the region spheres.
    signal_pct : float
        Region signal standard deviation, % of GM intensity.
    noise_pct : float
        Standard deviation of the smooth noise, % of local intensity.
    smooth_noise_fwhm_mm : float
        FWHM of the noise smoothing kernel (0: white).
    drift_pct : float
        Maximum size of the linear + quadratic drift, %.
    motion : array-like, shape (T, 6), optional
        Rigid head motion per volume (:mod:`pipeline.motion` convention), relative
        to the rest pose seen by ``to_template``.  ``None``: no motion.
    motion_artefact_pct : float
        Spin-history-like artefact: intensity change ``-motion_artefact_pct * FD``
        (% per mm) at the brain's periphery on volumes with ``FD > 0.3`` mm.
    displace : bool
        False: ``motion`` drives only the intensity artefact and the head stays in
        place, i.e. the run as an ideal realignment would leave it (no
        interpolation); the recorded motion and FD are unchanged. For studies of
        the motion artefact that need no realignment (QC-FC); about 5 x faster.
    noiseless : bool
        Drop noise, drift, WM/CSF/GM physiological signals and motion (``motion``
        is ignored and reported as zeros).
    loadings : array-like, shape (M, F), optional
        Region factor loadings; default :func:`network_loadings` ``(atlas)`` with a
        fixed seed, i.e. the same population for every subject and session.

    Returns
    -------
    BoldPhantom
    """
    import nibabel as nib
    from scipy import ndimage
    from scipy.spatial import cKDTree

    shape = tuple(int(s) for s in grid_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"grid_shape must be 3 positive ints, got {grid_shape}")
    g_aff = np.asarray(grid_affine, dtype=float)
    t_aff = np.asarray(template_affine, dtype=float)
    if g_aff.shape != (4, 4) or t_aff.shape != (4, 4):
        raise ValueError("grid_affine and template_affine must be 4x4")
    maps = [np.asarray(a, dtype=np.float32) for a in (gm, wm, csf)]
    if any(a.ndim != 3 or a.shape != maps[0].shape for a in maps):
        raise ValueError("gm, wm and csf must be 3-D arrays of the same shape")
    # Templates carry denormal-small values far outside the brain: treat as 0.
    maps = [np.where(a < _MIN_TISSUE, np.float32(0), a) for a in maps]
    n_vol = int(n_volumes)
    if n_vol < 2:
        raise ValueError(f"n_volumes must be >= 2, got {n_volumes}")
    if tr <= 0:
        raise ValueError(f"tr must be > 0, got {tr}")
    if motion is None or noiseless:
        motion_arr = np.zeros((n_vol, 6))
    else:
        motion_arr = np.array(motion, dtype=float)
        if motion_arr.shape != (n_vol, 6):
            raise ValueError(f"motion must have shape ({n_vol}, 6), got {motion_arr.shape}")
    fd = framewise_displacement(motion_arr)
    if loadings is None:
        loadings = network_loadings(atlas, rng=np.random.default_rng(_POPULATION_SEED))
    load = np.asarray(loadings, dtype=float)
    if load.shape[0] != atlas.n_regions:
        raise ValueError(f"loadings have {load.shape[0]} rows, atlas {atlas.n_regions} regions")
    edges_t = _check_edges(edges, atlas.n_regions)
    effect = float(effect)

    # ---- time courses (drawn in a fixed order, independent of options)
    x, glob = _region_model(load, edges_t, effect, n_vol, float(tr), rng)
    pop_corr = population_correlation(load, edges_t, effect)
    wm_sig = band_limited_noise(n_vol, 1, tr=tr, rng=rng)[:, 0]
    nyquist = 0.5 / tr
    csf_sig = band_limited_noise(n_vol, 1, tr=tr, rng=rng, band=(BAND_HZ[0], nyquist))[:, 0]
    tau = np.linspace(-1.0, 1.0, n_vol)
    c_lin, c_quad = rng.uniform(-1.0, 1.0, size=2)
    drift = drift_pct / 200.0 * (c_lin * tau + c_quad * (1.5 * tau**2 - 0.5))
    art = np.where(fd > _ARTEFACT_FD_MM, -motion_artefact_pct / 100.0 * fd, 0.0)
    art[1:] += 0.5 * art[:-1]

    sig = signal_pct / 100.0
    xext = np.empty((n_vol, atlas.n_regions + 1), dtype=np.float32)
    xext[:, :-1] = sig * x
    xext[:, -1] = sig * _WEAK_GLOBAL * glob
    physio = 0.0 if noiseless else 1.0
    gm_extra = physio * _GM_PHYSIO_PCT / 100.0 * (wm_sig + csf_sig) / math.sqrt(2.0)
    wm_fac = (1.0 + physio * _WM_PCT / 100.0 * wm_sig).astype(np.float32)
    csf_fac = (1.0 + physio * _CSF_PCT / 100.0 * csf_sig).astype(np.float32)

    # ---- geometry
    world = _apply_affine(g_aff, np.indices(shape).reshape(3, -1).T.astype(float))
    bias = _bias_field(world, g_aff, shape, rng)
    t_inv = np.linalg.inv(t_aff)
    tmpl_vox = float(np.abs(np.linalg.det(t_aff[:3, :3])) ** (1.0 / 3.0))
    sample_maps = [*maps, _rim_map(*maps, tmpl_vox)]
    tree = cKDTree(atlas.coords)
    radius = float(region_radius_mm) + 1e-6
    n_lab = atlas.n_regions

    def sample(points: np.ndarray) -> tuple[np.ndarray, ...]:
        mni = np.asarray(to_template(points), dtype=float)
        if mni.shape != points.shape:
            raise ValueError(f"to_template returned shape {mni.shape}, expected {points.shape}")
        coords = _apply_affine(t_inv, mni).T
        vals = [
            ndimage.map_coordinates(m, coords, order=1, mode="constant", cval=0.0)
            for m in sample_maps
        ]
        label = np.full(points.shape[0], n_lab, dtype=np.intp)
        sel = np.flatnonzero(vals[0] > _GM_REGION_THRESHOLD)
        if sel.size:
            dist, idx = tree.query(mni[sel], distance_upper_bound=radius)
            ok = np.isfinite(dist)
            label[sel[ok]] = idx[ok]
        return (*vals, label)

    rest = sample(world)
    brain = (rest[0] + rest[1] + rest[2]) > 0
    moving = np.any(motion_arr != 0, axis=1) & bool(displace)
    if moving.any():
        # Largest displacement of any grid point (attained at a corner of the box).
        corners = np.array(np.meshgrid(*[[0, s - 1] for s in shape], indexing="ij"))
        corners = _apply_affine(g_aff, corners.reshape(3, -1).T.astype(float))
        mats = rigid_matrix(motion_arr)
        disp = np.einsum("tij,cj->tci", mats[:, :3, :3], corners) + mats[:, None, :3, 3]
        max_disp = float(np.linalg.norm(disp - corners[None], axis=2).max())
        vox_min = float(np.linalg.norm(g_aff[:3, :3], axis=0).min())
        brain = ndimage.binary_dilation(
            brain.reshape(shape), iterations=math.ceil(max_disp / vox_min) + 1
        ).ravel()
    active = np.flatnonzero(brain)
    world_a = world[active]
    bias_a = bias[active]
    rest_a = tuple(v[active] for v in rest)

    zooms = np.linalg.norm(g_aff[:3, :3], axis=0)
    use_noise = not noiseless and noise_pct > 0
    if use_noise:
        sigma = smooth_noise_fwhm_mm / math.sqrt(8.0 * math.log(2.0)) / zooms
        delta = np.zeros([2 * math.ceil(4 * s) + 1 for s in sigma], dtype=np.float64)
        delta[tuple(d // 2 for d in delta.shape)] = 1.0
        kernel = ndimage.gaussian_filter(delta, sigma, mode="constant")
        noise_scale = noise_pct / 100.0 / math.sqrt(float((kernel**2).sum()))

    out = np.zeros((world.shape[0], n_vol), dtype=np.float32)
    for t in range(n_vol):
        if moving[t]:
            inv_m = np.linalg.inv(rigid_matrix(motion_arr[t]))
            p_gm, p_wm, p_csf, rim, label = sample(_apply_affine(inv_m, world_a))
        else:
            p_gm, p_wm, p_csf, rim, label = rest_a
        s_gm = xext[t, label] + np.float32(gm_extra[t])
        s0_gm, s0_wm, s0_csf = _S0_GM * p_gm, _S0_WM * p_wm, _S0_CSF * p_csf
        val = bias_a * (s0_gm * (1.0 + s_gm) + s0_wm * wm_fac[t] + s0_csf * csf_fac[t])
        if not noiseless:
            val *= np.float32(1.0 + drift[t])
            if art[t] != 0:
                val *= 1.0 + np.float32(art[t]) * rim
            if use_noise:
                field = rng.standard_normal(shape, dtype=np.float32)
                if smooth_noise_fwhm_mm > 0:
                    field = ndimage.gaussian_filter(field, sigma, mode="constant")
                noise = field.ravel()[active] * np.float32(noise_scale)
                val += noise * bias_a * (s0_gm + s0_wm + s0_csf)
        out[active, t] = val

    img = nib.Nifti1Image(out.reshape(*shape, n_vol), g_aff)
    img.header.set_data_dtype(np.int16)
    img.header.set_xyzt_units("mm", "sec")
    img.header.set_zooms((*(float(z) for z in zooms), float(tr)))
    img.header.set_qform(g_aff, code=1)
    img.header.set_sform(g_aff, code=1)
    return BoldPhantom(
        image=img,
        region_timeseries=x,
        population_correlation=pop_corr,
        motion=motion_arr,
        fd=fd,
        atlas=atlas,
        edges=edges_t,
        effect=effect,
    )
