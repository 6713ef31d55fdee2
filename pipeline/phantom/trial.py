"""The synthetic longitudinal trial: subjects, sessions, images and ground truth.

:class:`PhantomSpec` holds every generation parameter (two presets: ``tiny``
for tests, ``trial`` for the demo). :func:`make_subject` draws one subject's
anatomy (deformation, lesions, head positions, demographics) and
:func:`simulate_session` produces that subject-session's images (T1w, FLAIR,
DWI, resting-state BOLD) and ground truth, all in memory; writing them as BIDS
is the job of ``workflows.synth``.

Randomness: every draw uses a generator seeded by ``(seed, subject, session,
stream)`` so that each file is reproducible on its own, whatever the order of
generation.
"""

from __future__ import annotations

import dataclasses
import functools
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import nibabel as nib
import numpy as np

from pipeline.motion import simulate_motion_trace
from pipeline.phantom.anatomy import (
    Lesion,
    RigidPose,
    SmoothDeformation,
    apply_affine,
    grid_points,
    lesion_probability,
    load_template,
    place_lesions,
    sample_template,
    tract_field,
)

__all__ = [
    "PRESETS",
    "PhantomSpec",
    "SessionPhantom",
    "SubjectModel",
    "acquisition_grid",
    "bias_field",
    "make_subject",
    "rng_for",
    "simulate_acquisition",
    "simulate_session",
    "simulate_session_bold",
    "simulate_structural",
]


@dataclass(frozen=True)
class PhantomSpec:
    """Every parameter of the synthetic trial.

    Sizes are in mm, times in seconds, diffusivities in mm^2/s, b-values in
    s/mm^2. ``rd_change`` gives, per session, the relative change of the radial
    diffusivity of left-hemisphere normal-appearing white matter (negative =
    decrease); ``bold_effect`` gives, per session, the strength of the planted
    connectivity increase (0 = none).
    """

    n_subjects: int = 5
    sessions: tuple[str, ...] = ("baseline", "m03", "m06")
    session_months: tuple[float, ...] = (0.0, 3.0, 6.0)
    seed: int = 20251125
    template_resolution: int = 1
    # structural
    t1_voxel_mm: float = 1.5
    flair_voxel_mm: float = 1.5
    t1_noise: float = 0.025  # noise SD relative to the white-matter intensity
    bias_strength: float = 0.12  # peak-to-centre amplitude of the multiplicative bias field
    deformation_mm: float = 3.0  # max displacement of the non-linear part
    head_rotation_deg: float = 4.0
    head_shift_mm: float = 4.0
    n_lesions: tuple[int, int] = (5, 20)
    new_lesion_last_session: bool = True
    # diffusion
    dwi_voxel_mm: float = 2.0
    n_b0: int = 6
    n_directions: int = 60
    bvalue: float = 1000.0
    snr_b0: float = 25.0
    dwi_motion_mm: float = 0.6  # scale of the within-scan head drift
    dwi_dropout_volumes: int = 1
    rd_change: tuple[float, ...] = (0.0, -0.03, -0.06)
    # resting-state fMRI
    bold_voxel_mm: float = 3.0
    bold_volumes: int = 160
    bold_tr: float = 2.0
    bold_atlas: str = "seitzman"
    # the seed study's 6-month NBS subnetwork: 113 regions, 143 edges
    bold_planted_regions: int = 113
    bold_planted_edges: int = 143
    bold_effect: tuple[float, ...] = (0.0, 0.5, 1.0)  # fraction of the largest feasible effect

    def __post_init__(self) -> None:
        n = len(self.sessions)
        for name in ("session_months", "rd_change", "bold_effect"):
            if len(getattr(self, name)) != n:
                raise ValueError(
                    f"PhantomSpec.{name} has {len(getattr(self, name))} entries "
                    f"but there are {n} sessions {self.sessions}"
                )
        if self.n_subjects < 1:
            raise ValueError(f"PhantomSpec.n_subjects must be >= 1, got {self.n_subjects}")
        if not 0 < self.n_lesions[0] <= self.n_lesions[1]:
            raise ValueError(f"PhantomSpec.n_lesions must be (min, max) >= 1, got {self.n_lesions}")
        if self.n_directions < 6:
            raise ValueError(f"PhantomSpec.n_directions must be >= 6, got {self.n_directions}")

    def replace(self, **changes: object) -> PhantomSpec:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


PRESETS: dict[str, PhantomSpec] = {
    "trial": PhantomSpec(),
    # the trial without any planted change (NAWM RD, connectivity): what the group
    # statistics must not find
    "trial-null": PhantomSpec(rd_change=(0.0, 0.0, 0.0), bold_effect=(0.0, 0.0, 0.0)),
    "tiny": PhantomSpec(
        n_subjects=2,
        sessions=("baseline", "m06"),
        session_months=(0.0, 6.0),
        template_resolution=2,
        t1_voxel_mm=2.0,
        flair_voxel_mm=2.0,
        n_lesions=(6, 8),
        dwi_voxel_mm=3.0,
        n_b0=3,
        n_directions=30,
        dwi_dropout_volumes=0,
        rd_change=(0.0, -0.06),
        bold_voxel_mm=4.0,
        bold_volumes=100,
        bold_atlas="dosenbach",
        bold_planted_regions=8,
        bold_planted_edges=10,
        bold_effect=(0.0, 1.0),
    ),
}

# Fields of view (scanner mm, centred on the isocentre): head for structural
# scans, brain for DWI and BOLD.
FOV = {
    "T1w": ((-96.0, -114.0, -100.0), (96.0, 114.0, 96.0)),
    "FLAIR": ((-96.0, -114.0, -100.0), (96.0, 114.0, 96.0)),
    "dwi": ((-78.0, -98.0, -86.0), (78.0, 98.0, 76.0)),
    "bold": ((-84.0, -99.0, -90.0), (84.0, 99.0, 78.0)),
}
# Voxel axis orientation written by the "scanner" per modality: mixing RAS and
# LAS makes orientation handling a tested path rather than an assumption.
ORIENTATION = {"T1w": "RAS", "FLAIR": "LAS", "dwi": "LAS", "bold": "LAS"}

_STREAMS = {"anatomy": 1, "T1w": 2, "FLAIR": 3, "dwi": 4, "bold": 5, "pose": 6, "clinical": 7}


def rng_for(seed: int, subject: int, session: int, stream: str) -> np.random.Generator:
    """Independent generator for one (subject, session, stream)."""
    return np.random.default_rng([int(seed), int(subject), int(session), _STREAMS[stream]])


def acquisition_grid(
    fov: tuple[tuple[float, ...], tuple[float, ...]], voxel_mm: float, orientation: str = "RAS"
) -> tuple[tuple[int, int, int], np.ndarray]:
    """Shape and affine of an axis-aligned grid covering ``fov`` (RAS or LAS)."""
    lo, hi = np.asarray(fov[0]), np.asarray(fov[1])
    shape = tuple(int(v) for v in np.ceil((hi - lo) / voxel_mm).astype(int))
    affine = np.diag([voxel_mm, voxel_mm, voxel_mm, 1.0])
    affine[:3, 3] = lo + voxel_mm / 2
    if orientation == "LAS":
        affine[0, 0] = -voxel_mm
        affine[0, 3] = lo[0] + voxel_mm / 2 + (shape[0] - 1) * voxel_mm
    elif orientation != "RAS":
        raise ValueError(f"orientation must be RAS or LAS, got {orientation!r}")
    return shape, affine


def bias_field(points: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Smooth multiplicative intensity bias (exp of a random quadratic in scanner mm)."""
    x = points / 100.0
    terms = [x[:, 0], x[:, 1], x[:, 2], x[:, 0] ** 2, x[:, 1] ** 2, x[:, 2] ** 2, x[:, 0] * x[:, 1]]
    coef = rng.normal(0, 1, len(terms))
    field = sum(c * t for c, t in zip(coef, terms, strict=True))
    field = field / max(np.abs(field).max(), 1e-9) * np.log1p(strength)
    return np.exp(field).astype(np.float32)


@dataclass(frozen=True)
class SubjectModel:
    """One subject's anatomy and head positions.

    ``poses[session][sequence]`` is the rigid pose (scanner -> native) of each
    acquisition; sequences of one session differ by small movements between scans.
    """

    index: int
    label: str
    deformation: SmoothDeformation
    lesions: tuple[Lesion, ...]
    poses: dict[str, dict[str, RigidPose]]
    age: int
    sex: str
    edss: tuple[float, ...]

    def to_template(self, session: str, sequence: str) -> Callable[[np.ndarray], np.ndarray]:
        """Scanner mm -> MNI mm for one acquisition."""
        pose, deform = self.poses[session][sequence], self.deformation

        def mapping(points: np.ndarray) -> np.ndarray:
            return deform(pose(points))

        return mapping

    def from_template(self, session: str, sequence: str) -> Callable[[np.ndarray], np.ndarray]:
        """MNI mm -> scanner mm for one acquisition (inverse of :meth:`to_template`)."""
        pose_inv = np.linalg.inv(self.poses[session][sequence].matrix)
        deform = self.deformation

        def mapping(points: np.ndarray) -> np.ndarray:
            return apply_affine(pose_inv, deform.inverse(points))

        return mapping

    def to_dict(self) -> dict:
        return {
            "label": self.label,
            "age": self.age,
            "sex": self.sex,
            "edss": list(self.edss),
            "deformation_native_to_mni": self.deformation.to_dict(),
            "poses_scanner_to_native": {
                ses: {
                    seq: {"params": list(p.params), "matrix": p.matrix.tolist()}
                    for seq, p in d.items()
                }
                for ses, d in self.poses.items()
            },
            "pose_convention": "native = matrix @ scanner; params (tx,ty,tz mm, rx,ry,rz rad) "
            "as in pipeline.motion.rigid_matrix plus the isocentre offset",
            "lesions": [les.to_dict() for les in self.lesions],
        }


def make_subject(spec: PhantomSpec, index: int) -> SubjectModel:
    """Draw subject ``index`` (0-based) of the trial."""
    rng = rng_for(spec.seed, index, 0, "anatomy")
    deformation = SmoothDeformation.random(rng, amplitude_mm=spec.deformation_mm)
    n_les = int(rng.integers(spec.n_lesions[0], spec.n_lesions[1] + 1))
    new = (
        len(spec.sessions) - 1
        if (spec.new_lesion_last_session and len(spec.sessions) > 1)
        else None
    )
    lesions = place_lesions(
        load_template(spec.template_resolution), rng, n_lesions=n_les, new_lesion_session=new
    )
    poses: dict[str, dict[str, RigidPose]] = {}
    for s, ses in enumerate(spec.sessions):
        prng = rng_for(spec.seed, index, s, "pose")
        base = RigidPose.random(
            prng, max_rotation_deg=spec.head_rotation_deg, max_shift_mm=spec.head_shift_mm
        )
        seqs = {"T1w": base}
        for seq in ("FLAIR", "dwi", "bold"):
            small = RigidPose.random(prng, max_rotation_deg=1.0, max_shift_mm=1.0)
            mat = base.matrix @ np.linalg.inv(RigidPose((0,) * 6).matrix) @ small.matrix
            seqs[seq] = _pose_from_matrix(mat)
        poses[ses] = seqs
    crng = rng_for(spec.seed, index, 0, "clinical")
    edss = [float(crng.choice([6.0, 6.5]))]
    for _ in spec.sessions[1:]:
        edss.append(float(np.clip(edss[-1] + crng.choice([-0.5, 0.0, 0.0, 0.0, 0.5]), 5.5, 7.0)))
    return SubjectModel(
        index=index,
        label=f"{index + 1:02d}",
        deformation=deformation,
        lesions=lesions,
        poses=poses,
        age=int(crng.integers(32, 61)),
        sex=str(crng.choice(["F", "M"], p=[0.6, 0.4])),
        edss=tuple(edss),
    )


def _pose_from_matrix(mat: np.ndarray) -> RigidPose:
    from pipeline.motion import rigid_params
    from pipeline.phantom.anatomy import ISOCENTRE_MNI

    m = mat.copy()
    m[:3, 3] -= ISOCENTRE_MNI
    return RigidPose(tuple(float(v) for v in rigid_params(m)))


#: Relative intensities of each tissue in T1w and FLAIR (white matter = 1).
CONTRAST = {
    "T1w": {"wm": 1.0, "gm": 0.66, "csf": 0.25, "lesion": 0.55, "skull": 0.08, "scalp": 0.85},
    "FLAIR": {"wm": 0.72, "gm": 1.0, "csf": 0.12, "lesion": 1.75, "skull": 0.08, "scalp": 0.55},
}


def sample_tissues(
    points_mni: np.ndarray, lesions: tuple[Lesion, ...], session_index: int, resolution: int
) -> dict[str, np.ndarray]:
    """Partial-volume tissue fractions at MNI points (lesion replaces normal tissue)."""
    tpl = load_template(resolution)
    inv = tpl.inv_affine
    out = {
        k: sample_template(inv, tpl.maps[k], points_mni)
        for k in ("gm", "wm", "csf", "brain", "skull", "scalp")
    }
    les = lesion_probability(points_mni, lesions, session_index) * out["brain"]
    for k in ("gm", "wm", "csf"):
        out[k] = out[k] * (1 - les)
    out["lesion"] = les
    out["hemisphere_left"] = (points_mni[:, 0] < 0).astype(np.float32)
    return out


def simulate_structural(
    contrast: str,
    *,
    grid_shape: tuple[int, int, int],
    grid_affine: np.ndarray,
    to_template: Callable[[np.ndarray], np.ndarray],
    lesions: tuple[Lesion, ...],
    session_index: int,
    rng: np.random.Generator,
    resolution: int,
    noise: float,
    bias_strength: float,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """A T1w or FLAIR volume (float32, arbitrary units with WM ~ 1000) and its tissue fractions."""
    pts = grid_points(grid_shape, grid_affine)
    tissues = sample_tissues(to_template(pts), lesions, session_index, resolution)
    c = CONTRAST[contrast]
    img = sum(tissues[k] * c[k] for k in c) * 1000.0
    img = img * bias_field(pts, rng, bias_strength)
    sigma = noise * 1000.0
    img = np.sqrt(
        (img + rng.normal(0, sigma, img.shape)) ** 2 + rng.normal(0, sigma, img.shape) ** 2
    )
    shape = tuple(grid_shape)
    return img.reshape(shape).astype(np.float32), {k: v.reshape(shape) for k, v in tissues.items()}


def simulate_acquisition(
    spec: PhantomSpec, subject: SubjectModel, session_index: int, contrast: str
) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """One structural acquisition (``T1w`` or ``FLAIR``) of a subject-session, exactly as
    :func:`simulate_session` makes it: float32 volume, tissue fractions, grid affine."""
    vox = spec.t1_voxel_mm if contrast == "T1w" else spec.flair_voxel_mm
    shape, aff = acquisition_grid(FOV[contrast], vox, ORIENTATION[contrast])
    data, tissues = simulate_structural(
        contrast,
        grid_shape=shape,
        grid_affine=aff,
        to_template=subject.to_template(spec.sessions[session_index], contrast),
        lesions=subject.lesions,
        session_index=session_index,
        rng=rng_for(spec.seed, subject.index, session_index, contrast),
        resolution=spec.template_resolution,
        noise=spec.t1_noise * (1.4 if contrast == "FLAIR" else 1.0),
        bias_strength=spec.bias_strength,
    )
    return data, tissues, aff


@dataclass(frozen=True, eq=False)
class SessionPhantom:
    """All images and truth of one subject-session (in memory)."""

    subject: SubjectModel
    session: str
    images: dict[str, nib.Nifti1Image]  # T1w, FLAIR, dwi, bold
    bvals: np.ndarray
    bvecs_world: np.ndarray
    truth_images: dict[str, nib.Nifti1Image]  # keyed by a BIDS-like descriptor
    truth: dict  # JSON-serialisable facts (motion, lesions, edges, ...)
    tables: dict[str, object]  # pandas DataFrames of region time series etc.


def _nifti(
    data: np.ndarray, affine: np.ndarray, dtype=np.float32, zooms_t: float | None = None
) -> nib.Nifti1Image:
    img = nib.Nifti1Image(np.asarray(data).astype(dtype), affine)
    img.header.set_xyzt_units("mm", "sec")
    img.header.set_qform(affine, code=1)
    img.header.set_sform(affine, code=1)
    if zooms_t is not None:
        zooms = [*list(img.header.get_zooms()[:3]), zooms_t]
        img.header.set_zooms(zooms)
    return img


def _to_int16(data: np.ndarray) -> np.ndarray:
    return np.clip(np.round(data), 0, np.iinfo(np.int16).max).astype(np.int16)


@dataclass(frozen=True, eq=False)
class BoldDesign:
    """Population model of the resting-state phantom, shared by all subjects."""

    atlas: object
    loadings: np.ndarray
    edges: tuple[tuple[int, int], ...]
    max_effect: float


#: Network loadings of the planted regions are scaled by this factor so that their
#: private variance leaves room for a clearly detectable planted effect.
PLANTED_LOADING_SCALE = 0.45


@functools.lru_cache(maxsize=4)
def bold_design(spec: PhantomSpec) -> BoldDesign:
    """Atlas, factor loadings and planted subnetwork of the trial (deterministic).

    The planted subnetwork is drawn among regions whose MNI coordinate lies in
    grey matter (GM probability >= 0.3) so that its signal is visible. Its
    regions' network loadings are reduced (:data:`PLANTED_LOADING_SCALE`) so the
    planted correlation rise ``effect**2`` can reach about 0.3 while every region
    keeps unit variance; ``spec.bold_effect`` is a fraction of the largest
    feasible effect (:func:`pipeline.phantom.bold.max_planted_effect`, less 5 %).
    """
    from pipeline.phantom.bold import (
        choose_planted_subnetwork,
        load_coordinate_atlas,
        max_planted_effect,
        network_loadings,
    )

    atlas = load_coordinate_atlas(spec.bold_atlas)
    tpl = load_template(spec.template_resolution)
    gm_at = sample_template(tpl.inv_affine, tpl.maps["gm"], np.asarray(atlas.coords, dtype=float))
    candidates = [
        i for i in range(len(gm_at)) if gm_at[i] >= 0.3 and atlas.networks[i] != "unassigned"
    ]
    rng = np.random.default_rng([spec.seed, 99])
    edges = choose_planted_subnetwork(
        atlas, n_regions=spec.bold_planted_regions, n_edges=spec.bold_planted_edges,
        rng=rng, candidates=candidates,
    )
    loadings = np.array(network_loadings(atlas, rng=np.random.default_rng([spec.seed, 98])))
    planted = sorted({i for e in edges for i in e})
    loadings[planted] *= PLANTED_LOADING_SCALE
    return BoldDesign(
        atlas=atlas,
        loadings=loadings,
        edges=tuple(edges),
        max_effect=0.95 * float(max_planted_effect(loadings, edges)),
    )


def simulate_region_connectomes(
    spec: PhantomSpec, n_subjects: int, session_index: int, *, seed: int
) -> np.ndarray:
    """Fisher-z connectomes of the trial's region time series, without images.

    The reduced simulation of the resting-state phantom: the same population
    (:func:`bold_design`: atlas, loadings, planted subnetwork and effect of
    ``spec``), run length and TR, drawn directly at the region level (no image,
    no preprocessing). Its between-session noise is the sampling noise of the
    factor model, the part of the image-level trial's noise that the pipeline
    cannot remove; for power and calibration studies over many synthetic
    trials (a full trial takes minutes per subject).

    Subject ``s`` uses ``default_rng([seed, s, session_index, 5])``, so sessions
    of one subject and subjects are independent and reproducible.

    Returns
    -------
    numpy.ndarray, shape (n_subjects, M, M)
        Fisher z of the correlation matrices, diagonal 0.
    """
    from pipeline.phantom.bold import simulate_region_timeseries

    design = bold_design(spec)
    effect = spec.bold_effect[session_index] * design.max_effect
    out = np.empty((n_subjects, design.atlas.n_regions, design.atlas.n_regions))
    for s in range(n_subjects):
        rng = np.random.default_rng([int(seed), s, int(session_index), _STREAMS["bold"]])
        x = simulate_region_timeseries(design.loadings, design.edges, effect,
                                       n_volumes=spec.bold_volumes, tr=spec.bold_tr, rng=rng)
        r = np.corrcoef(x, rowvar=False)
        np.fill_diagonal(r, 0.0)
        out[s] = np.arctanh(np.clip(r, -1 + 1e-7, 1 - 1e-7))
    return out


def simulate_session_bold(
    spec: PhantomSpec, subject: SubjectModel, session_index: int
) -> tuple[nib.Nifti1Image, dict, dict]:
    """The resting-state BOLD run of one subject-session: image, truth and truth tables.

    Drawn from its own random stream (``rng_for(..., "bold")``), so it does not depend
    on the structural and diffusion images of the session.
    """
    import pandas as pd

    from pipeline.phantom.bold import simulate_bold

    ses = spec.sessions[session_index]
    tpl = load_template(spec.template_resolution)
    brng = rng_for(spec.seed, subject.index, session_index, "bold")
    design = bold_design(spec)
    shape, aff = acquisition_grid(FOV["bold"], spec.bold_voxel_mm, ORIENTATION["bold"])
    motion = simulate_motion_trace(spec.bold_volumes, rng=brng)
    effect = spec.bold_effect[session_index] * design.max_effect
    bold = simulate_bold(
        grid_shape=shape,
        grid_affine=aff,
        to_template=subject.to_template(ses, "bold"),
        template_affine=tpl.affine,
        gm=tpl.maps["gm"],
        wm=tpl.maps["wm"],
        csf=tpl.maps["csf"],
        atlas=design.atlas,
        edges=design.edges,
        effect=effect,
        n_volumes=spec.bold_volumes,
        tr=spec.bold_tr,
        rng=brng,
        motion=motion,
        loadings=design.loadings,
    )
    atlas, edges = design.atlas, design.edges
    truth = {
        "atlas": atlas.name,
        "planted_edges": [[int(i), int(j)] for i, j in edges],
        "planted_edge_labels": [[atlas.labels[i], atlas.labels[j]] for i, j in edges],
        "effect": effect,
        "effect_fraction_of_max": spec.bold_effect[session_index],
        "planted_correlation_rise": effect**2,
        "motion_params": np.asarray(bold.motion).tolist(),
        "framewise_displacement": np.asarray(bold.fd).tolist(),
    }
    tables = {
        "bold_region_timeseries": pd.DataFrame(bold.region_timeseries, columns=list(atlas.labels)),
        "bold_population_correlation": pd.DataFrame(
            bold.population_correlation, index=list(atlas.labels), columns=list(atlas.labels)
        ),
    }
    return bold.image, truth, tables


def simulate_session(
    spec: PhantomSpec, subject: SubjectModel, session_index: int
) -> SessionPhantom:
    """Images and ground truth of one subject-session."""
    import pandas as pd

    from pipeline.phantom.dwi import gradient_scheme, simulate_dwi

    ses = spec.sessions[session_index]
    res = spec.template_resolution
    tpl = load_template(res)
    sidx = subject.index
    images: dict[str, nib.Nifti1Image] = {}
    truth_images: dict[str, nib.Nifti1Image] = {}
    truth: dict = {"subject": subject.label, "session": ses}

    # ---- structural
    for contrast, vox in (("T1w", spec.t1_voxel_mm), ("FLAIR", spec.flair_voxel_mm)):
        img, tissues, aff = simulate_acquisition(spec, subject, session_index, contrast)
        images[contrast] = _nifti(_to_int16(img), aff, np.int16)
        space = contrast
        for k in ("gm", "wm", "csf", "lesion"):
            truth_images[
                f"space-{space}_label-{k.upper() if k != 'lesion' else 'lesion'}_probseg"
            ] = _nifti(tissues[k], aff)
        truth_images[f"space-{space}_desc-brain_mask"] = _nifti(
            tissues["brain"] >= 0.5, aff, np.uint8
        )
        truth_images[f"space-{space}_label-lesion_mask"] = _nifti(
            tissues["lesion"] >= 0.5, aff, np.uint8
        )
        truth_images[f"space-{space}_desc-hemi_dseg"] = _nifti(
            np.where(tissues["brain"] >= 0.5, 2 - tissues["hemisphere_left"], 0), aff, np.uint8
        )
        if contrast == "T1w":
            labels = np.stack([tissues[k] for k in ("csf", "gm", "wm", "lesion")], axis=-1)
            dseg = np.where(tissues["brain"] >= 0.5, labels.argmax(-1) + 1, 0)
            truth_images["space-T1w_desc-tissue_dseg"] = _nifti(dseg, aff, np.uint8)
            vox_ml = vox**3 / 1000.0
            truth["volumes_ml_T1w_grid"] = {
                "brain": float(np.sum(tissues["gm"] + tissues["wm"] + tissues["lesion"]) * vox_ml),
                "gm": float(tissues["gm"].sum() * vox_ml),
                "wm": float(tissues["wm"].sum() * vox_ml),
                "csf": float(tissues["csf"].sum() * vox_ml),
                "lesion": float(tissues["lesion"].sum() * vox_ml),
                "intracranial": float(tissues["brain"].sum() * vox_ml),
            }

    # ---- diffusion
    drng = rng_for(spec.seed, sidx, session_index, "dwi")
    bvals, bvecs = gradient_scheme(spec.n_b0, spec.n_directions, spec.bvalue, drng)
    shape, aff = acquisition_grid(FOV["dwi"], spec.dwi_voxel_mm, ORIENTATION["dwi"])
    n_vol = len(bvals)
    motion = simulate_motion_trace(
        n_vol,
        rng=drng,
        drift_mm=spec.dwi_motion_mm,
        jitter_mm=0.05,
        n_spikes=1,
        spike_mm=(0.5, 1.0),
    )
    motion -= motion[0]  # the first (b = 0) volume is the reference position
    dwi = simulate_dwi(
        grid_shape=shape,
        grid_affine=aff,
        to_template=subject.to_template(ses, "dwi"),
        template=tpl,
        tracts=tract_field(res),
        lesions=subject.lesions,
        session_index=session_index,
        rd_change_left_nawm=spec.rd_change[session_index],
        bvals=bvals,
        bvecs_world=bvecs,
        rng=drng,
        snr_b0=spec.snr_b0,
        motion=motion,
        n_dropout=spec.dwi_dropout_volumes,
        bias_field=bias_field(grid_points(shape, aff), drng, spec.bias_strength / 2),
    )
    images["dwi"] = _nifti(_to_int16(dwi.data), aff, np.int16)
    for k in ("fa", "md", "ad", "rd", "s0"):
        truth_images[f"space-dwi_model-tensor_param-{k}_dwimap"] = _nifti(dwi.truth[k], aff)
    truth_images["space-dwi_model-tensor_param-v1world_dwimap"] = _nifti(dwi.truth["v1"], aff)
    truth_images["space-dwi_desc-brain_mask"] = _nifti(dwi.truth["brain"], aff, np.uint8)
    for k in ("gm", "wm", "csf", "lesion"):
        truth_images[f"space-dwi_label-{k.upper() if k != 'lesion' else 'lesion'}_probseg"] = (
            _nifti(dwi.truth[k], aff)
        )
    truth_images["space-dwi_desc-hemi_dseg"] = _nifti(
        np.where(dwi.truth["brain"], 2 - dwi.truth["left"].astype(np.uint8), 0), aff, np.uint8
    )
    for key, val in dwi.truth.items():
        if key.startswith("tract_"):
            bundle = key[len("tract_") :].replace("_", "")
            truth_images[f"space-dwi_bundle-{bundle}_mask"] = _nifti(val, aff, np.uint8)
    truth["dwi"] = {
        "motion_params": dwi.motion.tolist(),
        "motion_convention": "pipeline.motion.rigid_matrix; volume k shows the head moved by M_k",
        "noise_sigma": dwi.sigma,
        "dropout_volumes": list(dwi.dropout_volumes),
        "bvecs_world": dwi.bvecs_world.tolist(),
        "rd_change_left_nawm": spec.rd_change[session_index],
    }

    # ---- resting-state BOLD
    images["bold"], truth["bold"], bold_tables = simulate_session_bold(spec, subject, session_index)
    tables = dict(bold_tables)
    lesion_rows = []
    for i, les in enumerate(subject.lesions):
        if les.first_session > session_index:
            continue
        centre_scanner = subject.from_template(ses, "T1w")(np.asarray([les.centre_mni]))[0]
        lesion_rows.append(
            {
                "lesion_id": i + 1,
                "location": les.location,
                "new_at_this_session": les.first_session == session_index and session_index > 0,
                "centre_mni_x": les.centre_mni[0],
                "centre_mni_y": les.centre_mni[1],
                "centre_mni_z": les.centre_mni[2],
                "centre_t1w_x": centre_scanner[0],
                "centre_t1w_y": centre_scanner[1],
                "centre_t1w_z": centre_scanner[2],
                "template_volume_mm3": les.volume_mm3,
            }
        )
    tables["lesions"] = pd.DataFrame(lesion_rows)
    return SessionPhantom(
        subject=subject,
        session=ses,
        images=images,
        bvals=bvals,
        bvecs_world=bvecs,
        truth_images=truth_images,
        truth=truth,
        tables=tables,
    )


def checksum(arr: np.ndarray) -> int:
    """Cheap content checksum used by determinism tests."""
    return zlib.crc32(np.ascontiguousarray(arr).tobytes())
