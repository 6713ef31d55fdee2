"""Tract profiles (AFQ), lesion-aware profiles, density maps and result tables.

Pipeline per bundle (:func:`bundle_profiles`): orient the streamlines so that
node 1 is the end nearest the bundle's ``start`` ROI, clean them
(:func:`pipeline.tract.clean.clean_bundle`), then sample each metric map at 100
nodes with DIPY ``afq_profile`` and Gaussian weights from the Mahalanobis
distance to the bundle core (DIPY's ``gaussian_weights``, vectorised in
:mod:`pipeline.tract.weights`; Yeatman et al. 2012).

Lesion-aware profile: DIPY's weighted average cannot skip samples, and setting
lesion voxels to NaN before trilinear sampling would spread NaN to every sample
that touches a lesion voxel's neighbourhood. Instead each node sample is tagged
as lesion when the lesion map (nearest voxel) is at least ``lesion_threshold``
at that point, and the node value is the weighted mean of the non-lesion samples
with their Gaussian weights renormalised (:func:`masked_weighted_profile`);
nodes with only lesion samples are NaN. Nodes without any lesion sample are
therefore identical to the plain profile. ``lesion_node_fraction`` is the
fraction of nodes whose core (weighted mean position) lies in a lesion voxel.

A bundle with fewer than ``min_streamlines`` streamlines is never an error: it
gets NaN profiles, ``status`` ``not_found`` or ``too_few`` with a reason, and a
logged warning.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from pipeline.tract.bundles import BundleDefinition, map_streamlines, recognize_bundles
from pipeline.tract.clean import clean_bundle

__all__ = [
    "METRICS",
    "BundleProfile",
    "bundle_density",
    "bundle_profiles",
    "masked_weighted_profile",
    "orient_streamlines",
    "profiles_dataframe",
    "summary_dataframe",
    "tractometry",
]

log = logging.getLogger(__name__)
METRICS = ("fa", "md", "ad", "rd")


@dataclass
class BundleProfile:
    """Tractometry result of one bundle.

    Attributes
    ----------
    name : str
    status : {"ok", "not_found", "too_few"}
    reason : str
        Empty when ``status == "ok"``.
    n_streamlines : int
        Streamlines after cleaning (recognised ones when too few to clean).
    n_recognised : int
    profiles, profiles_lesion_masked : dict of metric -> ndarray (n_nodes,)
    lesion_nodes : ndarray (n_nodes,) bool
        Nodes whose core lies in a lesion voxel.
    lesion_node_fraction : float
    streamlines : Streamlines
        Cleaned, oriented streamlines (DWI world mm).
    streamlines_mni : Streamlines
        The same in MNI mm (None without a mapping).
    weights : ndarray (n_streamlines, n_nodes)
    """

    name: str
    status: str
    reason: str
    n_streamlines: int
    n_recognised: int
    profiles: dict[str, np.ndarray]
    profiles_lesion_masked: dict[str, np.ndarray]
    lesion_nodes: np.ndarray
    lesion_node_fraction: float
    streamlines: object = None
    streamlines_mni: object = None
    weights: np.ndarray | None = None
    extra: dict = field(default_factory=dict)

    def mean(self, metric: str, *, lesion_masked: bool = False) -> float:
        prof = (self.profiles_lesion_masked if lesion_masked else self.profiles)[metric]
        return float(np.nanmean(prof)) if np.isfinite(prof).any() else float("nan")


def orient_streamlines(streamlines, start_point: np.ndarray, streamlines_ref=None):
    """Flip streamlines so that their first point is the end nearest ``start_point``.

    ``streamlines_ref`` (same streamlines in another space, e.g. MNI) decides the
    flip when given (``start_point`` is then in that space); both are returned.
    """
    from dipy.tracking.streamline import Streamlines

    ref = streamlines if streamlines_ref is None else streamlines_ref
    p = np.asarray(start_point, float)
    out, out_ref = [], []
    for s, r in zip(streamlines, ref, strict=True):
        flip = np.linalg.norm(r[-1] - p) < np.linalg.norm(r[0] - p)
        out.append(s[::-1] if flip else s)
        out_ref.append(r[::-1] if flip else r)
    return Streamlines(out), Streamlines(out_ref)


def bundle_density(streamlines, affine: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Streamline count per voxel (DIPY ``density_map``); zeros for an empty bundle."""
    from dipy.tracking.utils import density_map

    shape = tuple(int(v) for v in shape[:3])
    if streamlines is None or len(streamlines) == 0:
        return np.zeros(shape, dtype=np.int64)
    return density_map(streamlines, np.asarray(affine, float), shape)


def _sample(volume: np.ndarray, points: np.ndarray, affine: np.ndarray, order: int) -> np.ndarray:
    from scipy import ndimage

    inv = np.linalg.inv(affine)
    ijk = (points @ inv[:3, :3].T + inv[:3, 3]).T
    return ndimage.map_coordinates(
        np.asarray(volume, float), ijk, order=order, mode="nearest"
    )


def masked_weighted_profile(
    values: np.ndarray, weights: np.ndarray, exclude: np.ndarray
) -> np.ndarray:
    """Per-node weighted mean of ``values`` (n_streamlines, n_nodes) skipping ``exclude``.

    Weights of the remaining samples are renormalised per node; a node with no
    remaining sample (or zero total weight) is NaN.
    """
    w = np.where(exclude, 0.0, np.asarray(weights, float))
    total = w.sum(axis=0)
    v = np.where(exclude, 0.0, values)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, (w * v).sum(axis=0) / np.where(total > 0, total, 1), np.nan)


def _nan_result(
    name: str, status: str, reason: str, n_nodes: int, n_rec: int, metrics=METRICS
) -> BundleProfile:
    log.warning("bundle %s: %s", name, reason)
    nan = {m: np.full(n_nodes, np.nan) for m in metrics}
    return BundleProfile(
        name=name, status=status, reason=reason, n_streamlines=0, n_recognised=n_rec,
        profiles=nan, profiles_lesion_masked={m: v.copy() for m, v in nan.items()},
        lesion_nodes=np.zeros(n_nodes, bool), lesion_node_fraction=float("nan"),
    )


def bundle_profiles(
    name: str,
    streamlines,
    maps: Mapping[str, np.ndarray],
    affine: np.ndarray,
    *,
    start_point: np.ndarray | None = None,
    streamlines_mni=None,
    lesion: np.ndarray | None = None,
    lesion_threshold: float = 0.5,
    n_nodes: int = 100,
    min_streamlines: int = 10,
    clean: Mapping[str, float] | None = None,
) -> BundleProfile:
    """Orient, clean and profile one bundle (never raises for an empty bundle).

    Parameters
    ----------
    name : str
    streamlines : Streamlines
        The bundle's streamlines in DWI world mm.
    maps : mapping metric -> ndarray (X, Y, Z)
        Metric maps on the DWI grid (e.g. ``fa``, ``md``, ``ad``, ``rd``).
    affine : ndarray (4, 4)
        DWI voxel-to-world affine.
    start_point : ndarray (3,), optional
        Node 1 is the end nearest this point (MNI mm when ``streamlines_mni`` is
        given, else DWI mm). Without it, DIPY orients by the first streamline.
    streamlines_mni : Streamlines, optional
        Same streamlines in MNI mm (used for orientation).
    lesion : ndarray (X, Y, Z), optional
        Lesion probability / mask on the DWI grid.
    n_nodes, min_streamlines : int
    clean : mapping, optional
        Keyword arguments of :func:`clean_bundle` (``n_points`` is ``n_nodes``);
        ``{"enabled": False}`` skips cleaning.

    Returns
    -------
    BundleProfile
    """
    from dipy.tracking.streamline import (
        Streamlines,
        orient_by_streamline,
        set_number_of_points,
        values_from_volume,
    )

    from pipeline.tract.weights import gaussian_weights

    affine = np.asarray(affine, float)
    n_rec = 0 if streamlines is None else len(streamlines)
    metrics = list(maps)
    if n_rec == 0:
        return _nan_result(name, "not_found", "no streamline matched the bundle's ROIs", n_nodes,
                           0, metrics)
    if n_rec < min_streamlines:
        return _nan_result(
            name, "too_few",
            f"only {n_rec} streamline(s) recognised, fewer than min_streamlines={min_streamlines}",
            n_nodes, n_rec, metrics,
        )
    sl = Streamlines(streamlines)
    ref = streamlines_mni
    if start_point is not None:
        sl, ref = orient_streamlines(sl, start_point, ref)
        if streamlines_mni is None:
            ref = None
    else:
        sl = orient_by_streamline(sl, sl[0])
    opts = dict(clean or {})
    if opts.pop("enabled", True):
        opts.setdefault("min_streamlines", min_streamlines)
        keep = clean_bundle(sl, n_points=n_nodes, **opts)
        sl = Streamlines([sl[i] for i in keep])
        if ref is not None:
            ref = Streamlines([ref[i] for i in keep])
    fg = set_number_of_points(sl, nb_points=n_nodes)
    with np.errstate(all="ignore"):
        w = np.asarray(gaussian_weights(fg, n_points=n_nodes), float)
    if w.ndim == 1:  # a single streamline
        w = np.ones((len(fg), n_nodes))
    w = np.nan_to_num(w)
    w = w / np.where(w.sum(0) > 0, w.sum(0), 1)
    pts = np.asarray(fg.get_data(), float).reshape(len(fg), n_nodes, 3)
    if lesion is not None:
        in_les = _sample(lesion, pts.reshape(-1, 3), affine, 0).reshape(len(fg), n_nodes)
        in_les = in_les >= lesion_threshold
        core = np.einsum("sn,snk->nk", w, pts)
        lesion_nodes = _sample(lesion, core, affine, 0) >= lesion_threshold
    else:
        in_les = np.zeros((len(fg), n_nodes), bool)
        lesion_nodes = np.zeros(n_nodes, bool)
    profiles, masked = {}, {}
    for m in metrics:
        vals = np.asarray(values_from_volume(np.asarray(maps[m], float), fg, affine), float)
        vals = vals.reshape(len(fg), n_nodes)
        profiles[m] = (w * vals).sum(axis=0)  # == afq_profile(..., weights=w)
        masked[m] = masked_weighted_profile(vals, w, in_les)
    return BundleProfile(
        name=name, status="ok", reason="", n_streamlines=len(sl), n_recognised=n_rec,
        profiles=profiles, profiles_lesion_masked=masked, lesion_nodes=lesion_nodes,
        lesion_node_fraction=float(lesion_nodes.mean()), streamlines=sl,
        streamlines_mni=ref, weights=w,
    )


def tractometry(
    streamlines,
    definitions: Mapping[str, BundleDefinition],
    maps: Mapping[str, np.ndarray],
    affine: np.ndarray,
    *,
    to_mni: Callable[[np.ndarray], np.ndarray] | None = None,
    lesion: np.ndarray | None = None,
    lesion_threshold: float = 0.5,
    n_nodes: int = 100,
    min_streamlines: int = 10,
    clean: Mapping[str, float] | None = None,
) -> dict[str, BundleProfile]:
    """Recognise, orient, clean and profile every defined bundle.

    ``to_mni`` maps DWI world mm to MNI mm (e.g. ``Transform.source_to_target``
    of a DWI->MNI transform). Every definition gets a result, in order.
    """
    mni = map_streamlines(streamlines, to_mni)
    found = recognize_bundles(streamlines, definitions, streamlines_mni=mni)
    out = {}
    for name, b in definitions.items():
        idx = found[name]
        sub = [streamlines[i] for i in idx]
        sub_mni = [mni[i] for i in idx]
        from dipy.tracking.streamline import Streamlines

        out[name] = bundle_profiles(
            name, Streamlines(sub), maps, affine, start_point=b.start_point,
            streamlines_mni=Streamlines(sub_mni), lesion=lesion,
            lesion_threshold=lesion_threshold, n_nodes=n_nodes,
            min_streamlines=min_streamlines, clean=clean,
        )
    return out


def profiles_dataframe(results: Mapping[str, BundleProfile], subject: str, session: str):
    """Long table: subject, session, bundle, node (1-based), metric, value, lesion_masked."""
    import pandas as pd

    rows = []
    for name, r in results.items():
        for masked, profs in ((False, r.profiles), (True, r.profiles_lesion_masked)):
            for metric, prof in profs.items():
                for k, v in enumerate(prof):
                    rows.append((subject, session, name, k + 1, metric, float(v), masked))
    return pd.DataFrame(
        rows, columns=["subject", "session", "bundle", "node", "metric", "value", "lesion_masked"]
    )


def summary_dataframe(results: Mapping[str, BundleProfile], subject: str, session: str):
    """One row per bundle: status, reason, counts, lesion fraction, tract means."""
    import pandas as pd

    rows = []
    for name, r in results.items():
        row = {
            "subject": subject, "session": session, "bundle": name, "status": r.status,
            "reason": r.reason, "n_recognised": r.n_recognised,
            "n_streamlines": r.n_streamlines, "lesion_node_fraction": r.lesion_node_fraction,
        }
        for m in r.profiles:
            row[f"mean_{m}"] = r.mean(m)
            row[f"mean_{m}_lesion_masked"] = r.mean(m, lesion_masked=True)
        rows.append(row)
    return pd.DataFrame(rows)
