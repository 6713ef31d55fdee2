"""Spatial transforms between image spaces, and the registrations that estimate them.

Every stage (structural, diffusion, tracts, fMRI) reuses the transforms computed
here: they are estimated once, saved, and loaded again, never recomputed.

Convention
----------
World coordinates are the RAS+ millimetres of each image's NIfTI affine
(``img.affine``). A :class:`Transform` *from* space SOURCE (the moving image)
*to* space TARGET (the fixed image) resamples SOURCE images onto TARGET grids.
Internally it holds the **pull-back** point mapping TARGET world mm -> SOURCE
world mm::

    source_mm = affine @ W(pre_affine @ target_mm)        (homogeneous 4x4 affines)
    W(y)      = y + u(y)        forward displacement field u (mm)
    W^-1(z)   = z + v(z)        backward displacement field v (mm)

``W`` is the optional non-linear (diffeomorphic) part; ``u`` and ``v`` are
sampled on one grid (:class:`Warp`, usually the TARGET working grid) and
interpolated trilinearly, extended by their edge values outside that grid.
``affine`` (TARGET world -> SOURCE world) is applied *after* the warp; in a
registration result it is the affine pre-alignment, and ``pre_affine`` is the
identity (``None``). ``pre_affine`` only becomes non-trivial through
:meth:`Transform.inverse` and :meth:`Transform.compose`, which keep the
``affine o W o pre_affine`` form closed (the inverse of ``A W`` is ``W^-1 A^-1``).
Because both ``u`` and ``v`` are stored, images *and* points can be carried both
ways: :meth:`Transform.resample` pulls SOURCE images onto a TARGET grid,
``transform.inverse().resample`` pulls TARGET images onto a SOURCE grid, and
:meth:`Transform.source_to_target` / :meth:`Transform.target_to_source` carry
points (e.g. streamlines, lesion centres, atlas coordinates).

This is the same direction as DIPY's ``AffineMap.affine`` (static -> moving
world) and as ANTs/ITK transforms (fixed -> moving), but the fields are in RAS
(not ITK's LPS) millimetres.

File format
-----------
:meth:`Transform.save` writes ``<stem>_xfm.json`` (any ``*.json`` path is
accepted; ``<stem>`` is the path without ``_xfm.json`` or ``.json``) holding::

    {"format": "msmri-transform", "version": 1, "source": ..., "target": ...,
     "convention": "...", "affine": 4x4, "pre_affine": 4x4 or null,
     "warp": null or {"file": "<stem>_warp.nii.gz", "grid_shape": [X, Y, Z],
                      "grid_affine": 4x4, "layout": "..."}}

and, for a non-linear transform, ``<stem>_warp.nii.gz``: a float32 4-D NIfTI of
shape (X, Y, Z, 6) on the warp grid, volumes 0-2 the forward field ``u`` and
volumes 3-5 the backward field ``v`` (x, y, z components in RAS mm). The JSON
holds the exact (float64) grid affine; the warp file is always found next to the
JSON by the naming rule above (not by the stored name), so that a caller may save
to temporary names and rename both files. A load reproduces point mappings
exactly (the fields are stored at the precision they are held in memory).

Registration
------------
:func:`register_rigid` and :func:`register_affine` use DIPY's
``AffineRegistration`` with Mattes mutual information (centre of mass ->
translation -> rigid [-> affine]; every stage but the last stops one pyramid level
short of the finest grid, as it only initialises the next); :func:`register_syn` uses DIPY's
``SymmetricDiffeomorphicRegistration`` (cross-correlation by default) after an
affine pre-alignment; :func:`register_to_template` chains both for a
skull-stripped T1w brain -> MNI template brain. For speed, images finer than
``resolution_mm`` are smoothed (Gaussian anti-aliasing) and resampled onto an
isotropic grid of that spacing, aligned with their own axes, before
optimisation (affine stages also crop each image to the bounding box of its
mask, or of its non-zero voxels, plus 3 voxels); the estimated transforms are
world-to-world mappings, so this working grid does not appear in the result
except as the grid of the displacement fields of a SyN warp (the TARGET image's
working grid). Mutual information is sampled on 25 % of the working voxels
(DIPY's deterministic jittered grid) unless masks are given, which DIPY only
supports with dense sampling.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path

import nibabel as nib
import numpy as np

from pipeline.errors import InputError

__all__ = [
    "MIN_NMI_SHARPNESS",
    "MNI_SPACE",
    "HeaderCheckedRegistration",
    "Transform",
    "Warp",
    "load_mni_template_brain",
    "mean_displacement_mm",
    "normalized_mutual_information",
    "register_affine",
    "register_rigid",
    "register_rigid_or_keep_header",
    "register_syn",
    "register_to_template",
    "registration_quality",
    "warp_path",
]

#: Space name of the nilearn MNI152 2009 template (BIDS template identifier).
MNI_SPACE = "MNI152NLin2009aSym"  # nilearn ships the ICBM 2009a symmetric template (pipeline.templates.SPACE)

_FORMAT = "msmri-transform"
_VERSION = 1
_CONVENTION = (
    "pull-back mapping TARGET world mm -> SOURCE world mm (RAS+): "
    "source = affine @ W(pre_affine @ target), W(y) = y + u(y), W^-1(z) = z + v(z); "
    "resample() pulls SOURCE images onto TARGET grids"
)
_WARP_LAYOUT = (
    "float32 (X, Y, Z, 6) on grid_affine: volumes 0-2 forward displacement u, "
    "3-5 backward displacement v, RAS mm; trilinear, edge-extended"
)

# Grid points are mapped in chunks of this many points to bound memory.
_CHUNK = 1 << 20


def _as_affine(a: object, name: str) -> np.ndarray:
    arr = np.array(a, dtype=np.float64)
    if arr.shape != (4, 4) or not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be a finite 4x4 matrix, got shape {arr.shape}")
    if not np.allclose(arr[3], [0, 0, 0, 1]):
        raise ValueError(f"{name} must have a last row (0, 0, 0, 1), got {arr[3]}")
    return arr


def _apply(affine: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ affine[:3, :3].T + affine[:3, 3]


def _points(points: object) -> np.ndarray:
    arr = np.asarray(points, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise ValueError(f"points must have shape (N, 3), got {arr.shape}")
    return arr


# --------------------------------------------------------------------------- warp


@dataclass(frozen=True, eq=False)
class Warp:
    """A diffeomorphism ``W(y) = y + u(y)`` and its inverse ``W^-1(z) = z + v(z)``.

    ``forward`` (u) and ``backward`` (v) are float32 (X, Y, Z, 3) displacement
    fields in world mm on the grid ``grid_affine`` (voxel -> world). Between
    grid points they are interpolated trilinearly; outside the grid the edge
    values are extended.
    """

    grid_affine: np.ndarray
    forward: np.ndarray = field(repr=False)
    backward: np.ndarray = field(repr=False)

    def __post_init__(self) -> None:
        aff = _as_affine(self.grid_affine, "Warp.grid_affine")
        fwd = np.ascontiguousarray(self.forward, dtype=np.float32)
        bwd = np.ascontiguousarray(self.backward, dtype=np.float32)
        if fwd.ndim != 4 or fwd.shape[-1] != 3 or fwd.shape != bwd.shape:
            raise ValueError(
                f"Warp fields must both have shape (X, Y, Z, 3), got {fwd.shape} and {bwd.shape}"
            )
        object.__setattr__(self, "grid_affine", aff)
        object.__setattr__(self, "forward", fwd)
        object.__setattr__(self, "backward", bwd)
        object.__setattr__(self, "_world2grid", np.linalg.inv(aff))

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.forward.shape[:3])

    def _sample(self, fieldv: np.ndarray, points: np.ndarray) -> np.ndarray:
        from scipy import ndimage

        ijk = _apply(self._world2grid, points).T
        out = np.empty(points.shape, dtype=np.float64)
        for c in range(3):
            out[:, c] = ndimage.map_coordinates(
                fieldv[..., c], ijk, order=1, mode="nearest", prefilter=False
            )
        return out

    def apply(self, points: np.ndarray) -> np.ndarray:
        """``W(points)``: points plus the interpolated forward displacement."""
        return points + self._sample(self.forward, points)

    def apply_inverse(self, points: np.ndarray) -> np.ndarray:
        """``W^-1(points)``: points plus the interpolated backward displacement."""
        return points + self._sample(self.backward, points)

    def inverted(self) -> Warp:
        """The inverse diffeomorphism (fields swapped; no copy)."""
        return Warp(self.grid_affine, self.backward, self.forward)

    def max_displacement_mm(self) -> float:
        return float(np.linalg.norm(self.forward, axis=-1).max())


# --------------------------------------------------------------------------- transform


@dataclass(frozen=True, eq=False)
class Transform:
    """A spatial mapping from space ``source`` (moving) to space ``target`` (fixed).

    Holds the pull-back ``target world mm -> source world mm`` as
    ``affine @ W(pre_affine @ x)`` (see the module docstring); ``warp`` is
    ``None`` for a linear transform, and ``pre_affine`` ``None`` means identity.
    Resampling with it carries SOURCE images onto TARGET grids.
    """

    source: str
    target: str
    affine: np.ndarray
    warp: Warp | None = None
    pre_affine: np.ndarray | None = None
    quality: dict | None = None  # registration-quality record (registration_quality), saved

    def __post_init__(self) -> None:
        for name in ("source", "target"):
            val = getattr(self, name)
            if not isinstance(val, str) or not val:
                raise ValueError(f"Transform.{name} must be a non-empty space name, got {val!r}")
        aff = _as_affine(self.affine, "Transform.affine")
        pre = None if self.pre_affine is None else _as_affine(self.pre_affine, "pre_affine")
        if self.warp is None and pre is not None:  # keep linear transforms in one matrix
            aff, pre = aff @ pre, None
        if pre is not None and np.allclose(pre, np.eye(4), rtol=0, atol=1e-12):
            pre = None
        if self.warp is not None and not isinstance(self.warp, Warp):
            raise TypeError(f"Transform.warp must be a Warp or None, got {type(self.warp)}")
        object.__setattr__(self, "affine", aff)
        object.__setattr__(self, "pre_affine", pre)

    # ---------------------------------------------------------------- constructors
    @classmethod
    def identity(cls, source: str, target: str) -> Transform:
        return cls(source, target, np.eye(4))

    @property
    def is_linear(self) -> bool:
        return self.warp is None

    def __repr__(self) -> str:
        kind = "linear" if self.is_linear else f"non-linear, warp grid {self.warp.shape}"
        return f"Transform({self.source!r} -> {self.target!r}, {kind})"

    # ---------------------------------------------------------------- points
    def target_to_source(self, points: np.ndarray) -> np.ndarray:
        """Map (N, 3) TARGET world mm to SOURCE world mm (the pull-back)."""
        p = _points(points)
        if self.pre_affine is not None:
            p = _apply(self.pre_affine, p)
        if self.warp is not None:
            p = self.warp.apply(p)
        return _apply(self.affine, p)

    def source_to_target(self, points: np.ndarray) -> np.ndarray:
        """Map (N, 3) SOURCE world mm to TARGET world mm (inverse of the pull-back)."""
        p = _apply(np.linalg.inv(self.affine), _points(points))
        if self.warp is not None:
            p = self.warp.apply_inverse(p)
        if self.pre_affine is not None:
            p = _apply(np.linalg.inv(self.pre_affine), p)
        return p

    # ---------------------------------------------------------------- algebra
    def inverse(self) -> Transform:
        """The TARGET -> SOURCE transform (exact: uses the stored backward field)."""
        pre = np.eye(4) if self.pre_affine is None else self.pre_affine
        return Transform(
            source=self.target,
            target=self.source,
            affine=np.linalg.inv(pre),
            warp=None if self.warp is None else self.warp.inverted(),
            pre_affine=np.linalg.inv(self.affine),
        )

    def compose(self, other: Transform) -> Transform:
        """``self`` (SOURCE -> TARGET) followed by ``other`` (TARGET -> OTHER).

        The result maps SOURCE -> OTHER (e.g. FLAIR -> T1w composed with
        T1w -> MNI gives FLAIR -> MNI). It is exact when at most one of the two
        is non-linear; composing two non-linear transforms resamples both
        displacement fields onto the grid of ``other``'s warp (trilinear
        interpolation error only).
        """
        if not isinstance(other, Transform):
            raise TypeError(f"can only compose with a Transform, got {type(other)}")
        if self.target != other.source:
            raise ValueError(
                f"cannot compose {self.source}->{self.target} with "
                f"{other.source}->{other.target}: {self.target!r} != {other.source!r}"
            )
        # pull-back of the result: OTHER -> TARGET (other) then TARGET -> SOURCE (self)
        a1, w1 = self.affine, self.warp
        b1 = np.eye(4) if self.pre_affine is None else self.pre_affine
        a2, w2 = other.affine, other.warp
        b2 = np.eye(4) if other.pre_affine is None else other.pre_affine
        if w1 is None:
            return Transform(self.source, other.target, a1 @ b1 @ a2, w2, b2)
        if w2 is None:
            return Transform(self.source, other.target, a1, w1, b1 @ a2 @ b2)
        return Transform(self.source, other.target, a1, _compose_warps(w1, b1 @ a2, w2), b2)

    # ---------------------------------------------------------------- images
    def resample(
        self,
        img: nib.spatialimages.SpatialImage,
        reference: nib.spatialimages.SpatialImage | tuple[Sequence[int], np.ndarray],
        *,
        order: int = 1,
        cval: float = 0.0,
    ) -> nib.Nifti1Image:
        """Resample ``img`` (in SOURCE space) onto a TARGET grid.

        Parameters
        ----------
        img : nibabel image
            3-D, or 4-D (resampled volume by volume with the same coordinates).
        reference : nibabel image or (shape, affine)
            The TARGET grid.
        order : int
            Spline order: 0 (nearest neighbour, for label images: values and
            dtype are kept), 1 (trilinear, default) or 3 (cubic).
        cval : float
            Value outside the SOURCE field of view.

        Returns
        -------
        nibabel.Nifti1Image
            float32 (order >= 1) or the input dtype (order 0), on the
            reference grid, with the input's time zoom for 4-D images.
        """
        from scipy import ndimage

        if order not in (0, 1, 2, 3, 4, 5):
            raise ValueError(f"order must be an integer spline order 0..5, got {order!r}")
        shape, ref_affine, ref_header = _grid_of(reference)
        data = np.asanyarray(img.dataobj)
        if data.ndim not in (3, 4):
            raise InputError(
                img.get_filename(), f"expected a 3-D or 4-D image, got shape {data.shape}"
            )
        world2vox = np.linalg.inv(np.asarray(img.affine, dtype=np.float64))
        coords = np.empty((3, int(np.prod(shape))), dtype=np.float32)
        ijk_all = np.indices(shape, dtype=np.float32).reshape(3, -1)
        for start in range(0, coords.shape[1], _CHUNK):
            ijk = ijk_all[:, start : start + _CHUNK].T.astype(np.float64)
            src = self.target_to_source(_apply(ref_affine, ijk))
            coords[:, start : start + _CHUNK] = _apply(world2vox, src).T
        del ijk_all
        vols = data[..., None] if data.ndim == 3 else data
        out_dtype = vols.dtype if order == 0 else np.float32
        out = np.empty((*shape, vols.shape[3]), dtype=out_dtype)
        for t in range(vols.shape[3]):
            vol = np.asarray(vols[..., t])
            if order > 0:
                vol = vol.astype(np.float32)
            out[..., t] = ndimage.map_coordinates(
                vol, coords, order=order, mode="constant", cval=cval, prefilter=order > 1
            ).reshape(shape)
        if data.ndim == 3:
            out = out[..., 0]
        res = nib.Nifti1Image(out, ref_affine)
        code = 1
        if ref_header is not None:
            code = int(ref_header["sform_code"]) or int(ref_header["qform_code"]) or 1
        res.header.set_sform(ref_affine, code=code)
        res.header.set_qform(ref_affine, code=code)
        units = img.header.get_xyzt_units() if hasattr(img.header, "get_xyzt_units") else None
        res.header.set_xyzt_units("mm", (units[1] if units else None) or "sec")
        if data.ndim == 4:
            zooms = res.header.get_zooms()
            res.header.set_zooms((*zooms[:3], float(img.header.get_zooms()[3])))
        return res

    def resample_mask(
        self,
        mask_img: nib.spatialimages.SpatialImage,
        reference: nib.spatialimages.SpatialImage | tuple[Sequence[int], np.ndarray],
        *,
        threshold: float = 0.5,
    ) -> np.ndarray:
        """A binary mask (SOURCE) on a TARGET grid, as a boolean array.

        Linear interpolation of the 0/1 mask then ``>= threshold``: this places a
        moved boundary to sub-voxel accuracy, where nearest neighbour loses about
        4 Dice points on small lesions (measured on the phantom).
        """
        soft = nib.Nifti1Image(
            (np.asanyarray(mask_img.dataobj) > 0).astype(np.float32), mask_img.affine
        )
        return np.asanyarray(self.resample(soft, reference, order=1).dataobj) >= threshold

    # ---------------------------------------------------------------- files
    def files(self, path: str | PathLike[str]) -> list[Path]:
        """The files :meth:`save` writes for ``path`` (JSON first, then the warp)."""
        path = _json_path(path)
        return [path] if self.warp is None else [path, warp_path(path)]

    def save(self, path: str | PathLike[str]) -> list[Path]:
        """Write the transform to ``path`` (``*.json``) and, if non-linear, its warp.

        Writes exactly :meth:`files` ``(path)`` (see the module docstring for the
        format) and returns that list. Not atomic: callers save to temporary
        names and rename.
        """
        path = _json_path(path)
        doc: dict = {
            "format": _FORMAT,
            "version": _VERSION,
            "source": self.source,
            "target": self.target,
            "convention": _CONVENTION,
            "affine": self.affine.tolist(),
            "pre_affine": None if self.pre_affine is None else self.pre_affine.tolist(),
            "warp": None,
        }
        if self.quality is not None:
            doc["quality"] = self.quality
        written = [path]
        if self.warp is not None:
            wpath = warp_path(path)
            doc["warp"] = {
                "file": wpath.name,
                "grid_shape": list(self.warp.shape),
                "grid_affine": self.warp.grid_affine.tolist(),
                "layout": _WARP_LAYOUT,
            }
            data = np.concatenate([self.warp.forward, self.warp.backward], axis=-1)
            wimg = nib.Nifti1Image(data, self.warp.grid_affine)
            wimg.header.set_xyzt_units("mm")
            wimg.header["descrip"] = b"msmri warp: u(0:3) v(3:6) RAS mm"
            nib.save(wimg, wpath)
            written.append(wpath)
        path.write_text(json.dumps(doc, indent=2) + "\n")
        return written

    @classmethod
    def load(cls, path: str | PathLike[str]) -> Transform:
        """Read a transform written by :meth:`save` (raises InputError if invalid)."""
        path = _json_path(path)
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise InputError(path, f"cannot read transform JSON: {exc}") from exc
        if not isinstance(doc, dict) or doc.get("format") != _FORMAT:
            raise InputError(path, f"expected an {_FORMAT!r} JSON document")
        if doc.get("version") != _VERSION:
            raise InputError(path, f"expected version {_VERSION}, got {doc.get('version')!r}")
        try:
            warp = None
            if doc.get("warp") is not None:
                meta = doc["warp"]
                wpath = warp_path(path)
                if not wpath.exists():
                    raise InputError(wpath, "warp file of a non-linear transform is missing")
                wdata = np.asanyarray(nib.load(wpath).dataobj)
                shape = tuple(int(s) for s in meta["grid_shape"])
                if wdata.shape != (*shape, 6):
                    raise InputError(
                        wpath, f"expected warp data of shape {(*shape, 6)}, got {wdata.shape}"
                    )
                warp = Warp(np.asarray(meta["grid_affine"]), wdata[..., :3], wdata[..., 3:])
            return cls(
                source=doc["source"],
                target=doc["target"],
                affine=np.asarray(doc["affine"]),
                warp=warp,
                pre_affine=None if doc.get("pre_affine") is None else doc["pre_affine"],
                quality=doc.get("quality") if isinstance(doc.get("quality"), dict) else None,
            )
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, InputError):
                raise
            raise InputError(path, f"invalid transform: {exc}") from exc


def warp_path(path: str | PathLike[str]) -> Path:
    """The warp file paired with transform JSON ``path`` (``*_xfm.json`` -> ``*_warp.nii.gz``)."""
    path = _json_path(path)
    name = path.name
    stem = name[: -len("_xfm.json")] if name.endswith("_xfm.json") else name[: -len(".json")]
    return path.with_name(stem + "_warp.nii.gz")


def _json_path(path: str | PathLike[str]) -> Path:
    path = Path(path)
    if not path.name.endswith(".json") or path.name == ".json":
        raise ValueError(f"transform path must end in .json (e.g. *_xfm.json), got {path}")
    return path


def _grid_points(shape: Sequence[int], affine: np.ndarray) -> np.ndarray:
    """World coordinates (N, 3) of every voxel centre of a grid, C order."""
    ijk = np.indices(tuple(shape), dtype=np.float64).reshape(3, -1).T
    return _apply(affine, ijk)


def _grid_of(reference: object) -> tuple[tuple[int, int, int], np.ndarray, object]:
    if isinstance(reference, tuple) and len(reference) == 2:
        shape, affine = reference
        header = None
    elif hasattr(reference, "affine") and hasattr(reference, "shape"):
        shape, affine, header = reference.shape, reference.affine, reference.header
    else:
        raise TypeError(f"reference must be a nibabel image or (shape, affine), got {reference!r}")
    shape = tuple(int(s) for s in tuple(shape)[:3])
    if len(shape) != 3:
        raise ValueError(f"reference grid must be 3-D, got shape {shape}")
    return shape, _as_affine(affine, "reference affine"), header


def _compose_warps(w1: Warp, m: np.ndarray, w2: Warp) -> Warp:
    """Single warp equal to ``W1 o M o W2`` (forward) on ``w2``'s grid."""
    pts = _grid_points(w2.shape, w2.grid_affine)
    fwd = np.empty((len(pts), 3), dtype=np.float32)
    bwd = np.empty((len(pts), 3), dtype=np.float32)
    m_inv = np.linalg.inv(m)
    for s in range(0, len(pts), _CHUNK):
        p = pts[s : s + _CHUNK]
        fwd[s : s + _CHUNK] = w1.apply(_apply(m, w2.apply(p))) - p
        bwd[s : s + _CHUNK] = w2.apply_inverse(_apply(m_inv, w1.apply_inverse(p))) - p
    return Warp(w2.grid_affine, fwd.reshape(*w2.shape, 3), bwd.reshape(*w2.shape, 3))


# --------------------------------------------------------------------------- images


def _volume(img: object, name: str) -> tuple[np.ndarray, np.ndarray]:
    if not hasattr(img, "affine") or not hasattr(img, "dataobj"):
        raise TypeError(f"{name} must be a nibabel image, got {type(img)}")
    data = np.asanyarray(img.dataobj)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InputError(img.get_filename(), f"{name}: expected a 3-D image, got {data.shape}")
    data = np.asarray(data, dtype=np.float32)
    if not np.all(np.isfinite(data)):
        raise InputError(img.get_filename(), f"{name}: image contains NaN or infinite values")
    if not np.any(data):
        raise InputError(img.get_filename(), f"{name}: image is all zeros")
    return data, np.asarray(img.affine, dtype=np.float64)


def _working_grid(
    shape: Sequence[int], affine: np.ndarray, resolution_mm: float | None
) -> tuple[tuple[int, int, int], np.ndarray]:
    """Grid of the same field of view and axes with voxels no finer than ``resolution_mm``."""
    vox = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    if resolution_mm is None:
        return tuple(int(s) for s in shape), affine
    new_vox = np.maximum(vox, float(resolution_mm))
    factor = new_vox / vox  # new voxel size in old voxels
    new_shape = tuple(
        int(max(1, np.ceil(s / f - 1e-6))) for s, f in zip(shape, factor, strict=True)
    )
    scale = np.diag([*factor, 1.0])
    scale[:3, 3] = -0.5 + 0.5 * factor  # first new voxel centre, in old voxel units
    return new_shape, affine @ scale


def _to_working(
    data: np.ndarray, affine: np.ndarray, resolution_mm: float | None, *, order: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Anti-alias and resample ``data`` onto its working grid (no-op if already coarse)."""
    from scipy import ndimage

    shape, new_aff = _working_grid(data.shape, affine, resolution_mm)
    if shape == data.shape and np.allclose(new_aff, affine):
        return data, affine
    vox = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    new_vox = np.sqrt((new_aff[:3, :3] ** 2).sum(axis=0))
    src = data.astype(np.float32)
    if order > 0:
        sigma_mm = np.sqrt(np.maximum(new_vox**2 - vox**2, 0.0)) / 2.3548
        src = ndimage.gaussian_filter(src, sigma_mm / vox, mode="nearest")
    vox_map = np.linalg.inv(affine) @ new_aff
    out = ndimage.affine_transform(
        src, vox_map[:3, :3], offset=vox_map[:3, 3], output_shape=shape, order=order,
        mode="nearest", prefilter=False,
    )
    return out.astype(np.float32), new_aff


def _crop_to_content(
    data: np.ndarray, affine: np.ndarray, mask: np.ndarray | None, margin: int = 3
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Crop to the bounding box of the mask (or of non-zero voxels) plus ``margin``.

    Voxels outside the mask do not enter the metric and a zero background
    (skull-stripped image) carries no information, so this only saves time.
    """
    nz = np.nonzero(data if mask is None else mask)
    lo = [max(0, int(i.min()) - margin) for i in nz]
    hi = [min(s, int(i.max()) + 1 + margin) for i, s in zip(nz, data.shape, strict=True)]
    sl = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    shift = np.eye(4)
    shift[:3, 3] = lo
    cropped = None if mask is None else np.ascontiguousarray(mask[sl])
    return np.ascontiguousarray(data[sl]), affine @ shift, cropped


def _mask_volume(mask: object, name: str, like: np.ndarray) -> np.ndarray:
    data, _ = _volume(mask, name)
    if data.shape != like.shape:
        raise InputError(
            mask.get_filename(),
            f"{name}: expected the shape of its image {like.shape}, got {data.shape}",
        )
    return (data > 0).astype(np.float32)


# --------------------------------------------------------------------------- affine


def _pyramid(level_iters: Sequence[int]) -> tuple[list[int], list[float], list[int]]:
    iters = [int(i) for i in level_iters]
    if not iters or any(i < 0 for i in iters):
        raise ValueError(f"level_iters must be non-negative iteration counts, got {level_iters}")
    n = len(iters)
    factors = [2 ** (n - 1 - k) for k in range(n)]
    sigmas = [float(f - 1) for f in factors]
    return iters, sigmas, factors


def _register_linear(
    stages: tuple[str, ...],
    static_img,
    moving_img,
    *,
    static_mask,
    moving_mask,
    level_iters: Sequence[int],
    sampling: float | str,
    metric: str,
    nbins: int,
    resolution_mm: float | None,
    source: str,
    target: str,
    init: str | np.ndarray = "com",
) -> Transform:
    from dipy.align.imaffine import (
        AffineRegistration,
        MutualInformationMetric,
        transform_centers_of_mass,
    )
    from dipy.align.transforms import (
        AffineTransform3D,
        RigidTransform3D,
        TranslationTransform3D,
    )

    if metric != "mi":
        raise ValueError(f"metric must be 'mi' (mutual information), got {metric!r}")
    if isinstance(init, str) and init not in ("com", "header"):
        raise ValueError(f"init must be 'com' (centres of mass), 'header' or a 4x4 matrix, got {init!r}")
    masked = static_mask is not None or moving_mask is not None
    if sampling == "auto":
        sampling = 1.0 if masked else 0.25
    if isinstance(sampling, str) or not 0 < float(sampling) <= 1:
        raise ValueError(f"sampling must be 'auto' or a proportion in (0, 1], got {sampling!r}")
    sampling = float(sampling)
    if masked and sampling < 1:
        raise ValueError(
            f"masks need dense sampling (sampling=1.0 or 'auto') in DIPY, got {sampling}"
        )
    static, s_aff = _volume(static_img, "static image")
    moving, m_aff = _volume(moving_img, "moving image")
    s_mask = None if static_mask is None else _mask_volume(static_mask, "static mask", static)
    m_mask = None if moving_mask is None else _mask_volume(moving_mask, "moving mask", moving)
    static_w, s_aff_w = _to_working(static, s_aff, resolution_mm)
    moving_w, m_aff_w = _to_working(moving, m_aff, resolution_mm)
    if s_mask is not None:
        s_mask = (_to_working(s_mask, s_aff, resolution_mm, order=0)[0] > 0.5).astype(np.int32)
    if m_mask is not None:
        m_mask = (_to_working(m_mask, m_aff, resolution_mm, order=0)[0] > 0.5).astype(np.int32)

    # skull-stripped (zero-background) images: optimise over the content's bounding box
    static_w, s_aff_w, s_mask = _crop_to_content(static_w, s_aff_w, s_mask)
    moving_w, m_aff_w, m_mask = _crop_to_content(moving_w, m_aff_w, m_mask)

    iters, sigmas, factors = _pyramid(level_iters)

    def optimiser(n_levels: int) -> AffineRegistration:
        return AffineRegistration(
            metric=MutualInformationMetric(
                nbins=nbins, sampling_proportion=None if sampling == 1 else sampling
            ),
            level_iters=iters[:n_levels],
            sigmas=sigmas[:n_levels],
            factors=factors[:n_levels],
            verbosity=0,
        )

    # The stages before the last only initialise the next one, so they stop one pyramid
    # level short of the finest grid, where one metric evaluation costs about 8 x more than
    # on the next coarser level; the last stage refines at full resolution. Measured on
    # the tiny phantom's mean b=0 -> T1w (2 mm, a loaded machine): 161 -> 100 metric
    # evaluations, 29 s -> 14 s; the same error against the true pose (0.25 mm, mean over
    # the corners of a 120 x 140 x 100 mm box).
    init_reg = optimiser(max(1, len(iters) - 1))
    final_reg = optimiser(len(iters))
    if not isinstance(init, str):  # a known starting pull-back (TARGET world -> SOURCE world)
        current = _as_affine(init, "init")
    elif init == "header":  # the scanner's world coordinates already align the images
        current = np.eye(4)
    else:
        current = transform_centers_of_mass(
            static_w if s_mask is None else static_w * s_mask,
            s_aff_w,
            moving_w if m_mask is None else moving_w * m_mask,
            m_aff_w,
        ).affine
    models = {
        "translation": TranslationTransform3D,
        "rigid": RigidTransform3D,
        "affine": AffineTransform3D,
    }
    for k, stage in enumerate(stages):
        reg = final_reg if k == len(stages) - 1 else init_reg
        result = reg.optimize(
            static_w,
            moving_w,
            models[stage](),
            None,
            static_grid2world=s_aff_w,
            moving_grid2world=m_aff_w,
            starting_affine=current,
            static_mask=s_mask,
            moving_mask=m_mask,
        )
        current = result.affine
    return Transform(source=source, target=target, affine=current)


def register_rigid(
    static_img,
    moving_img,
    *,
    static_mask=None,
    moving_mask=None,
    level_iters: Sequence[int] = (1000, 100, 10),
    sampling: float | str = "auto",
    metric: str = "mi",
    nbins: int = 32,
    resolution_mm: float | None = 2.0,
    source: str = "moving",
    target: str = "static",
    init: str | np.ndarray = "com",
) -> Transform:
    """Rigid (6 dof) registration of ``moving_img`` (SOURCE) to ``static_img`` (TARGET).

    Centre of mass -> translation -> rigid, each optimised by DIPY's
    ``AffineRegistration`` with Mattes mutual information (``nbins`` bins),
    suited to different contrasts (e.g. FLAIR -> T1w, mean b=0 -> T1w).

    Parameters
    ----------
    static_img, moving_img : nibabel images (3-D)
    static_mask, moving_mask : nibabel images or None
        Restrict the metric to these voxels (same grid as their image; > 0 = in).
    level_iters : sequence of int
        Iterations per pyramid level, coarsest first; level ``k`` of ``n`` uses
        a subsampling factor ``2**(n-1-k)`` and smoothing sigma ``factor - 1``
        voxels.
    sampling : "auto" or float
        Proportion of working-grid voxels sampled by the metric (on a jittered
        regular grid, deterministic); 1.0 = all (dense). DIPY supports masks only
        with dense sampling, so "auto" means 0.25 without masks and 1.0 with.
    metric : "mi"
    resolution_mm : float or None
        Images finer than this are anti-aliased and resampled to this isotropic
        spacing before optimisation (None: use the native grids).
    source, target : str
        Space names stored in the result.
    init : {"com", "header"} or 4x4 array
        Starting point: the centres of mass (images from different sessions or
        devices), the identity in world coordinates, i.e. the scanner's header
        alignment (images of one session, whose headers share the scanner's
        patient coordinates), or a given TARGET world -> SOURCE world matrix.

    Returns
    -------
    Transform
        Linear SOURCE -> TARGET transform.
    """
    return _register_linear(
        ("translation", "rigid"),
        static_img,
        moving_img,
        static_mask=static_mask,
        moving_mask=moving_mask,
        level_iters=level_iters,
        sampling=sampling,
        metric=metric,
        nbins=nbins,
        resolution_mm=resolution_mm,
        source=source,
        target=target,
        init=init,
    )


def register_affine(
    static_img,
    moving_img,
    *,
    static_mask=None,
    moving_mask=None,
    level_iters: Sequence[int] = (1000, 100, 10),
    sampling: float | str = "auto",
    metric: str = "mi",
    nbins: int = 32,
    resolution_mm: float | None = 2.0,
    source: str = "moving",
    target: str = "static",
    init: str | np.ndarray = "com",
) -> Transform:
    """Affine (12 dof) registration: centre of mass -> translation -> rigid -> affine.

    Same parameters as :func:`register_rigid`.
    """
    return _register_linear(
        ("translation", "rigid", "affine"),
        static_img,
        moving_img,
        static_mask=static_mask,
        moving_mask=moving_mask,
        level_iters=level_iters,
        sampling=sampling,
        metric=metric,
        nbins=nbins,
        resolution_mm=resolution_mm,
        source=source,
        target=target,
        init=init,
    )


def normalized_mutual_information(
    static_img, moving_img, transform: Transform | None = None, *, mask=None, bins: int = 64
) -> float:
    """Normalised mutual information of two images, sampled on the static (TARGET) grid.

    ``NMI = (H(A) + H(B)) / H(A, B)`` (Studholme et al., Pattern Recognition 1999):
    1 for independent images, 2 for identical ones, independent of the overlap
    size. Both images are sampled trilinearly at the static voxel centres shifted
    by half a voxel along every axis (inside ``mask`` if given, else the static
    image's non-zero voxels), the moving one through ``transform`` (SOURCE =
    moving, TARGET = static; None = the identity in world coordinates, i.e. the
    header alignment); points falling outside the moving image are left out.
    The half-voxel shift makes every candidate transform interpolate: sampled on
    the grid itself, the identity between two images on one grid reads raw
    voxels while any sub-voxel shift averages neighbours, and that smoothing alone
    raises the NMI (the interpolation artefact of mutual information, Pluim et al.,
    Comput Vis Image Underst 2000): on openms-patient19, whose FLAIR is already on
    the T1w grid, a 0.5 mm registration gained 0.011 on the grid and 0.0006 with
    the shift. Intensities are binned between their 0.5 and 99.5 percentiles.
    Unlike the optimiser's metric (on a coarse working grid), this is evaluated
    at the static image's own resolution, so that candidate transforms can be
    compared.
    """
    from scipy import ndimage

    static, s_aff = _volume(static_img, "static image")
    moving, m_aff = _volume(moving_img, "moving image")
    sel = static != 0 if mask is None else _mask_volume(mask, "static mask", static) > 0
    idx = np.argwhere(sel).astype(np.float64) + 0.5
    if idx.shape[0] < 100:
        raise ValueError("fewer than 100 static voxels to compare")
    pts = _apply(s_aff, idx)
    if transform is not None:
        pts = transform.target_to_source(pts)
    vox = _apply(np.linalg.inv(m_aff), pts)
    b = ndimage.map_coordinates(moving, vox.T, order=1, mode="constant", cval=np.nan)
    a = ndimage.map_coordinates(static, idx.T, order=1, mode="nearest")
    ok = np.isfinite(b)
    a, b = a[ok], b[ok]
    ranges = [np.percentile(a, [0.5, 99.5]), np.percentile(b, [0.5, 99.5])]
    hist, _, _ = np.histogram2d(a, b, bins=bins, range=ranges)
    p = hist / hist.sum()

    def entropy(q: np.ndarray) -> float:
        q = q[q > 0]
        return float(-np.sum(q * np.log(q)))

    return (entropy(p.sum(axis=1)) + entropy(p.sum(axis=0))) / entropy(p)


def mean_displacement_mm(transform: Transform, mask_img, other: Transform | None = None) -> float:
    """Mean distance (mm) between where ``transform`` and ``other`` (default: the
    identity) send the voxels of a TARGET-space mask."""
    data, aff = _volume(mask_img, "mask")
    pts = _apply(aff, np.argwhere(data > 0).astype(np.float64))
    ref = pts if other is None else other.target_to_source(pts)
    return float(np.mean(np.linalg.norm(transform.target_to_source(pts) - ref, axis=1)))


#: Failure threshold of :func:`registration_quality`'s NMI sharpness (see there).
MIN_NMI_SHARPNESS = 0.2


def registration_quality(
    static_img,
    moving_img,
    transform: Transform,
    *,
    mask,
    shift_mm: float = 3.0,
    angle_deg: float = 3.0,
    min_sharpness: float = MIN_NMI_SHARPNESS,
    step: int = 2,
) -> dict:
    """How specific a rigid alignment of two images of one person is: the NMI's peak.

    The normalised mutual information (:func:`normalized_mutual_information`, inside
    ``mask`` on the static grid, every ``step``-th voxel along each axis) is evaluated
    at the solution and after twelve perturbations of it (+-``shift_mm`` along and
    +-``angle_deg`` about each axis, about the mask's centroid). The *sharpness* is the
    fraction of the solution's information (``NMI - 1``) lost on average under them.
    A right alignment of the same anatomy sits on a sharp peak; another anatomy, or a
    wrong local optimum, does not.

    Measured on real scans (openms-longitudinal-patient01, openms-patient19): FLAIR or
    T2w -> T1w of the same person at the database's alignment 0.40-0.45 (patient01,
    3-4 mm slices), 0.66 (patient19, 1 mm); another person's FLAIR or T1w registered
    to the T1w by the same mutual-information registration 0.05-0.11. The failure
    threshold ``min_sharpness`` (0.2) sits between.

    Returns a JSON-ready dict: ``nmi``, ``nmi_sharpness``, ``local_maximum`` (no
    perturbation raises the NMI), ``threshold``, ``passed`` and the settings.
    """
    from pipeline.motion import rigid_matrix

    static, s_aff = _volume(static_img, "static image")
    m = _mask_volume(mask, "static mask", static) > 0
    sub = np.zeros_like(m)
    sub[::step, ::step, ::step] = True
    sel = nib.Nifti1Image((m & sub).astype(np.uint8), s_aff)
    centre = _apply(s_aff, np.argwhere(m).mean(axis=0)[None])[0]
    c = np.eye(4)
    c[:3, 3] = centre
    ci = np.linalg.inv(c)

    def nmi(matrix: np.ndarray) -> float:
        t = Transform(transform.source, transform.target, matrix)
        return normalized_mutual_information(static_img, moving_img, t, mask=sel)

    base = np.asarray(transform.affine, dtype=float)
    n0 = nmi(base)
    moved = []
    for axis in range(6):
        for sign in (-1.0, 1.0):
            p = np.zeros(6)
            p[axis] = sign * (shift_mm if axis < 3 else np.deg2rad(angle_deg))
            moved.append(nmi(base @ c @ rigid_matrix(p) @ ci))
    moved = np.asarray(moved)
    sharp = float((n0 - moved.mean()) / max(n0 - 1.0, 1e-9))
    return {
        "metric": "NMI sharpness: fraction of (NMI - 1) lost on average under +-"
        f"{shift_mm:g} mm / +-{angle_deg:g} degree perturbations of the solution",
        "nmi": round(float(n0), 6),
        "nmi_sharpness": round(sharp, 4),
        "local_maximum": bool(np.all(moved < n0)),
        "threshold": min_sharpness,
        "passed": bool(sharp >= min_sharpness),
    }


@dataclass(frozen=True)
class HeaderCheckedRegistration:
    """Result of :func:`register_rigid_or_keep_header`.

    ``transform`` is the registered one when it improves the full-resolution
    NMI over the header alignment by more than ``tolerance``, else the identity.
    """

    transform: Transform
    kept_header: bool
    nmi_header: float
    nmi_registered: float
    registered_displacement_mm: float
    tolerance: float
    start: str = "header alignment"

    def quality(self) -> dict:
        """JSON-ready registration-quality record (stored in the transform's sidecar)."""
        chosen = self.nmi_header if self.kept_header else self.nmi_registered
        return {
            "metric": "normalised mutual information on the target grid (brain mask)",
            "start": self.start,
            "nmi": round(chosen, 6),
            "nmi_header_alignment": round(self.nmi_header, 6),
            "nmi_registered": round(self.nmi_registered, 6),
            "registered_displacement_from_header_mm": round(self.registered_displacement_mm, 3),
            "kept_header_alignment": self.kept_header,
            "rule": f"registered transform kept only if it raises the NMI by more than "
            f"{self.tolerance}",
        }


def register_rigid_or_keep_header(
    static_img,
    moving_img,
    *,
    static_mask,
    tolerance: float = 2e-3,
    resolution_mm: float | None = 1.0,
    level_iters: Sequence[int] = (100, 100),
    source: str = "moving",
    target: str = "static",
    prior: Transform | None = None,
) -> HeaderCheckedRegistration:
    """Rigid registration of two images of one session, or their header alignment.

    Images acquired in one session share the scanner's patient coordinates, so
    their headers align them already unless the head moved between the series.
    ``static_img`` is the whole (not skull-stripped) target image and
    ``static_mask`` its brain mask. The registration (of the masked target) starts from the header alignment (``init="header"``) on a
    ``resolution_mm`` grid; then the normalised mutual information of both
    candidates is compared at the static image's full resolution
    (:func:`normalized_mutual_information`, inside ``static_mask``), and the
    registration is kept only if it improves it by more than ``tolerance``.
    An unnecessary registration only adds interpolation error: a lesion mask drawn on
    a FLAIR that is already on the T1w grid would be moved and blurred for nothing.

    The tolerance 2e-3 comes from the real scans: unnecessary registrations gained
    0.0006 (openms-patient19, FLAIR already co-registered on the T1w grid; the
    registration moved it 0.5 mm) and 0.0010 (openms-longitudinal-patient01 session
    1, header 0.37 mm from the database's alignment, registration 0.39 mm), while
    the needed one gained 0.0068 (session 2, header 0.93 mm off the database's
    alignment, registration 0.33 mm).
    """
    static, s_aff = _volume(static_img, "static image")
    inside = _mask_volume(static_mask, "static mask", static) > 0
    brain = nib.Nifti1Image(np.where(inside, static, 0).astype(np.float32), s_aff)
    if prior is not None and not prior.is_linear:
        raise ValueError("prior must be a linear transform")
    start = np.eye(4) if prior is None else prior.affine
    reg = register_rigid(
        brain, moving_img, static_mask=static_mask, init=start,
        resolution_mm=resolution_mm, level_iters=level_iters, source=source, target=target,
    )
    ident = Transform(source, target, start)
    nmi_h = normalized_mutual_information(static_img, moving_img, ident, mask=static_mask)
    nmi_r = normalized_mutual_information(static_img, moving_img, reg, mask=static_mask)
    keep = not nmi_r > nmi_h + tolerance
    return HeaderCheckedRegistration(
        transform=ident if keep else reg,
        kept_header=keep,
        nmi_header=nmi_h,
        nmi_registered=nmi_r,
        registered_displacement_mm=mean_displacement_mm(reg, static_mask, ident),
        tolerance=tolerance,
        start="header alignment" if prior is None else f"given transform ({prior.source} -> {prior.target})",
    )


# --------------------------------------------------------------------------- SyN


def register_syn(
    static_img,
    moving_img,
    *,
    prealign: Transform | None,
    level_iters: Sequence[int] = (10, 10, 5),
    metric: str = "cc",
    cc_radius: int = 4,
    resolution_mm: float | None = None,
    source: str | None = None,
    target: str | None = None,
) -> Transform:
    """Non-linear (SyN) registration of ``moving_img`` (SOURCE) to ``static_img`` (TARGET).

    The moving image is first resampled onto the static working grid through
    ``prealign`` (a linear SOURCE -> TARGET transform, e.g. from
    :func:`register_affine`; None = identity), then DIPY's
    ``SymmetricDiffeomorphicRegistration`` estimates the warp between the two.
    The result is ``prealign`` followed by the warp, i.e. its ``affine`` is
    ``prealign.affine`` and its displacement fields lie on the static working
    grid.

    Parameters
    ----------
    static_img, moving_img : nibabel images (3-D)
        Both should be skull-stripped (the metric has no masks).
    prealign : Transform or None
    level_iters : sequence of int
        SyN iterations per level, coarsest first (levels halve the resolution).
    metric : "cc" (local cross-correlation, same or similar contrasts), "em"
        (expectation-maximisation, different contrasts) or "ssd".
    cc_radius : int
        Half-width (voxels of the working grid) of the cross-correlation window.
    resolution_mm : float or None
        Working (and displacement field) resolution; None = the static grid.
    source, target : str or None
        Space names; default to ``prealign``'s, else "moving" / "static".
    """
    from dipy.align.imwarp import SymmetricDiffeomorphicRegistration
    from dipy.align.metrics import CCMetric, EMMetric, SSDMetric

    if prealign is not None and not isinstance(prealign, Transform):
        raise TypeError(f"prealign must be a Transform or None, got {type(prealign)}")
    if prealign is not None and not prealign.is_linear:
        raise ValueError("prealign must be a linear Transform")
    metrics = {
        "cc": lambda: CCMetric(3, sigma_diff=2.0, radius=int(cc_radius)),
        "em": lambda: EMMetric(3),
        "ssd": lambda: SSDMetric(3),
    }
    if metric not in metrics:
        raise ValueError(f"metric must be one of {sorted(metrics)}, got {metric!r}")
    iters = [int(i) for i in level_iters]
    if not iters or any(i < 0 for i in iters):
        raise ValueError(f"level_iters must be non-negative iteration counts, got {level_iters}")
    source = source or (prealign.source if prealign is not None else "moving")
    target = target or (prealign.target if prealign is not None else "static")
    if prealign is None:
        prealign = Transform.identity(source, target)

    static, s_aff = _volume(static_img, "static image")
    moving, m_aff = _volume(moving_img, "moving image")
    static_w, grid = _to_working(static, s_aff, resolution_mm)
    # moving -> static working grid through the pre-alignment (anti-aliased if finer)
    grid_vox = float(np.sqrt((grid[:3, :3] ** 2).sum(axis=0)).min())
    moving_s, m_aff_s = _to_working(moving, m_aff, grid_vox)
    moving_w = np.asarray(
        prealign.resample(nib.Nifti1Image(moving_s, m_aff_s), (static_w.shape, grid)).dataobj
    )

    sdr = SymmetricDiffeomorphicRegistration(metrics[metric](), level_iters=iters)
    sdr.verbosity = 0  # silence DIPY's per-level INFO logging (not a constructor argument)
    mapping = sdr.optimize(
        static_w, moving_w, static_grid2world=grid, moving_grid2world=grid, prealign=None
    )
    # static world x -> prealigned moving world: x + get_forward_field()(x); the
    # inverse uses get_backward_field() (DIPY's result map has is_inverse set).
    warp = Warp(
        np.asarray(mapping.disp_grid2world, dtype=np.float64),
        np.asarray(mapping.get_forward_field()),
        np.asarray(mapping.get_backward_field()),
    )
    return Transform(source=source, target=target, affine=prealign.affine, warp=warp)


# --------------------------------------------------------------------------- template


def load_mni_template_brain(resolution: int = 2) -> nib.Nifti1Image:
    """nilearn's MNI152 2009 T1 template masked by its brain mask (packaged, offline)."""
    from nilearn import datasets

    tpl = datasets.load_mni152_template(resolution=resolution)
    mask = datasets.load_mni152_brain_mask(resolution=resolution)
    data = np.asarray(tpl.get_fdata(), dtype=np.float32) * (np.asarray(mask.dataobj) > 0)
    img = nib.Nifti1Image(data, tpl.affine)
    img.header.set_sform(tpl.affine, code=4)
    img.header.set_qform(tpl.affine, code=4)
    img.header.set_xyzt_units("mm")
    return img


def register_to_template(
    t1_brain_img,
    template_brain_img=None,
    *,
    syn: bool = True,
    resolution_mm: float = 2.0,
    affine_level_iters: Sequence[int] = (1000, 100, 10),
    syn_level_iters: Sequence[int] = (10, 10, 5),
    source: str = "T1w",
    target: str = MNI_SPACE,
) -> Transform:
    """Skull-stripped T1w brain -> MNI template brain: affine (MI) then, if ``syn``, SyN (CC).

    ``template_brain_img`` defaults to :func:`load_mni_template_brain` at 2 mm.
    Both stages run on isotropic ``resolution_mm`` working grids; the SyN
    displacement fields lie on the template's working grid.
    """
    if template_brain_img is None:
        template_brain_img = load_mni_template_brain(2)
    affine = register_affine(
        template_brain_img,
        t1_brain_img,
        level_iters=affine_level_iters,
        resolution_mm=resolution_mm,
        source=source,
        target=target,
    )
    if not syn:
        return affine
    return register_syn(
        template_brain_img,
        t1_brain_img,
        prealign=affine,
        level_iters=syn_level_iters,
        resolution_mm=resolution_mm,
    )
