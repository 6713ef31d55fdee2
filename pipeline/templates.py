"""The MNI152 2009 template shipped with nilearn, and anatomical masks derived from it.

:func:`load_mni_template` reads nilearn's packaged copy of the ICBM152 2009 template
(T1, grey- and white-matter probability maps; nothing is downloaded) and derives
the masks that the structural stage uses to describe lesions. The same masks
define where the synthetic phantom places its lesions
(:func:`pipeline.phantom.anatomy._candidate_centres`), so that the classification
rules of :mod:`pipeline.anat.lesions` can be checked against known truth.

Definitions (all in template millimetres, RAS: x left -> right, y posterior ->
anterior, z inferior -> superior):

``brain``
    T1 template > 0.2 (nilearn's :func:`~nilearn.datasets.load_mni152_brain_mask`);
    it includes the ventricles and the sulcal / subarachnoid CSF, i.e. it is an
    intracranial mask.
``gm``, ``wm``, ``csf``
    Tissue probabilities. GM and WM are the template maps restricted to the brain
    mask and renormalised where they add up to more than one;
    ``csf = clip(brain - gm - wm, 0, 1)``, so the three sum to the brain mask.
``ventricles``
    CSF probability > 0.5 inside the box x in [-35, 35], y in [-45, 35],
    z in [-5, 35] (lateral and third ventricles; excludes the sulcal CSF of the
    convexity and the basal cisterns), followed by a binary opening with the
    3-D 6-connected structuring element to remove single-voxel strands.
``cortex``
    Cortical grey matter: GM probability > 0.5 outside the deep-grey-matter box
    x in [-32, 32], y in [-40, 28], z in [-18, 22] (basal ganglia and thalami).
    The cerebellar cortex is included (it lies in ``infratentorial``, which takes
    precedence when lesions are classified).
``infratentorial``
    Brain voxels of the posterior fossa, below the tentorium cerebelli:
    the brainstem (|x| <= 15, -45 <= y <= -15, z <= -10: lower midbrain, pons,
    medulla and the cerebellar peduncles) together with the cerebellum
    (y <= -35 and z <= -10 - 0.35 |x|, an oblique surface fitted by eye to the
    tentorium of this template: -10 mm at the midline, about -25 mm at
    |x| = 45 mm). The anterior limit y <= -35 keeps the inferior temporal lobes
    (which reach z = -45 mm in front of the petrous ridge) out of the mask.
``hemisphere``
    ``1`` = left (x < 0), ``2`` = right (x >= 0) inside the brain mask, 0 outside.

Space name: the nilearn files are ``mni_icbm152_*_tal_nlin_sym_09a``, i.e. the
ICBM152 2009a non-linear *symmetric* template, TemplateFlow identifier
``MNI152NLin2009aSym`` (not fMRIPrep's default ``MNI152NLin2009cAsym``; the two
differ by about a millimetre, which is irrelevant for the masks above but must
be stated in BIDS-Derivatives ``space-`` entities).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "CORTEX_EXCLUDED_BOX",
    "INFRATENTORIAL",
    "SPACE",
    "VENTRICLE_BOX",
    "MniTemplate",
    "infratentorial_region",
    "load_mni_template",
]

#: TemplateFlow identifier of the template nilearn ships (see the module docstring).
SPACE = "MNI152NLin2009aSym"
#: Box (lo, hi) in MNI mm that contains the lateral and third ventricles.
VENTRICLE_BOX = ((-35.0, -45.0, -5.0), (35.0, 35.0, 35.0))
#: Box (lo, hi) in MNI mm of the deep grey matter, excluded from ``cortex``.
CORTEX_EXCLUDED_BOX = ((-32.0, -40.0, -18.0), (32.0, 28.0, 22.0))
#: Parameters of the infratentorial region (see :func:`infratentorial_region`).
INFRATENTORIAL = {
    "brainstem_half_width_mm": 15.0,
    "brainstem_y_mm": (-45.0, -15.0),
    "brainstem_top_z_mm": -10.0,
    "cerebellum_front_y_mm": -35.0,
    "tentorium_midline_z_mm": -10.0,
    "tentorium_lateral_slope": 0.35,
}


def _in_box(world: np.ndarray, lo: Sequence[float], hi: Sequence[float]) -> np.ndarray:
    return np.all((world >= np.asarray(lo)) & (world <= np.asarray(hi)), axis=-1)


def _world(shape: Sequence[int], affine: np.ndarray) -> np.ndarray:
    ijk = np.indices(tuple(shape), dtype=np.float64).reshape(3, -1).T
    return (ijk @ affine[:3, :3].T + affine[:3, 3]).reshape(*shape, 3)


def infratentorial_region(world: np.ndarray) -> np.ndarray:
    """Boolean mask of points (..., 3) in MNI mm lying below the tentorium.

    Brainstem box or cerebellum below an oblique tentorium surface; see the module
    docstring for the numbers and :data:`INFRATENTORIAL` for their values.
    """
    p = INFRATENTORIAL
    x, y, z = world[..., 0], world[..., 1], world[..., 2]
    ax = np.abs(x)
    brainstem = (
        (ax <= p["brainstem_half_width_mm"])
        & (y >= p["brainstem_y_mm"][0])
        & (y <= p["brainstem_y_mm"][1])
        & (z <= p["brainstem_top_z_mm"])
    )
    tentorium_z = p["tentorium_midline_z_mm"] - p["tentorium_lateral_slope"] * ax
    cerebellum = (y <= p["cerebellum_front_y_mm"]) & (z <= tentorium_z)
    return brainstem | cerebellum


@dataclass(frozen=True, eq=False)
class MniTemplate:
    """The MNI152 2009 template on one nilearn grid (1 or 2 mm).

    Arrays are read-only (the object is cached and shared); copy before modifying.

    Attributes
    ----------
    space : str
        TemplateFlow identifier, :data:`SPACE`.
    resolution : int
        Voxel size in mm.
    affine : ndarray (4, 4)
        Voxel -> MNI mm.
    t1 : ndarray float32
        Skull-stripped T1 template (nilearn's scaling, roughly 0..1).
    brain : ndarray bool
        Intracranial brain mask (includes CSF).
    gm, wm, csf : ndarray float32
        Tissue probabilities summing to ``brain``.
    ventricles, cortex, infratentorial : ndarray bool
        Derived masks (module docstring).
    hemisphere : ndarray uint8
        1 = left, 2 = right, 0 = outside the brain.
    """

    space: str
    resolution: int
    affine: np.ndarray
    t1: np.ndarray
    brain: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    ventricles: np.ndarray
    cortex: np.ndarray
    infratentorial: np.ndarray
    hemisphere: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.brain.shape)

    @property
    def maps(self) -> dict[str, np.ndarray]:
        """Every voxel-wise map by name (read-only arrays)."""
        names = ("t1", "brain", "gm", "wm", "csf", "ventricles", "cortex", "infratentorial")
        return {n: getattr(self, n) for n in (*names, "hemisphere")}

    @functools.cached_property
    def world(self) -> np.ndarray:
        """MNI coordinates of every voxel centre, shape (X, Y, Z, 3)."""
        return _world(self.shape, self.affine)

    def image(self, name: str):
        """One map as a :class:`nibabel.Nifti1Image` (bool masks as uint8)."""
        import nibabel as nib

        data = self.maps[name]
        if data.dtype == bool:
            data = data.astype(np.uint8)
        return nib.Nifti1Image(np.array(data), self.affine)


def _readonly(arr: np.ndarray) -> np.ndarray:
    arr.flags.writeable = False
    return arr


@functools.lru_cache(maxsize=2)
def load_mni_template(resolution: int = 2) -> MniTemplate:
    """Load the MNI152 2009 template maps shipped with nilearn (no download; cached).

    Parameters
    ----------
    resolution : {1, 2}
        Grid spacing in mm (nilearn resamples its 1 mm files).
    """
    from nilearn import datasets
    from scipy import ndimage

    if resolution not in (1, 2):
        raise ValueError(f"template resolution must be 1 or 2 mm, got {resolution}")
    gm_img = datasets.load_mni152_gm_template(resolution=resolution)
    affine = np.asarray(gm_img.affine, dtype=np.float64)
    gm = np.asarray(gm_img.get_fdata(), dtype=np.float32)
    wm = np.asarray(
        datasets.load_mni152_wm_template(resolution=resolution).get_fdata(), dtype=np.float32
    )
    t1_img = datasets.load_mni152_template(resolution=resolution)
    if not np.allclose(t1_img.affine, affine) or t1_img.shape != gm.shape:
        raise RuntimeError("nilearn's MNI152 T1 and GM templates are on different grids")
    t1 = np.asarray(t1_img.get_fdata(), dtype=np.float32)
    brain = (
        np.asarray(datasets.load_mni152_brain_mask(resolution=resolution).get_fdata()) > 0
    ).astype(np.float32)
    gm *= brain
    wm *= brain
    total = gm + wm
    over = total > 1
    gm[over] /= total[over]
    wm[over] /= total[over]
    csf = np.clip(brain - gm - wm, 0, 1).astype(np.float32)

    world = _world(gm.shape, affine)
    ventricles = (csf > 0.5) & _in_box(world, *VENTRICLE_BOX)
    ventricles = ndimage.binary_opening(ventricles)
    cortex = (gm > 0.5) & ~_in_box(world, *CORTEX_EXCLUDED_BOX)
    in_brain = brain > 0
    infratentorial = infratentorial_region(world) & in_brain
    hemisphere = np.where(in_brain, np.where(world[..., 0] < 0, 1, 2), 0).astype(np.uint8)
    return MniTemplate(
        space=SPACE,
        resolution=int(resolution),
        affine=_readonly(affine),
        t1=_readonly(t1),
        brain=_readonly(in_brain),
        gm=_readonly(gm),
        wm=_readonly(wm),
        csf=_readonly(csf),
        ventricles=_readonly(ventricles),
        cortex=_readonly(cortex),
        infratentorial=_readonly(infratentorial),
        hemisphere=_readonly(hemisphere),
    )
