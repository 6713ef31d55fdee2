"""Bundle definitions as data and waypoint-ROI bundle recognition.

A bundle is defined in template (MNI152) millimetres by

* ``inclusion``: waypoint ROIs the streamline must pass, in the listed order
  when ``ordered`` is true (either traversal direction);
* ``exclusion``: ROIs it must not touch;
* ``start_region`` / ``end_region`` (optional): one end of the streamline must
  lie in each;
* ``hemisphere`` (``left``, ``right`` or ``both``) and ``crosses_midline``: a
  bundle that does not cross the midline rejects streamlines reaching more than
  ``midline_margin_mm`` into the other hemisphere;
* ``min_length_mm``;
* ``start``: name of one of its ROIs (inclusion, exclusion-free ``landmarks``
  or start/end region); node 1 of every profile is the streamline end nearest
  that ROI's centre.

ROIs are one of ``box: {lo: [x,y,z], hi: [x,y,z]}``, ``sphere: {centre:
[x,y,z], radius: r}``, ``plane: {axis: x|y|z, value: v, lo: [...], hi: [...]}``
(crossed between two consecutive points, crossing point inside lo..hi on the
other two axes) or ``image: path, label: N`` (a label image in MNI space; a
relative path is relative to the YAML file).

Recognition maps every streamline point into MNI space with a caller-supplied
point mapping (e.g. ``Transform.source_to_target`` of a DWI->MNI
:class:`pipeline.registration.Transform`) and tests the ROIs there, which is
equivalent to carrying the ROIs into DWI space and avoids resampling thin
slabs onto a coarse grid.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = [
    "DEFAULT_TRACTS_YAML",
    "ROI",
    "BundleDefinition",
    "BundleDefinitionError",
    "load_bundle_definitions",
    "map_streamlines",
    "recognize_bundles",
]

DEFAULT_TRACTS_YAML = Path(__file__).resolve().parents[2] / "configs" / "tracts.yaml"
_AXES = {"x": 0, "y": 1, "z": 2}
_HEMIS = ("left", "right", "both")


class BundleDefinitionError(ValueError):
    """A bundle-definition file is invalid (the message names the file and the key)."""


@functools.lru_cache(maxsize=16)
def _load_label_image(path: str) -> tuple[np.ndarray, np.ndarray]:
    import nibabel as nib

    img = nib.load(path)
    return np.asarray(img.dataobj), np.linalg.inv(img.affine)


@dataclass(frozen=True)
class ROI:
    """One region of interest in MNI mm (see the module docstring for the kinds)."""

    name: str
    kind: str  # box | sphere | plane | image
    lo: tuple[float, float, float] | None = None
    hi: tuple[float, float, float] | None = None
    centre_mm: tuple[float, float, float] | None = None
    radius: float | None = None
    axis: int | None = None
    value: float | None = None
    image: str | None = None
    label: int | None = None

    # ------------------------------------------------------------ geometry
    def _image_inside(self, points: np.ndarray) -> np.ndarray:
        data, inv = _load_label_image(str(self.image))
        ijk = np.rint(points @ inv[:3, :3].T + inv[:3, 3]).astype(int)
        ok = np.all((ijk >= 0) & (ijk < np.asarray(data.shape[:3])), axis=1)
        out = np.zeros(len(points), bool)
        out[ok] = data[ijk[ok, 0], ijk[ok, 1], ijk[ok, 2]] == self.label
        return out

    def point_hits(self, points: np.ndarray, next_points: np.ndarray | None = None) -> np.ndarray:
        """Boolean per point: inside the ROI (planes: segment point->next crosses it)."""
        if self.kind == "box":
            return np.all((points >= self.lo) & (points <= self.hi), axis=1)
        if self.kind == "sphere":
            return np.sum((points - self.centre_mm) ** 2, axis=1) <= self.radius**2
        if self.kind == "image":
            return self._image_inside(points)
        # plane
        a = self.axis
        if next_points is None:
            next_points = points
        d0, d1 = points[:, a] - self.value, next_points[:, a] - self.value
        cross = (d0 * d1 <= 0) & (np.abs(d0 - d1) > 0)
        t = np.where(cross, d0 / np.where(d0 - d1 == 0, 1, d0 - d1), 0)
        x = points + t[:, None] * (next_points - points)
        lo = np.asarray(self.lo, float)
        hi = np.asarray(self.hi, float)
        inside = np.ones(len(points), bool)
        for k in range(3):
            if k != a:
                inside &= (x[:, k] >= lo[k]) & (x[:, k] <= hi[k])
        return cross & inside

    @property
    def centre(self) -> np.ndarray:
        """A representative point (used to orient streamlines)."""
        if self.kind == "sphere":
            return np.asarray(self.centre_mm, float)
        if self.kind == "image":
            data, inv = _load_label_image(str(self.image))
            ijk = np.argwhere(data == self.label)
            if len(ijk) == 0:
                return np.full(3, np.nan)
            aff = np.linalg.inv(inv)
            return ijk.mean(0) @ aff[:3, :3].T + aff[:3, 3]
        c = (np.asarray(self.lo, float) + np.asarray(self.hi, float)) / 2
        if self.kind == "plane":
            c[self.axis] = self.value
        return c


@dataclass(frozen=True)
class BundleDefinition:
    """A bundle's recognition rules (see the module docstring)."""

    name: str
    inclusion: tuple[ROI, ...]
    exclusion: tuple[ROI, ...] = ()
    landmarks: tuple[ROI, ...] = ()
    start_region: ROI | None = None
    end_region: ROI | None = None
    start: str | None = None
    hemisphere: str = "both"
    crosses_midline: bool = False
    midline_margin_mm: float = 5.0
    min_length_mm: float = 0.0
    ordered: bool = True
    description: str = ""
    truth_label: str | None = None

    def roi(self, name: str) -> ROI:
        rois = [*self.inclusion, *self.exclusion, *self.landmarks]
        rois += [r for r in (self.start_region, self.end_region) if r is not None]
        for r in rois:
            if r.name == name:
                return r
        raise KeyError(f"bundle {self.name} has no ROI named {name!r}")

    @property
    def start_point(self) -> np.ndarray | None:
        """MNI point that node 1 of the oriented streamlines is nearest to."""
        return None if self.start is None else self.roi(self.start).centre


# ---------------------------------------------------------------------------- loading
def _err(path: Path, key: str, msg: str) -> BundleDefinitionError:
    return BundleDefinitionError(f"{path}: {key}: {msg}")


def _vec3(path: Path, key: str, val: object) -> tuple[float, float, float]:
    if not isinstance(val, Sequence) or isinstance(val, str) or len(val) != 3:
        raise _err(path, key, f"expected a list of 3 numbers (MNI mm), got {val!r}")
    try:
        out = tuple(float(v) for v in val)
    except (TypeError, ValueError):
        raise _err(path, key, f"expected a list of 3 numbers (MNI mm), got {val!r}") from None
    if not all(np.isfinite(out)):
        raise _err(path, key, f"values must be finite, got {val!r}")
    return out  # type: ignore[return-value]


def _parse_roi(path: Path, key: str, spec: object, default_name: str) -> ROI:
    if not isinstance(spec, Mapping):
        raise _err(path, key, f"an ROI must be a mapping, got {spec!r}")
    name = str(spec.get("name", default_name))
    kinds = [k for k in ("box", "sphere", "plane", "image") if k in spec]
    if len(kinds) != 1:
        raise _err(path, key, "an ROI needs exactly one of 'box', 'sphere', 'plane', 'image'")
    kind = kinds[0]
    allowed = {"name", kind, "label", "comment"}
    extra = sorted(set(spec) - allowed)
    if extra:
        raise _err(path, f"{key}.{extra[0]}", f"unknown ROI key; allowed {sorted(allowed)}")
    body = spec[kind]
    if kind == "image":
        if "label" not in spec:
            raise _err(path, f"{key}.label", "an image ROI needs an integer 'label'")
        img = Path(str(body))
        if not img.is_absolute():
            img = path.parent / img
        if not img.exists():
            raise _err(path, f"{key}.image", f"label image {img} does not exist")
        try:
            label = int(spec["label"])
        except (TypeError, ValueError):
            raise _err(path, f"{key}.label", f"must be an integer, got {spec['label']!r}") from None
        return ROI(name=name, kind="image", image=str(img), label=label)
    if not isinstance(body, Mapping):
        raise _err(path, f"{key}.{kind}", f"expected a mapping, got {body!r}")
    if kind == "box":
        for k in ("lo", "hi"):
            if k not in body:
                raise _err(path, f"{key}.box.{k}", "missing")
        lo, hi = _vec3(path, f"{key}.box.lo", body["lo"]), _vec3(path, f"{key}.box.hi", body["hi"])
        if any(a > b for a, b in zip(lo, hi, strict=True)):
            raise _err(path, f"{key}.box", f"lo {lo} must be <= hi {hi}")
        return ROI(name=name, kind="box", lo=lo, hi=hi)
    if kind == "sphere":
        for k in ("centre", "radius"):
            if k not in body:
                raise _err(path, f"{key}.sphere.{k}", "missing")
        radius = body["radius"]
        if not isinstance(radius, int | float) or radius <= 0:
            raise _err(path, f"{key}.sphere.radius", f"must be a positive number, got {radius!r}")
        return ROI(
            name=name,
            kind="sphere",
            centre_mm=_vec3(path, f"{key}.sphere.centre", body["centre"]),
            radius=float(radius),
        )
    # plane
    axis = body.get("axis")
    if axis not in _AXES:
        raise _err(path, f"{key}.plane.axis", f"must be one of x, y, z, got {axis!r}")
    if not isinstance(body.get("value"), int | float):
        raise _err(path, f"{key}.plane.value", f"must be a number, got {body.get('value')!r}")
    lo = _vec3(path, f"{key}.plane.lo", body.get("lo", [-1e4] * 3))
    hi = _vec3(path, f"{key}.plane.hi", body.get("hi", [1e4] * 3))
    return ROI(
        name=name, kind="plane", axis=_AXES[axis], value=float(body["value"]), lo=lo, hi=hi
    )


_BUNDLE_KEYS = {
    "description", "inclusion", "exclusion", "landmarks", "start_region", "end_region",
    "start", "hemisphere", "crosses_midline", "midline_margin_mm", "min_length_mm",
    "ordered", "truth_label",
}


def _parse_bundle(path: Path, name: str, spec: object) -> BundleDefinition:
    key = f"bundles.{name}"
    if not isinstance(spec, Mapping):
        raise _err(path, key, f"a bundle must be a mapping, got {spec!r}")
    extra = sorted(set(spec) - _BUNDLE_KEYS)
    if extra:
        raise _err(path, f"{key}.{extra[0]}", f"unknown key; allowed {sorted(_BUNDLE_KEYS)}")
    inc = spec.get("inclusion")
    if not isinstance(inc, list) or not inc:
        raise _err(path, f"{key}.inclusion", "needs a non-empty list of ROIs")
    lists = {}
    for part in ("inclusion", "exclusion", "landmarks"):
        items = spec.get(part) or []
        if not isinstance(items, list):
            raise _err(path, f"{key}.{part}", f"must be a list of ROIs, got {items!r}")
        lists[part] = tuple(
            _parse_roi(path, f"{key}.{part}[{i}]", r, f"{part}{i}") for i, r in enumerate(items)
        )
    ends = {
        part: _parse_roi(path, f"{key}.{part}", spec[part], part) if spec.get(part) else None
        for part in ("start_region", "end_region")
    }
    hemi = spec.get("hemisphere", "both")
    if hemi not in _HEMIS:
        raise _err(path, f"{key}.hemisphere", f"must be one of {_HEMIS}, got {hemi!r}")
    crosses = spec.get("crosses_midline", hemi == "both")
    if not isinstance(crosses, bool):
        raise _err(path, f"{key}.crosses_midline", f"must be true or false, got {crosses!r}")
    if not crosses and hemi == "both":
        raise _err(path, f"{key}.crosses_midline", "false needs hemisphere left or right")
    nums = {}
    for k, default in (("min_length_mm", 0.0), ("midline_margin_mm", 5.0)):
        v = spec.get(k, default)
        if not isinstance(v, int | float) or isinstance(v, bool) or v < 0:
            raise _err(path, f"{key}.{k}", f"must be a non-negative number, got {v!r}")
        nums[k] = float(v)
    ordered = spec.get("ordered", True)
    if not isinstance(ordered, bool):
        raise _err(path, f"{key}.ordered", f"must be true or false, got {ordered!r}")
    names = [r.name for part in lists.values() for r in part]
    names += [r.name for r in ends.values() if r is not None]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise _err(path, key, f"duplicate ROI name(s) {dup}")
    start = spec.get("start")
    if start is not None and start not in names:
        raise _err(path, f"{key}.start", f"{start!r} is not one of this bundle's ROIs {names}")
    return BundleDefinition(
        name=str(name),
        inclusion=lists["inclusion"],
        exclusion=lists["exclusion"],
        landmarks=lists["landmarks"],
        start_region=ends["start_region"],
        end_region=ends["end_region"],
        start=start,
        hemisphere=hemi,
        crosses_midline=crosses,
        midline_margin_mm=nums["midline_margin_mm"],
        min_length_mm=nums["min_length_mm"],
        ordered=ordered,
        description=str(spec.get("description", "")),
        truth_label=None if spec.get("truth_label") is None else str(spec["truth_label"]),
    )


def load_bundle_definitions(path: str | Path | None = None) -> dict[str, BundleDefinition]:
    """Read and validate a bundle-definition YAML file (default ``configs/tracts.yaml``).

    Raises
    ------
    BundleDefinitionError
        If the file is missing, is not YAML, or any key is invalid; the message
        starts with the file path and the dotted key (e.g.
        ``.../tracts.yaml: bundles.CST_L.inclusion[0].box.lo: ...``).
    """
    import yaml

    path = Path(DEFAULT_TRACTS_YAML if path is None else path).resolve()
    if not path.is_file():
        raise BundleDefinitionError(f"{path}: bundle-definition file not found")
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise BundleDefinitionError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(doc, Mapping) or not isinstance(doc.get("bundles"), Mapping):
        raise _err(path, "bundles", "the file needs a top-level 'bundles' mapping")
    if not doc["bundles"]:
        raise _err(path, "bundles", "is empty")
    return {str(n): _parse_bundle(path, str(n), s) for n, s in doc["bundles"].items()}


# ---------------------------------------------------------------------------- recognition
def map_streamlines(streamlines, to_mni: Callable[[np.ndarray], np.ndarray] | None):
    """Streamlines with every point mapped by ``to_mni`` (identity when None)."""
    from dipy.tracking.streamline import Streamlines

    out = Streamlines(streamlines)
    if to_mni is not None and len(out):
        out._data = np.asarray(to_mni(np.asarray(out._data, float)), dtype=np.float32)
    return out


@dataclass
class _Flat:
    points: np.ndarray  # (P, 3) MNI
    nxt: np.ndarray  # (P, 3) the following point (itself at streamline ends)
    sid: np.ndarray  # (P,) streamline index
    offsets: np.ndarray
    lengths: np.ndarray
    n: int
    cache: dict = field(default_factory=dict)

    def any_hit(self, roi: ROI) -> np.ndarray:
        if roi not in self.cache:
            hits = roi.point_hits(self.points, self.nxt)
            self.cache[roi] = hits
        hits = self.cache[roi]
        return np.bincount(self.sid[hits], minlength=self.n) > 0


def _flatten(mni) -> _Flat:
    pts = np.asarray(mni._data, float)
    offsets = np.asarray(mni._offsets, int)
    lengths = np.asarray(mni._lengths, int)
    sid = np.repeat(np.arange(len(lengths)), lengths)
    nxt = np.empty_like(pts)
    nxt[:-1] = pts[1:]
    nxt[-1] = pts[-1]
    last = offsets + lengths - 1
    nxt[last] = pts[last]
    return _Flat(pts, nxt, sid, offsets, lengths, len(lengths))


def _ordered_ok(hits_per_roi: list[np.ndarray]) -> bool:
    """Do the ROIs' hit indices admit a non-decreasing sequence (forward or backward)?"""

    def forward(seqs: list[np.ndarray]) -> bool:
        pos = -1
        for h in seqs:
            later = h[h >= pos]
            if len(later) == 0:
                return False
            pos = int(later.min())
        return True

    if forward(hits_per_roi):
        return True
    return forward([h[::-1] for h in hits_per_roi[::-1]])


def recognize_bundles(
    streamlines,
    definitions: Mapping[str, BundleDefinition],
    to_mni: Callable[[np.ndarray], np.ndarray] | None = None,
    *,
    streamlines_mni=None,
) -> dict[str, np.ndarray]:
    """Indices of the streamlines belonging to each bundle.

    Parameters
    ----------
    streamlines : Streamlines
        Tractogram in DWI world mm (lengths are measured there).
    definitions : mapping of name -> BundleDefinition
    to_mni : callable, optional
        Maps (N, 3) DWI world points to MNI mm; None when the streamlines are
        already in MNI space.
    streamlines_mni : Streamlines, optional
        The same streamlines already mapped (skips the mapping).

    Returns
    -------
    dict of name -> int ndarray
        Sorted indices into ``streamlines`` (empty when none matches); a
        streamline may belong to more than one bundle.
    """
    from dipy.tracking.streamline import length

    n = len(streamlines)
    if n == 0:
        return {name: np.zeros(0, int) for name in definitions}
    mni = streamlines_mni if streamlines_mni is not None else map_streamlines(streamlines, to_mni)
    flat = _flatten(mni)
    lengths_mm = np.asarray(length(streamlines), float)
    xmin = np.minimum.reduceat(flat.points[:, 0], flat.offsets)
    xmax = np.maximum.reduceat(flat.points[:, 0], flat.offsets)
    out: dict[str, np.ndarray] = {}
    for name, b in definitions.items():
        ok = lengths_mm >= b.min_length_mm
        if not b.crosses_midline:
            if b.hemisphere == "left":
                ok &= xmax <= b.midline_margin_mm
            elif b.hemisphere == "right":
                ok &= xmin >= -b.midline_margin_mm
        for roi in b.inclusion:
            ok &= flat.any_hit(roi)
        for roi in b.exclusion:
            ok &= ~flat.any_hit(roi)
        cand = np.flatnonzero(ok)
        keep = []
        for i in cand:
            s = slice(flat.offsets[i], flat.offsets[i] + flat.lengths[i])
            pts = flat.points[s]
            if b.ordered and len(b.inclusion) > 1:
                hits = [np.flatnonzero(flat.cache[r][s]) for r in b.inclusion]
                if not _ordered_ok(hits):
                    continue
            if b.start_region is not None or b.end_region is not None:
                ends = pts[[0, -1]]
                nx = ends
                a = (
                    np.ones(2, bool) if b.start_region is None
                    else b.start_region.point_hits(ends, nx)
                )
                e = np.ones(2, bool) if b.end_region is None else b.end_region.point_hits(ends, nx)
                if not ((a[0] and e[1]) or (a[1] and e[0])):
                    continue
            keep.append(i)
        out[name] = np.asarray(keep, dtype=int)
    return out
