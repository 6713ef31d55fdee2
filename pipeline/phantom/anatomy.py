"""Anatomical model of the synthetic longitudinal MS trial.

Everything is defined in MNI152 2009 template space from the maps that ship with
nilearn (T1 template, GM / WM probability maps, brain mask), then carried into
each subject and session by an explicit, invertible chain of transforms::

    scanner (session) --pose--> subject native --deformation--> template (MNI mm)

* ``RigidPose``: head position of one session (rotations of a few degrees,
  translations of a few mm), so every session needs registration.
* ``SmoothDeformation``: per-subject anisotropic scaling plus a smooth sum of
  sinusoids (a few mm), so that affine registration alone is not enough.
* ``Lesion``: soft-edged ellipsoids placed in white matter at periventricular,
  deep, juxtacortical and infratentorial locations (defined in template space,
  evaluated analytically at any point, so masks are exact on every grid).
* ``tract_field``: anatomically placed fibre bundles (CST, optic radiations,
  corpus callosum) as tubes around spline centre lines, with their tangent as
  the fibre orientation; smooth plausible orientations elsewhere in WM.

Nothing here reads or writes files except the template loaders (nilearn's
packaged data, offline).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from pipeline.motion import rigid_matrix

__all__ = [
    "CC_SEGMENTS",
    "LESION_CLASSES",
    "TRACTS",
    "Lesion",
    "RigidPose",
    "SmoothDeformation",
    "Template",
    "TractField",
    "apply_affine",
    "grid_points",
    "lesion_probability",
    "load_template",
    "place_lesions",
    "polar_rotation",
    "sample_template",
    "tract_field",
]

LESION_CLASSES = ("periventricular", "deep", "juxtacortical", "infratentorial")
#: Bundles modelled by the phantom, in priority order where they overlap.
TRACTS = ("CST_L", "CST_R", "OR_L", "OR_R", "CC")
#: Callosal segments (truth of the callosal sub-bundles) by where a fibre crosses the
#: midline: (name, lowest y, highest y) in MNI mm. The boundaries follow Hofer & Frahm
#: 2006 (NeuroImage 32:989-994) on the template's callosum, whose midline white matter
#: spans y = -43 .. +33 mm: region I (anterior sixth, prefrontal: the genu and forceps
#: minor) from y = 20.3, region V (posterior quarter, parietal / temporal / occipital:
#: the splenium and forceps major) up to y = -24, regions II-IV (the body) between.
#: configs/tracts.yaml defines the sub-bundles with the same boundaries.
CC_SEGMENTS = (
    ("ForcepsMinor", 20.3, np.inf),
    ("CC_Body", -24.0, 20.3),
    ("ForcepsMajor", -np.inf, -24.0),
)

#: MNI-space point that the scanner isocentre maps to (roughly the brain centre).
ISOCENTRE_MNI = np.array([0.0, -18.0, 12.0])


def apply_affine(affine: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 4x4 affine to an (N, 3) array of points."""
    return points @ affine[:3, :3].T + affine[:3, 3]


def grid_points(shape: Sequence[int], affine: np.ndarray) -> np.ndarray:
    """World coordinates (N, 3) of every voxel centre of a grid, C order."""
    ijk = np.indices(tuple(shape[:3]), dtype=np.float32).reshape(3, -1).T
    return apply_affine(affine.astype(np.float64), ijk).astype(np.float64)


def polar_rotation(mats: np.ndarray) -> np.ndarray:
    """Closest rotation (polar decomposition) of each 3x3 matrix in ``mats``."""
    u, _, vt = np.linalg.svd(mats)
    r = u @ vt
    # guard against reflections (never expected for our smooth maps)
    det = np.linalg.det(r)
    if np.any(det < 0):
        u[det < 0, :, -1] *= -1
        r = u @ vt
    return r


# --------------------------------------------------------------------------- template


@dataclass(frozen=True, eq=False)
class Template:
    """Tissue maps of the MNI152 2009 template on its own grid.

    Attributes
    ----------
    affine : ndarray (4, 4)
        Voxel-to-MNI-mm affine.
    maps : dict
        float32 maps: ``gm``, ``wm``, ``csf`` (tissue probabilities summing to the
        brain mask), ``skull`` and ``scalp`` (synthetic head shells, probability
        0..1), ``brain`` (0/1), ``ventricles`` (0/1), ``cortex`` (0/1, cortical GM).
    """

    affine: np.ndarray
    maps: dict[str, np.ndarray]
    resolution: int

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.maps["gm"].shape

    @functools.cached_property
    def inv_affine(self) -> np.ndarray:
        return np.linalg.inv(self.affine)

    @functools.cached_property
    def world(self) -> np.ndarray:
        """MNI coordinates of every voxel, shape (X, Y, Z, 3)."""
        return grid_points(self.shape, self.affine).reshape(*self.shape, 3)

    @functools.cached_property
    def distances(self) -> dict[str, np.ndarray]:
        """Euclidean distance (mm) to the ventricles and to cortical GM."""
        from scipy import ndimage

        vox = float(self.resolution)
        return {
            "ventricles": ndimage.distance_transform_edt(self.maps["ventricles"] == 0) * vox,
            "cortex": ndimage.distance_transform_edt(self.maps["cortex"] == 0) * vox,
        }


def _in_box(world: np.ndarray, lo: Sequence[float], hi: Sequence[float]) -> np.ndarray:
    return np.all((world >= np.asarray(lo)) & (world <= np.asarray(hi)), axis=-1)


@functools.lru_cache(maxsize=2)
def load_template(resolution: int = 2) -> Template:
    """Load the MNI152 2009 template maps shipped with nilearn (no download).

    CSF is the brain mask minus GM and WM. Skull and scalp are synthetic shells
    at 3-8 mm and 8-13 mm outside the brain mask so that brain extraction is a
    genuine problem. Tissue fractions are the template's, sharpened (squared and
    renormalised) to a single subject's boundary width. Ventricles and cortical GM come from
    :func:`pipeline.templates.load_mni_template` (definitions there): ventricles
    are CSF > 0.5 inside a box around the lateral and third ventricles; cortical
    GM is GM > 0.5 outside a deep-grey-matter box.
    """
    from scipy import ndimage

    from pipeline.templates import load_mni_template

    tpl = load_mni_template(resolution)  # raises ValueError unless resolution is 1 or 2
    affine = np.array(tpl.affine, dtype=np.float64)
    brain = tpl.brain.astype(np.float32)

    outside = ndimage.distance_transform_edt(brain == 0) * resolution
    skull = ((outside > 3) & (outside <= 8)).astype(np.float32)
    scalp = ((outside > 8) & (outside <= 13)).astype(np.float32)
    skull = ndimage.gaussian_filter(skull, 0.6 / resolution * 1.5)
    scalp = ndimage.gaussian_filter(scalp, 0.6 / resolution * 1.5)

    # One person's tissue boundaries are sharper than those of the 152-subject average:
    # sharpen the fractions (p**2, renormalised to the brain mask) so that the phantom's
    # partial-volume band is about one voxel, as in a single subject.
    frac = np.stack([tpl.gm, tpl.wm, tpl.csf]).astype(np.float32) ** 2
    total = frac.sum(axis=0)
    frac = np.where(total > 0, frac / np.where(total > 0, total, 1), 0) * brain
    maps = {
        "gm": frac[0],
        "wm": frac[1],
        "csf": frac[2],
        "brain": brain,
        "skull": skull.astype(np.float32),
        "scalp": scalp.astype(np.float32),
        "ventricles": tpl.ventricles.astype(np.float32),
        "cortex": tpl.cortex.astype(np.float32),
    }
    return Template(affine=affine, maps=maps, resolution=resolution)


def sample_template(
    template_affine_inv: np.ndarray,
    volume: np.ndarray,
    points_mni: np.ndarray,
    *,
    order: int = 1,
) -> np.ndarray:
    """Sample a template-grid volume at MNI points (N, 3); zero outside."""
    from scipy import ndimage

    ijk = apply_affine(template_affine_inv, points_mni).T
    return ndimage.map_coordinates(volume, ijk, order=order, mode="constant", cval=0.0)


# --------------------------------------------------------------------------- transforms


@dataclass(frozen=True)
class RigidPose:
    """Head position of one session: scanner mm -> subject native mm.

    ``native = R @ scanner + t + ISOCENTRE``, where ``R, t`` come from
    :func:`pipeline.motion.rigid_matrix` of ``params`` (tx, ty, tz in mm,
    rx, ry, rz in radians).
    """

    params: tuple[float, float, float, float, float, float]

    @property
    def matrix(self) -> np.ndarray:
        m = rigid_matrix(np.asarray(self.params, dtype=float))
        m[:3, 3] += ISOCENTRE_MNI
        return m

    def __call__(self, points: np.ndarray) -> np.ndarray:
        return apply_affine(self.matrix, points)

    @classmethod
    def random(
        cls, rng: np.random.Generator, *, max_rotation_deg: float = 4.0, max_shift_mm: float = 4.0
    ) -> RigidPose:
        rot = np.deg2rad(rng.uniform(-max_rotation_deg, max_rotation_deg, 3))
        shift = rng.uniform(-max_shift_mm, max_shift_mm, 3)
        return cls(tuple(float(v) for v in (*shift, *rot)))


@dataclass(frozen=True)
class SmoothDeformation:
    """Subject native mm -> template mm: ``p = S (y - c) + c + sum_k a_k sin(w_k . y + phi_k)``.

    ``S`` is a diagonal scaling about the isocentre ``c`` (head-size variation);
    the sinusoids give a smooth non-linear warp of a few millimetres.
    """

    scales: tuple[float, float, float]
    wavevectors: np.ndarray = field(repr=False)  # (K, 3) rad / mm
    phases: np.ndarray = field(repr=False)  # (K,)
    amplitudes: np.ndarray = field(repr=False)  # (K, 3) mm

    def __call__(self, points: np.ndarray) -> np.ndarray:
        c = ISOCENTRE_MNI
        out = (points - c) * np.asarray(self.scales) + c
        arg = points @ self.wavevectors.T + self.phases  # (N, K)
        out += np.sin(arg) @ self.amplitudes
        return out

    def jacobian(self, points: np.ndarray) -> np.ndarray:
        """d(template) / d(native) at each point, shape (N, 3, 3)."""
        cos = np.cos(points @ self.wavevectors.T + self.phases)  # (N, K)
        # J_ij = S_ij + sum_k a_ki cos_k w_kj
        jac = np.einsum("nk,ki,kj->nij", cos, self.amplitudes, self.wavevectors)
        jac += np.diag(self.scales)
        return jac

    def inverse(self, points: np.ndarray, *, n_iter: int = 30) -> np.ndarray:
        """Native points whose image is ``points`` (Newton iterations)."""
        y = (points - ISOCENTRE_MNI) / np.asarray(self.scales) + ISOCENTRE_MNI
        for _ in range(n_iter):
            resid = self(y) - points
            if np.max(np.abs(resid)) < 1e-6:
                break
            y = y - np.linalg.solve(self.jacobian(y), resid[..., None])[..., 0]
        return y

    @property
    def max_displacement_mm(self) -> float:
        return float(np.abs(self.amplitudes).sum(axis=0).max())

    @classmethod
    def random(
        cls,
        rng: np.random.Generator,
        *,
        n_components: int = 8,
        amplitude_mm: float = 3.0,
        wavelength_mm: tuple[float, float] = (90.0, 170.0),
        scale_range: float = 0.06,
    ) -> SmoothDeformation:
        dirs = rng.normal(size=(n_components, 3))
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        lam = rng.uniform(*wavelength_mm, n_components)
        wavevectors = dirs * (2 * np.pi / lam)[:, None]
        amps = rng.normal(size=(n_components, 3))
        amps *= amplitude_mm / np.abs(amps).sum(axis=0).max()
        scales = tuple(float(s) for s in 1 + rng.uniform(-scale_range, scale_range, 3))
        return cls(
            scales=scales,
            wavevectors=wavevectors,
            phases=rng.uniform(0, 2 * np.pi, n_components),
            amplitudes=amps,
        )

    def to_dict(self) -> dict:
        return {
            "model": "p = S (y - c) + c + sum_k a_k sin(w_k . y + phi_k)",
            "isocentre_mni": ISOCENTRE_MNI.tolist(),
            "scales": list(self.scales),
            "wavevectors_rad_per_mm": self.wavevectors.tolist(),
            "phases_rad": self.phases.tolist(),
            "amplitudes_mm": self.amplitudes.tolist(),
        }


def compose(pose: RigidPose, deformation: SmoothDeformation) -> Callable[[np.ndarray], np.ndarray]:
    """Scanner mm -> template mm for one subject-session."""

    def to_template(points: np.ndarray) -> np.ndarray:
        return deformation(pose(points))

    return to_template


# --------------------------------------------------------------------------- lesions


@dataclass(frozen=True)
class Lesion:
    """A soft-edged ellipsoidal lesion defined in template (MNI) space."""

    centre_mni: tuple[float, float, float]
    radii_mm: tuple[float, float, float]
    rotation: tuple[tuple[float, ...], ...]  # 3x3, columns are the ellipsoid axes
    location: str
    first_session: int = 0  # index of the first session where the lesion exists

    @property
    def volume_mm3(self) -> float:
        """Template-space volume of the ellipsoid."""
        return float(4 / 3 * np.pi * np.prod(self.radii_mm))

    def normalised_radius(self, points_mni: np.ndarray) -> np.ndarray:
        local = (points_mni - np.asarray(self.centre_mni)) @ np.asarray(self.rotation)
        return np.sqrt(np.sum((local / np.asarray(self.radii_mm)) ** 2, axis=1))

    def to_dict(self) -> dict:
        return {
            "centre_mni": list(self.centre_mni),
            "radii_mm": list(self.radii_mm),
            "rotation": [list(r) for r in self.rotation],
            "location": self.location,
            "first_session": self.first_session,
            "template_volume_mm3": self.volume_mm3,
        }


#: Edge width of the lesion's soft boundary (mm).
LESION_EDGE_MM = 0.4


def lesion_probability(
    points_mni: np.ndarray, lesions: Sequence[Lesion], session_index: int
) -> np.ndarray:
    """Soft lesion occupancy (0..1) at MNI points for one session."""
    prob = np.zeros(len(points_mni), dtype=np.float32)
    for les in lesions:
        if les.first_session > session_index:
            continue
        lo = np.asarray(les.centre_mni) - max(les.radii_mm) - 3
        hi = np.asarray(les.centre_mni) + max(les.radii_mm) + 3
        near = np.all((points_mni >= lo) & (points_mni <= hi), axis=1)
        if not near.any():
            continue
        r = les.normalised_radius(points_mni[near])
        mean_r = float(np.mean(les.radii_mm))
        p = 1.0 / (1.0 + np.exp(np.clip((r - 1.0) * mean_r / LESION_EDGE_MM, -50, 50)))
        prob[near] = np.maximum(prob[near], p.astype(np.float32))
    return prob


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q *= np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] *= -1
    return q


def _candidate_centres(template: Template, location: str) -> np.ndarray:
    """MNI coordinates of voxels where a lesion of the given class may be centred.

    Definitions (used again, on the subject's own images, by the structural stage):

    * periventricular: WM within 2-5 mm of the lateral ventricles;
    * juxtacortical: WM within 2-4 mm of cortical GM, above the tentorium;
    * deep: WM more than 10 mm from the ventricles and 8 mm from the cortex;
    * infratentorial: brainstem / cerebellar-peduncle WM (MNI z < -20 mm).
    """
    m, d, w = template.maps, template.distances, template.world
    wm = m["wm"]
    z = w[..., 2]
    supra = z > -5
    if location == "periventricular":
        sel = (wm > 0.8) & (d["ventricles"] >= 2) & (d["ventricles"] <= 5) & supra
    elif location == "juxtacortical":
        sel = (wm > 0.7) & (d["cortex"] >= 2) & (d["cortex"] <= 4) & supra & (z > 5)
    elif location == "deep":
        sel = (wm > 0.95) & (d["ventricles"] > 10) & (d["cortex"] > 8) & supra
    elif location == "infratentorial":
        # brainstem and middle cerebellar peduncles only: lateral points further forward
        # lie in medial temporal white matter, above the tentorium
        box = _in_box(w, (-15, -50, -50), (15, -15, -20)) | _in_box(
            w, (-25, -50, -50), (25, -35, -20)
        )
        sel = (wm > 0.8) & (z < -20) & box
    else:
        raise ValueError(f"unknown lesion location {location!r}; expected one of {LESION_CLASSES}")
    return w[sel]


def place_lesions(
    template: Template,
    rng: np.random.Generator,
    *,
    n_lesions: int,
    new_lesion_session: int | None = None,
    radius_range_mm: tuple[float, float] = (1.5, 5.5),
) -> tuple[Lesion, ...]:
    """Place ``n_lesions`` non-overlapping white-matter lesions.

    Locations cycle through the four classes with proportions close to those of
    MS (40 % periventricular, 25 % deep, 20 % juxtacortical, 15 %
    infratentorial), each class present when ``n_lesions >= 4``. Lesions in
    the infratentorial and juxtacortical classes are kept smaller. If
    ``new_lesion_session`` is given, one extra deep/periventricular lesion
    appears from that session on.
    """
    base = ["periventricular", "deep", "juxtacortical", "infratentorial"]
    weights = np.array([0.40, 0.25, 0.20, 0.15])
    classes = base[: min(4, n_lesions)] + list(
        rng.choice(base, size=max(0, n_lesions - 4), p=weights)
    )
    if new_lesion_session is not None:
        classes.append("deep")
    lesions: list[Lesion] = []
    for i, loc in enumerate(classes):
        cands = _candidate_centres(template, loc)
        small = loc in ("infratentorial", "juxtacortical")
        hi = radius_range_mm[1] * (0.6 if small else 1.0)
        for _attempt in range(200):
            centre = cands[rng.integers(len(cands))] + rng.uniform(-0.5, 0.5, 3)
            radii = rng.uniform(radius_range_mm[0], hi, 3)
            if loc == "juxtacortical":
                radii = np.minimum(radii, 2.5)
            clear = all(
                np.linalg.norm(centre - np.asarray(o.centre_mni)) > max(radii) + max(o.radii_mm) + 3
                for o in lesions
            )
            if clear:
                break
        else:  # pragma: no cover - only for absurd lesion counts
            raise RuntimeError(f"could not place {n_lesions} non-overlapping lesions")
        first = (
            new_lesion_session if (new_lesion_session is not None and i == len(classes) - 1) else 0
        )
        lesions.append(
            Lesion(
                centre_mni=tuple(float(v) for v in centre),
                radii_mm=tuple(float(v) for v in radii),
                rotation=tuple(tuple(float(v) for v in row) for row in _random_rotation(rng)),
                location=str(loc),
                first_session=int(first),
            )
        )
    return tuple(lesions)


# --------------------------------------------------------------------------- tracts

# Centre lines in MNI152 mm, from standard atlas anatomy (Mori et al., MRI Atlas of
# Human White Matter, 2005; Catani & Thiebaut de Schotten, Cortex 2008): the CST
# descends from the precentral gyrus through the corona radiata, the posterior
# limb of the internal capsule, the cerebral peduncle and the pons to the
# medulla; the optic radiation runs from the lateral geniculate nucleus round
# Meyer's loop, along the lateral wall of the ventricle's atrium, to the
# occipital pole; the corpus callosum crosses the midline left-right with
# its genu (forceps minor) curving forward and its splenium (forceps major)
# curving backward.
_CST_LEFT = [
    (-36, -22, 62),
    (-30, -19, 44),
    (-25, -16, 28),
    (-21, -14, 12),
    (-18, -15, 0),
    (-13, -19, -12),
    (-9, -25, -26),
    (-6, -32, -38),
    (-4, -38, -48),
]
_OR_LEFT = [
    (-22, -26, -5),
    (-30, -20, -9),
    (-36, -28, -5),
    (-35, -45, 0),
    (-30, -64, 3),
    (-22, -82, 4),
    (-14, -96, 6),
]
TRACT_RADIUS_MM = {"CST_L": 3.5, "CST_R": 3.5, "OR_L": 3.0, "OR_R": 3.0, "CC": 3.0}


def _mirror(points: Sequence[Sequence[float]]) -> np.ndarray:
    arr = np.asarray(points, dtype=float)
    arr[:, 0] *= -1
    return arr


def _spline(control: np.ndarray, step_mm: float = 0.5) -> np.ndarray:
    """Dense points along a smooth interpolating curve through control points."""
    from scipy.interpolate import CubicSpline

    seg = np.linalg.norm(np.diff(control, axis=0), axis=1)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    cs = CubicSpline(s, control, axis=0, bc_type="natural")
    return cs(np.arange(0.0, s[-1] + 1e-9, step_mm))


#: Midline positions (MNI y, mm) of the phantom's callosal fibres, one line each.
CALLOSAL_Y0 = np.arange(-40, 30.1, 2.0)


def _callosal_lines() -> list[np.ndarray]:
    """Left-right fibres of the corpus callosum, one per midline position."""
    lines = []
    # midline profile of the callosum (y, z) from genu to splenium
    mid_y = np.array([30, 22, 10, 0, -12, -24, -34, -40])
    mid_z = np.array([8, 18, 22, 23, 23, 20, 14, 8])
    for y0 in CALLOSAL_Y0:
        z0 = float(np.interp(y0, mid_y[::-1], mid_z[::-1]))  # np.interp needs increasing x
        x = np.arange(-28, 28.01, 0.5)
        u = np.abs(x) / 28.0
        if y0 > 18:  # genu: forceps minor curves forward
            y = y0 + 12 * u**2
            z = z0 + 4 * u**2
        elif y0 < -30:  # splenium: forceps major curves backward
            y = y0 - 14 * u**2
            z = z0 + 4 * u**2
        else:  # body: fibres rise into the centrum semiovale
            y = np.full_like(x, y0)
            z = z0 + 14 * u**2
        lines.append(np.column_stack([x, y, z]))
    return lines


#: Search for each bundle's white-matter fit: (direction of the offset, lowest and highest
#: offset in mm). The callosal body arches over the lateral ventricles (offsets upward);
#: the optic radiation runs lateral to the atrium (offsets outward).
_WM_FIT = {
    "CC": ((0.0, 0.0, 1.0), -4.0, 14.0),
    "OR_L": ((-1.0, 0.0, 0.0), -2.0, 8.0),
    "OR_R": ((1.0, 0.0, 0.0), -2.0, 8.0),
}


def fit_to_white_matter(
    line: np.ndarray,
    template: Template,
    direction: Sequence[float],
    lo: float,
    hi: float,
    *,
    radius_mm: float = 3.0,
    step_mm: float = 0.5,
    smooth_mm: float = 3.0,
) -> np.ndarray:
    """Shift a centre line along ``direction`` so that its tube lies in template WM.

    The hand-placed centre lines follow atlas anatomy at the scale of centimetres;
    at the template's 2 mm scale a tube of ``radius_mm`` around them can cut
    through the ventricles or deep grey matter, where a phantom voxel holds no
    fibre. For every point the offset in ``[lo, hi]`` mm maximising the WM
    probability averaged over ``+- radius_mm`` along ``direction`` (minus a small
    penalty on the offset) is taken; the offsets are then smoothed along the line.
    """
    from scipy.ndimage import gaussian_filter1d

    d = np.asarray(direction, dtype=float)
    d /= np.linalg.norm(d)
    offsets = np.arange(lo, hi + 1e-9, step_mm)
    pts = line[:, None, :] + offsets[None, :, None] * d
    wm = sample_template(template.inv_affine, template.maps["wm"], pts.reshape(-1, 3))
    wm = wm.reshape(len(line), len(offsets))
    k = max(1, round(radius_mm / step_mm))
    kernel = np.ones(2 * k + 1) / (2 * k + 1)
    mean_wm = np.stack([np.convolve(row, kernel, mode="same") for row in wm])
    best = offsets[np.argmax(mean_wm - 0.01 * np.abs(offsets)[None, :], axis=1)]
    spacing = float(np.median(np.linalg.norm(np.diff(line, axis=0), axis=1))) or 1.0
    best = gaussian_filter1d(best, smooth_mm / spacing, mode="nearest")
    return line + best[:, None] * d


def tract_centrelines(template: Template | None = None) -> dict[str, list[np.ndarray]]:
    """Dense centre-line points of every modelled bundle (MNI mm).

    With ``template``, the callosal and optic-radiation lines are fitted to its
    white matter (:func:`fit_to_white_matter`).
    """
    lines = {
        "CST_L": [_spline(np.asarray(_CST_LEFT, dtype=float))],
        "CST_R": [_spline(_mirror(_CST_LEFT))],
        "OR_L": [_spline(np.asarray(_OR_LEFT, dtype=float))],
        "OR_R": [_spline(_mirror(_OR_LEFT))],
        "CC": _callosal_lines(),
    }
    if template is not None:
        for name, (direction, lo, hi) in _WM_FIT.items():
            lines[name] = [fit_to_white_matter(line, template, direction, lo, hi,
                                               radius_mm=TRACT_RADIUS_MM[name])
                           for line in lines[name]]
    return lines


@dataclass(frozen=True, eq=False)
class TractField:
    """Bundle labels and fibre orientation on the template grid.

    ``labels`` holds 0 outside bundles and ``1 + TRACTS.index(name)`` inside,
    with earlier bundles in :data:`TRACTS` winning where tubes overlap (a single
    tensor per voxel cannot represent a crossing). ``orientation`` (X, Y, Z, 3)
    is the unit fibre direction in MNI space: the bundle tangent inside
    bundles, a smooth field elsewhere. ``cc_segment`` holds, in callosal
    voxels, ``1 + k`` for the segment ``CC_SEGMENTS[k]`` where the voxel's
    nearest callosal fibre crosses the midline (0 elsewhere).
    """

    labels: np.ndarray
    orientation: np.ndarray
    cc_segment: np.ndarray

    def mask(self, name: str) -> np.ndarray:
        return self.labels == TRACTS.index(name) + 1


@functools.lru_cache(maxsize=2)
def tract_field(resolution: int = 2, seed: int = 7) -> TractField:
    """Build the template-space bundle labels and orientation field (cached)."""
    from scipy import ndimage
    from scipy.spatial import cKDTree

    tpl = load_template(resolution)
    shape = tpl.shape
    world = tpl.world.reshape(-1, 3)
    wm_like = (tpl.maps["wm"] + 0.5 * tpl.maps["gm"]).reshape(-1) > 0.5

    # smooth, plausible background orientation: a random field smoothed over ~8 mm
    rng = np.random.default_rng(seed)
    sigma = 8.0 / resolution
    bg = np.stack(
        [ndimage.gaussian_filter(rng.normal(size=shape), sigma) for _ in range(3)], axis=-1
    ).reshape(-1, 3)
    orientation = bg / np.maximum(np.linalg.norm(bg, axis=1, keepdims=True), 1e-12)
    labels = np.zeros(len(world), dtype=np.uint8)

    lines = tract_centrelines(tpl)
    cc_segment = np.zeros(len(world), dtype=np.uint8)
    y0 = CALLOSAL_Y0
    line_segment = 1 + np.select([y0 >= lo for _, lo, _ in CC_SEGMENTS], range(3), 2)
    for name in reversed(TRACTS):  # lowest priority first, overwritten by higher ones
        pts = np.concatenate(lines[name])
        tangents = np.concatenate([np.gradient(line, axis=0) for line in lines[name]])
        tangents /= np.linalg.norm(tangents, axis=1, keepdims=True)
        radius = TRACT_RADIUS_MM[name]
        lo, hi = pts.min(0) - radius - 1, pts.max(0) + radius + 1
        box = np.flatnonzero(np.all((world >= lo) & (world <= hi), axis=1) & wm_like)
        dist, idx = cKDTree(pts).query(world[box], distance_upper_bound=radius)
        inside = np.isfinite(dist)
        labels[box[inside]] = TRACTS.index(name) + 1
        orientation[box[inside]] = tangents[idx[inside]]
        if name == "CC":
            line_of_point = np.repeat(np.arange(len(lines[name])), [len(x) for x in lines[name]])
            cc_segment[box[inside]] = line_segment[line_of_point[idx[inside]]]
        else:  # a bundle drawn later wins the voxel
            cc_segment[box[inside]] = 0
    return TractField(
        labels=labels.reshape(shape),
        orientation=orientation.reshape(*shape, 3).astype(np.float32),
        cc_segment=cc_segment.reshape(shape),
    )
