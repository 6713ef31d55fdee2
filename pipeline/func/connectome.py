"""Parcellations, region time series with coverage, and connectivity matrices.

Parcellations (offline)
-----------------------
* Spheres on nilearn's shipped coordinate atlases (:func:`sphere_parcellation`):
  ``"power"`` (264 regions), ``"dosenbach"`` (160) and ``"seitzman"`` (300),
  read by ``nilearn.datasets.fetch_coords_*`` from files inside the nilearn
  package (no download).  Labels and networks as in
  :func:`pipeline.phantom.bold.load_coordinate_atlas`: Dosenbach uses nilearn's
  labels, Seitzman ``seitzman_001``..., Power ``power_001``... with the network of
  the nearest Seitzman region within 10 mm (nilearn ships no Power networks).
* A user label image with a label table (:func:`label_parcellation`): TSV with
  columns ``index`` and ``label`` (or ``name``), optionally ``network``; every
  non-zero value of the image must be in the table.

Every parcellation has a region table (pandas DataFrame) with columns
``index, label, x, y, z, network`` (MNI mm; label centroids for label images).

Coverage
--------
A region's coverage is the fraction of its voxels (sphere voxels on the mask
grid, or label voxels resampled to the mask grid with nearest neighbour) inside
the brain / BOLD mask.  Regions below ``min_coverage`` (default 0.5) get NaN
time series and NaN rows / columns in every matrix, and ``valid = False`` in
the region table; matrices never change size.

Connectivity
------------
:func:`connectivity`: correlation (default), Fisher z (``arctanh`` of the
correlation, diagonal set to 0), partial correlation, covariance, via
:class:`nilearn.connectome.ConnectivityMeasure` (``standardize=False`` since the
time series are already standardised).  :func:`group_connectivity` fits the
tangent space (Varoquaux et al. 2010) on several subjects' time series.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Literal

import nibabel as nib
import numpy as np

from pipeline.errors import InputError

__all__ = [
    "COORDINATE_ATLASES",
    "Connectome",
    "Parcellation",
    "RegionTimeseries",
    "connectivity",
    "extract_region_timeseries",
    "group_connectivity",
    "label_parcellation",
    "region_coverage",
    "sphere_parcellation",
]

COORDINATE_ATLASES = ("power", "dosenbach", "seitzman")
UNASSIGNED = "unassigned"
_POWER_NETWORK_RADIUS_MM = 10.0
KINDS = ("correlation", "fisher_z", "partial correlation", "covariance")


@dataclass(frozen=True, eq=False)
class Parcellation:
    """Regions for time-series extraction.

    Attributes
    ----------
    name : str
    kind : {"spheres", "labels"}
    regions : pandas.DataFrame
        Columns ``index, label, x, y, z, network`` (one row per region).
    radius_mm : float or None
        Sphere radius (spheres only).
    labels_img : nibabel image or None
        Integer label image (labels only); ``regions["index"]`` are its values.
    """

    name: str
    kind: str
    regions: object = field(repr=False)
    radius_mm: float | None = None
    labels_img: nib.spatialimages.SpatialImage | None = field(default=None, repr=False)

    @property
    def n_regions(self) -> int:
        return len(self.regions)

    @property
    def labels(self) -> list[str]:
        return [str(x) for x in self.regions["label"]]

    @property
    def coords(self) -> np.ndarray:
        return self.regions[["x", "y", "z"]].to_numpy(float)


@functools.cache
def _coordinate_table(name: str):
    import pandas as pd
    from nilearn import datasets

    if name == "dosenbach":
        b = datasets.fetch_coords_dosenbach_2010()
        coords = b.rois[["x", "y", "z"]].to_numpy(float)
        labels, networks = [str(x) for x in b.labels], [str(x) for x in b.networks]
    else:
        s = datasets.fetch_coords_seitzman_2018()
        s_coords = s.rois[["x", "y", "z"]].to_numpy(float)
        s_networks = [str(n) for n in s.networks]
        if name == "seitzman":
            coords, networks = s_coords, s_networks
            labels = [f"seitzman_{int(i) + 1:03d}" for i in s.rois.index]
        else:
            from scipy.spatial import cKDTree

            p = datasets.fetch_coords_power_2011()
            coords = p.rois[["x", "y", "z"]].to_numpy(float)
            labels = [f"power_{int(r):03d}" for r in p.rois["roi"]]
            dist, idx = cKDTree(s_coords).query(coords)
            networks = [
                s_networks[j] if d <= _POWER_NETWORK_RADIUS_MM else UNASSIGNED
                for d, j in zip(dist, idx, strict=True)
            ]
    return pd.DataFrame(
        {
            "index": np.arange(1, len(labels) + 1),
            "label": labels,
            "x": coords[:, 0],
            "y": coords[:, 1],
            "z": coords[:, 2],
            "network": networks,
        }
    )


def sphere_parcellation(
    name: Literal["power", "dosenbach", "seitzman"], radius_mm: float = 5.0
) -> Parcellation:
    """Spheres of ``radius_mm`` on one of nilearn's shipped coordinate atlases (offline)."""
    if name not in COORDINATE_ATLASES:
        raise ValueError(f"unknown coordinate atlas {name!r}; expected one of {COORDINATE_ATLASES}")
    if not radius_mm > 0:
        raise ValueError(f"radius_mm must be positive, got {radius_mm}")
    return Parcellation(name, "spheres", _coordinate_table(name).copy(), float(radius_mm))


def label_parcellation(
    labels_img: str | PathLike[str] | nib.spatialimages.SpatialImage,
    table: str | PathLike[str],
    *,
    name: str | None = None,
) -> Parcellation:
    """A user parcellation: integer label image (MNI) + label table (TSV).

    Parameters
    ----------
    labels_img : path or nibabel image
        3-D integer image; 0 is background.
    table : path
        Tab-separated, columns ``index`` and ``label`` (or ``name``), optional
        ``network``.

    Raises
    ------
    InputError
        Naming the image or the table: unreadable, not 3-D, non-integer values,
        table without the needed columns or with duplicate indices, and any
        label value in the image that is missing from the table.
    """
    import pandas as pd

    img_path = labels_img if isinstance(labels_img, (str, PathLike)) else labels_img.get_filename()
    img = nib.load(str(labels_img)) if isinstance(labels_img, (str, PathLike)) else labels_img
    data = np.asanyarray(img.dataobj)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InputError(img_path, f"label image: expected 3-D, got shape {data.shape}")
    if not np.all(np.isfinite(data)) or not np.allclose(data, np.round(data)):
        raise InputError(img_path, "label image: expected integer label values")
    data = np.round(data).astype(np.int64)
    table = Path(table)
    try:
        tab = pd.read_csv(table, sep="\t")
    except Exception as exc:
        raise InputError(table, f"cannot read label table: {exc}") from exc
    if "label" not in tab.columns and "name" in tab.columns:
        tab = tab.rename(columns={"name": "label"})
    if not {"index", "label"} <= set(tab.columns):
        raise InputError(
            table, f"label table: expected columns 'index' and 'label', got {list(tab.columns)}"
        )
    if tab["index"].duplicated().any():
        raise InputError(table, "label table: duplicate values in column 'index'")
    tab = tab.astype({"index": int})
    in_img = sorted(set(np.unique(data).tolist()) - {0})
    missing = sorted(set(in_img) - set(tab["index"].tolist()))
    if missing:
        raise InputError(
            table,
            f"label table: {len(missing)} label value(s) of the image {img_path} are missing "
            f"from the table: {missing[:20]}",
        )
    tab = tab[tab["index"] != 0].sort_values("index").reset_index(drop=True)
    aff = np.asarray(img.affine, dtype=float)
    xyz = np.full((len(tab), 3), np.nan)
    for r, idx in enumerate(tab["index"]):
        vox = np.argwhere(data == idx)
        if len(vox):
            xyz[r] = vox.mean(axis=0) @ aff[:3, :3].T + aff[:3, 3]
    regions = pd.DataFrame(
        {
            "index": tab["index"].to_numpy(),
            "label": tab["label"].astype(str).to_numpy(),
            "x": xyz[:, 0],
            "y": xyz[:, 1],
            "z": xyz[:, 2],
            "network": tab["network"].astype(str).to_numpy()
            if "network" in tab.columns else [UNASSIGNED] * len(tab),
        }
    )
    out_img = nib.Nifti1Image(data.astype(np.int32), aff)
    return Parcellation(name or table.stem, "labels", regions, None, out_img)


def _mask_data(mask_img) -> tuple[np.ndarray, np.ndarray]:
    m = np.asanyarray(mask_img.dataobj)
    if m.ndim == 4 and m.shape[3] == 1:
        m = m[..., 0]
    return m > 0, np.asarray(mask_img.affine, dtype=float)


def region_coverage(parcellation: Parcellation, mask_img) -> np.ndarray:
    """Fraction of each region inside a mask (see the module docstring).

    Spheres: voxel centres of the mask grid within ``radius_mm`` of the centre
    (at least the nearest voxel).  Labels: label voxels resampled to the mask
    grid (nearest neighbour).  A region with no voxel on the grid has coverage 0.
    """
    mask, aff = _mask_data(mask_img)
    inv = np.linalg.inv(aff)
    if parcellation.kind == "spheres":
        r = float(parcellation.radius_mm)
        vox = np.sqrt((aff[:3, :3] ** 2).sum(axis=0))
        ext = np.ceil(r / vox).astype(int) + 1
        offs = np.stack(
            np.meshgrid(*[np.arange(-e, e + 1) for e in ext], indexing="ij"), -1
        ).reshape(-1, 3)
        cov = np.zeros(parcellation.n_regions)
        for i, c in enumerate(parcellation.coords):
            cv = np.round(c @ inv[:3, :3].T + inv[:3, 3]).astype(int)
            ijk = cv + offs
            world = ijk @ aff[:3, :3].T + aff[:3, 3]
            d = np.linalg.norm(world - c, axis=1)
            sel = ijk[d <= max(r, d.min())]
            inside = np.all((sel >= 0) & (sel < mask.shape), axis=1)
            vals = np.zeros(len(sel), bool)
            vals[inside] = mask[tuple(sel[inside].T)]
            cov[i] = vals.mean()
        return cov
    from nilearn.image import resample_to_img

    lab = resample_to_img(
        parcellation.labels_img, nib.Nifti1Image(mask.astype(np.uint8), aff),
        interpolation="nearest", force_resample=True, copy_header=True,
    )
    lab = np.asarray(lab.dataobj).astype(np.int64)
    cov = np.zeros(parcellation.n_regions)
    for i, idx in enumerate(parcellation.regions["index"]):
        sel = lab == idx
        cov[i] = mask[sel].mean() if sel.any() else 0.0
    return cov


@dataclass(frozen=True, eq=False)
class RegionTimeseries:
    """Region time series with their coverage.

    Attributes
    ----------
    timeseries : pandas.DataFrame, shape (T, M)
        Columns are region labels; NaN columns for regions with insufficient
        coverage.
    regions : pandas.DataFrame
        Region table plus ``coverage`` (0-1) and ``valid`` (bool) columns.
    """

    timeseries: object = field(repr=False)
    regions: object = field(repr=False)

    @property
    def valid(self) -> np.ndarray:
        return self.regions["valid"].to_numpy(bool)


def extract_region_timeseries(
    img,
    parcellation: Parcellation,
    *,
    mask_img=None,
    min_coverage: float = 0.5,
    source: str | PathLike[str] | None = None,
) -> RegionTimeseries:
    """Mean BOLD time series of each region (image in the parcellation's space, MNI).

    Uses :class:`nilearn.maskers.NiftiSpheresMasker` (spheres, overlap allowed)
    or :class:`nilearn.maskers.NiftiLabelsMasker` (labels), restricted to
    ``mask_img``, on the raw (undenoised) image; denoise the result with
    :func:`pipeline.func.confounds.denoise`.

    Parameters
    ----------
    img : nibabel image or path
        4-D BOLD in MNI space.
    parcellation : Parcellation
    mask_img : nibabel image, optional
        Brain / BOLD mask in the same space (default: voxels whose temporal
        mean exceeds 20 % of its 98th percentile).
    min_coverage : float
        Regions with a smaller fraction inside the mask are set to NaN.
    source : path-like, optional
        File named in errors (default the image's file name).

    Raises
    ------
    InputError
        If the image is not 4-D.
    """
    import pandas as pd
    from nilearn.maskers import NiftiLabelsMasker, NiftiSpheresMasker

    if isinstance(img, (str, PathLike)):
        source = source or img
        img = nib.load(str(img))
    source = source or img.get_filename()
    if len(img.shape) != 4:
        raise InputError(source, f"BOLD: expected a 4-D image, got shape {img.shape}")
    if np.issubdtype(img.get_data_dtype(), np.integer):
        # nilearn's maskers return region means in the image's dtype: integers would be
        # truncated (e.g. an fMRIPrep int16 run); floats keep them (and apply any scaling)
        img = nib.Nifti1Image(np.asarray(img.dataobj, dtype=np.float32), img.affine, img.header)
        img.set_data_dtype(np.float32)
    if mask_img is None:
        mean = np.asarray(img.dataobj, dtype=np.float32).mean(axis=3)
        pos = mean[mean > 0]
        thr = 0.2 * np.percentile(pos, 98) if pos.size else np.inf
        mask_img = nib.Nifti1Image((mean > thr).astype(np.uint8), img.affine)
    cov = region_coverage(parcellation, mask_img)
    valid = cov >= min_coverage
    n_t = img.shape[3]
    ts = np.full((n_t, parcellation.n_regions), np.nan)
    mask_u8 = nib.Nifti1Image(_mask_data(mask_img)[0].astype(np.uint8), mask_img.affine)
    if valid.any():
        if parcellation.kind == "spheres":
            masker = NiftiSpheresMasker(
                [tuple(c) for c in parcellation.coords[valid]],
                radius=parcellation.radius_mm, mask_img=mask_u8, allow_overlap=True,
                standardize=None,
            )
            ts[:, valid] = masker.fit_transform(img)
        else:
            lab = np.asarray(parcellation.labels_img.dataobj).astype(np.int64)
            keep_idx = parcellation.regions["index"].to_numpy()[valid]
            lab = np.where(np.isin(lab, keep_idx), lab, 0).astype(np.int32)
            masker = NiftiLabelsMasker(
                nib.Nifti1Image(lab, parcellation.labels_img.affine), mask_img=mask_u8,
                resampling_target="data", standardize=None,
            )
            out = masker.fit_transform(img)
            # region_ids_: {"background": 0, column: label value, ...}
            col = {int(v): int(k) for k, v in masker.region_ids_.items() if k != "background"}
            idx_all = parcellation.regions["index"].to_numpy()
            for j in np.flatnonzero(valid):
                if int(idx_all[j]) in col:
                    ts[:, j] = out[:, col[int(idx_all[j])]]
                else:  # label vanished after masking / resampling
                    valid[j] = False
    regions = parcellation.regions.copy()
    regions["coverage"] = cov
    regions["valid"] = valid
    return RegionTimeseries(pd.DataFrame(ts, columns=parcellation.labels), regions)


# --------------------------------------------------------------------------- connectivity


@dataclass(frozen=True, eq=False)
class Connectome:
    """A connectivity matrix with its regions.

    Attributes
    ----------
    matrix : pandas.DataFrame, shape (M, M)
        Index and columns are region labels; NaN rows / columns for invalid regions.
    regions : pandas.DataFrame
        Region table (``index, label, x, y, z, network`` [+ ``coverage, valid``]).
    kind : str
    """

    matrix: object = field(repr=False)
    regions: object = field(repr=False)
    kind: str

    def edges(self):
        """Upper-triangle edges as a long table: ``label_i, label_j, network_i, network_j, value``."""
        import pandas as pd

        m = self.matrix.to_numpy()
        i, j = np.triu_indices(m.shape[0], k=1)
        lab = self.regions["label"].to_numpy()
        net = self.regions["network"].to_numpy()
        return pd.DataFrame(
            {"label_i": lab[i], "label_j": lab[j], "network_i": net[i], "network_j": net[j],
             "value": m[i, j]}
        )


def _as_array(ts) -> np.ndarray:
    return np.asarray(ts.to_numpy() if hasattr(ts, "to_numpy") else ts, dtype=float)


def _regions_of(ts, regions, n: int):
    import pandas as pd

    if regions is not None:
        return regions.copy()
    labels = list(ts.columns) if hasattr(ts, "columns") else [f"region_{k + 1}" for k in range(n)]
    return pd.DataFrame(
        {"index": np.arange(1, n + 1), "label": labels, "x": np.nan, "y": np.nan, "z": np.nan,
         "network": UNASSIGNED}
    )


def _fisher(m: np.ndarray) -> np.ndarray:
    z = np.arctanh(np.clip(m, -1 + 1e-7, 1 - 1e-7))
    np.fill_diagonal(z, 0.0)
    return z


def connectivity(
    timeseries,
    *,
    kind: Literal["correlation", "fisher_z", "partial correlation", "covariance"] = "correlation",
    regions=None,
) -> Connectome:
    """Connectivity matrix of one run's (denoised) region time series.

    Parameters
    ----------
    timeseries : pandas.DataFrame or numpy.ndarray, shape (T, M)
        All-NaN columns mark invalid regions: they get NaN rows / columns.
    kind : {"correlation", "fisher_z", "partial correlation", "covariance"}
        ``fisher_z`` is ``arctanh`` of the correlation (diagonal 0).
    regions : pandas.DataFrame, optional
        Region table (e.g. :attr:`RegionTimeseries.regions`).

    Returns
    -------
    Connectome
    """
    import pandas as pd
    from nilearn.connectome import ConnectivityMeasure
    from sklearn.covariance import EmpiricalCovariance

    if kind not in KINDS:
        raise ValueError(f"unknown connectivity kind {kind!r}; expected one of {KINDS}")
    x = _as_array(timeseries)
    n = x.shape[1]
    ok = np.all(np.isfinite(x), axis=0)
    out = np.full((n, n), np.nan)
    if ok.sum() >= 2:
        nl_kind = "correlation" if kind == "fisher_z" else kind
        # Pearson correlation and covariance use the empirical covariance: nilearn's default
        # Ledoit-Wolf estimator shrinks every off-diagonal value towards 0 by a data-dependent
        # factor (strongly when regions are about as many as volumes), which changes the
        # values users read as Pearson r and compare across sessions. The partial
        # correlation keeps Ledoit-Wolf, which it needs to invert the covariance.
        estimator = None if kind == "partial correlation" else EmpiricalCovariance()
        cm = ConnectivityMeasure(kind=nl_kind, standardize=False,
                                 **({"cov_estimator": estimator} if estimator is not None else {}))
        sub = cm.fit_transform([x[:, ok]])[0]
        if kind == "fisher_z":
            sub = _fisher(sub)
        out[np.ix_(ok, ok)] = sub
    regs = _regions_of(timeseries, regions, n)
    labels = regs["label"].astype(str).tolist()
    return Connectome(pd.DataFrame(out, index=labels, columns=labels), regs, kind)


def group_connectivity(
    timeseries: Sequence,
    *,
    kind: Literal["tangent", "correlation", "partial correlation", "covariance"] = "tangent",
    regions=None,
) -> tuple[list[Connectome], Connectome]:
    """Connectivity of several subjects' runs fitted jointly (tangent space by default).

    Regions invalid (NaN) in *any* run are NaN for all (a common set of
    regions is needed for the group mean); matrix sizes never change.

    Returns
    -------
    per_subject : list of Connectome
        Tangent: each run's deviation from the group mean in tangent space.
    mean : Connectome
        The group mean (tangent: geometric mean of the covariances).
    """
    import pandas as pd
    from nilearn.connectome import ConnectivityMeasure

    arrays = [_as_array(t) for t in timeseries]
    if len(arrays) < 2 and kind == "tangent":
        raise ValueError("tangent connectivity needs at least two runs")
    n = arrays[0].shape[1]
    if any(a.shape[1] != n for a in arrays):
        raise ValueError("all runs must have the same regions")
    ok = np.logical_and.reduce([np.all(np.isfinite(a), axis=0) for a in arrays])
    cm = ConnectivityMeasure(kind=kind, standardize=False)
    mats = cm.fit_transform([a[:, ok] for a in arrays])
    mean_sub = cm.mean_
    regs = _regions_of(timeseries[0], regions, n)
    labels = regs["label"].astype(str).tolist()

    def full(m: np.ndarray) -> pd.DataFrame:
        f = np.full((n, n), np.nan)
        f[np.ix_(ok, ok)] = m
        return pd.DataFrame(f, index=labels, columns=labels)

    per = [Connectome(full(m), regs, kind) for m in mats]
    return per, Connectome(full(mean_sub), regs, f"{kind} mean")
