"""Read one msmri derivatives folder back: maps, tables, connectomes, figures, provenance.

The reading side of :mod:`workflows.derivatives`: every file is located by the same
entities the writer used (``sub``, ``ses``, ``task``, ``space``, ``seg``, ``model``,
``param``, ``bundle``, ``stat``, ``desc`` + suffix), so names never have to be typed.

>>> from workflows.results import DerivativesResults
>>> res = DerivativesResults("demo/derivatives")            # doctest: +SKIP
>>> res.subjects, res.sessions("01")                        # doctest: +SKIP
(['01', '02'], ['baseline', 'm03', 'm06'])
>>> ses = res.session("01", "baseline")                     # doctest: +SKIP
>>> fa = ses.map("fa")                                      # nibabel image
>>> rois = ses.roi_table(rois=["NAWM_L", "NAWM_R"])          # pandas DataFrame
>>> conn = ses.connectome()                                 # labelled matrix + label table
>>> res.longitudinal("01", "roi_table")                     # every session in one table

Indexing uses pybids (:class:`bids.BIDSLayout`, ``validate=False``: a derivatives
folder is not raw BIDS). pybids' shipped ``bids`` + ``derivatives`` configurations
know ``space``, ``seg`` (as ``segmentation``), ``model`` and ``desc`` but not the
draft entities ``param``, ``bundle`` and ``stat`` that msmri writes; they are added
by :data:`PYBIDS_CONFIG`. Custom suffixes (``dwimap``, ``roistats``, ``relmat``,
``tractstats`` ...) need nothing: pybids takes the suffix from any name. The
``group/`` and ``figures/`` folders are not BIDS datatypes, so those files are
selected by folder. The index is a snapshot taken when the object is built; call
:meth:`DerivativesResults.refresh` after a stage has written more files.

Tables are read with ``n/a`` as the only missing-value marker (as written) and the
``subject`` / ``session`` columns as strings (``"01"`` stays ``"01"``).
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.errors import InputError
from pipeline.validation import read_json_object
from workflows.derivatives import build_path, read_dataset_description, read_tsv
from workflows.outputs import MEASURE_STATS, STAGE_OUTPUTS

if TYPE_CHECKING:  # imported lazily: keep `import workflows.results` cheap
    import bids
    import nibabel as nib
    import pandas as pd

__all__ = [
    "MEASURE_ALIASES",
    "PYBIDS_CONFIG",
    "STAGE_OUTPUTS",
    "ConnectivityMatrix",
    "DerivativesResults",
    "MissingOutputError",
    "SubjectSession",
    "read_tsv",
]

PathT = str | os.PathLike[str]

#: Extra pybids entities (the draft BIDS-Derivatives entities msmri writes).
PYBIDS_CONFIG: dict[str, Any] = {
    "name": "msmri",
    "entities": [
        {"name": name, "pattern": f"(?:^|_){name}-([a-zA-Z0-9+]+)"}
        for name in ("param", "bundle", "stat")
    ],
}

#: Configuration names of the connectivity measures -> their ``stat`` entity.
MEASURE_ALIASES: dict[str, str] = {name: v[1] for name, v in MEASURE_STATS.items()}

#: Group-level suffix -> the group stage that writes it.
GROUP_STAGES: dict[str, str] = {
    "inventory": "inventory",
    "dwistats": "dwi_stats",
    "tractstats": "tract_stats",
    "tractprofiletests": "tract_stats",
    "nbs": "nbs",
    "bold": "qcfc",
    "clinicalstats": "clinical_stats",
}

_NIFTI = [".nii.gz", ".nii"]
_PYBIDS_KEYS = {"sub": "subject", "ses": "session", "seg": "segmentation"}
_TIME_COLUMN = "time_months"


class MissingOutputError(InputError):
    """An output that a stage writes is not in the derivatives folder.

    Parameters
    ----------
    path : path-like
        The file that was expected (its full name per the naming specification).
    what : str
        What was asked for, e.g. ``"tensor FA map"``.
    stage : str
        The msmri stage that produces it (``anat``, ``dwi``, ``tract``, ``func`` ...).
    level : str
        ``participant`` or ``group`` (the analysis level of that stage).
    reason : str, optional
        Why it is missing when that is known (e.g. the run was excluded).
    """

    def __init__(
        self, path: PathT, what: str, *, stage: str, level: str = "participant",
        reason: str | None = None,
    ):
        self.stage = stage
        self.what = what
        self.reason = reason
        detail = reason or (
            f"not run on this folder or failed; run `msmri <bids_dir> <output_dir> {level} "
            f"--stages {stage}`"
        )
        super().__init__(path, f"{what} not found; the '{stage}' stage writes it: {detail}")


def _read_json(path: Path) -> dict[str, Any]:
    return read_json_object(path)


def _strip(label: str, prefix: str) -> str:
    label = str(label).strip()
    return label[len(prefix) :] if label.startswith(prefix) else label


# --------------------------------------------------------------------------- results


@dataclass(frozen=True, eq=False)
class ConnectivityMatrix:
    """A connectivity matrix with its region table (the labels travel with the matrix).

    Attributes
    ----------
    matrix : pandas.DataFrame, shape (R, R)
        Index and columns are the region names of ``labels["name"]``, in that order;
        invalid regions (too little coverage) are NaN rows / columns.
    labels : pandas.DataFrame
        The region table written beside the matrix (``*_seg-<atlas>_dseg.tsv``:
        ``index, name, x, y, z, network, coverage, valid``).
    atlas : str
        The ``seg`` entity (atlas name).
    measure : str
        The ``stat`` entity (``pearsoncorrelation``, ``fisherz``, ``partialcorrelation``).
    path, labels_path : pathlib.Path
        The files read.
    metadata : dict
        The matrix's JSON sidecar (measure, strategy, invalid regions, provenance).
    """

    matrix: pd.DataFrame = field(repr=False)
    labels: pd.DataFrame = field(repr=False)
    atlas: str
    measure: str
    path: Path
    labels_path: Path = field(repr=False)
    metadata: dict[str, Any] = field(repr=False, default_factory=dict)

    @property
    def regions(self) -> list[str]:
        """Region names in matrix order."""
        return [str(n) for n in self.labels["name"]]

    @property
    def shape(self) -> tuple[int, int]:
        return self.matrix.shape

    def to_numpy(self):
        """The matrix as a float array (labels dropped: keep them via :attr:`regions`)."""
        return self.matrix.to_numpy(dtype=float)


class SubjectSession:
    """The outputs of one subject-session. Obtain it from :meth:`DerivativesResults.session`.

    Every accessor raises :class:`MissingOutputError` (naming the expected file and
    the stage that writes it) when the output is absent.
    """

    def __init__(self, results: DerivativesResults, subject: str, session: str | None):
        self.results = results
        self.subject = subject
        self.session = session

    def __repr__(self) -> str:
        ses = f" ses-{self.session}" if self.session else ""
        return f"<SubjectSession sub-{self.subject}{ses} in {self.results.root}>"

    # ------------------------------------------------------------------ lookup
    @property
    def folder(self) -> Path:
        """``<output_dir>/sub-<label>[/ses-<label>]``."""
        folder = self.results.root / f"sub-{self.subject}"
        return folder / f"ses-{self.session}" if self.session else folder

    def _expected(self, *, datatype: str | None, suffix: str, extension: str, **ent: Any) -> Path:
        ent = {k: v for k, v in ent.items() if v is not None}
        return build_path(self.results.root, datatype=datatype, suffix=suffix,
                          extension=extension, sub=self.subject, ses=self.session, **ent)

    def files(self, *, datatype: str | None = None, **entities: Any) -> list[Path]:
        """Paths of this subject-session's files matching writer-style entities.

        ``entities`` use the writer's keys (``seg``, ``param``, ``desc``, ``suffix``,
        ``extension`` ...); a value of ``None`` requires the entity to be absent.
        ``datatype`` is the folder (``anat``, ``dwi``, ``func``, ``figures``; ``""``
        for files directly in the session folder).
        """
        return self.results._find(sub=self.subject, ses=self.session, folder=datatype, **entities)

    def _one(self, what: str, stage: str, *, datatype: str | None, suffix: str,
             extension: str | Sequence[str], reason: str | None = None, **ent: Any) -> Path:
        exts = [extension] if isinstance(extension, str) else list(extension)
        found = self.files(datatype=datatype or "", suffix=suffix, extension=exts, **ent)
        if not found:
            raise MissingOutputError(
                self._expected(datatype=datatype, suffix=suffix, extension=exts[0], **ent),
                f"sub-{self.subject} ses-{self.session}: {what}", stage=stage, reason=reason,
            )
        if len(found) > 1:
            names = ", ".join(p.name for p in found)
            raise InputError(self.folder, f"expected one {what}, found {len(found)}: {names}")
        return found[0]

    @functools.cached_property
    def stages(self) -> dict[str, bool]:
        """Which participant stages have written their outputs for this session
        (as indexed: :meth:`DerivativesResults.refresh` re-reads the folder)."""
        out = {}
        for stage, spec in STAGE_OUTPUTS.items():
            spec = dict(spec)
            datatype = spec.pop("datatype")
            out[stage] = bool(self.files(datatype=datatype or "", **spec))
        return out

    def has(self, stage: str) -> bool:
        """Whether ``stage`` (``anat``, ``dwi``, ``tract``, ``func``, ``inventory``) ran here."""
        if stage not in STAGE_OUTPUTS:
            raise ValueError(f"unknown stage {stage!r}; known: {list(STAGE_OUTPUTS)}")
        return self.stages[stage]

    # ------------------------------------------------------------------ images
    def map(self, metric: str, *, space: str = "dwi", model: str = "tensor") -> nib.Nifti1Image:
        """A diffusion parameter map (``*_space-<space>_model-<model>_param-<metric>_dwimap``).

        Parameters
        ----------
        metric : str
            ``fa``, ``md``, ``ad``, ``rd`` (diffusivities in mm^2/s as fitted),
            ``rgb``, ``v1``, ``s0``, ``residual``; ``noise`` with ``model="mppca"``.
        space : str
            The ``space`` entity; tensor maps exist in ``dwi`` space.
        model : str
            The ``model`` entity.
        """
        import nibabel as nib

        path = self._one(f"{model} {metric.upper()} map in {space} space", "dwi", datatype="dwi",
                         suffix="dwimap", extension=_NIFTI, space=space, model=model,
                         param=metric.lower(), bundle=None, desc=None)
        return nib.load(path)

    def mask(self, name: str, *, space: str | None = "dwi") -> nib.Nifti1Image:
        """A mask: an ROI in DWI space (``NAWM_L``, ``WM``, ``lesion``, ``brain`` ...) by
        default, or with ``space=None`` a structural mask (``brain``, ``NAWM``, ``lesion``).
        """
        import nibabel as nib

        key = "".join(c for c in name if c.isalnum())  # the writer's desc of ROI "NAWM_L"
        if space is None:
            ent = {"desc": "brain"} if key == "brain" else {"label": key, "desc": None}
            path = self._one(f"structural {name} mask", "anat", datatype="anat", suffix="mask",
                             extension=_NIFTI, space=None, **ent)
        else:
            path = self._one(f"{name} mask in {space} space", "dwi", datatype="dwi",
                             suffix="mask", extension=_NIFTI, space=space, desc=key)
        return nib.load(path)

    def bundle_density(self, bundle: str, *, space: str = "dwi") -> nib.Nifti1Image:
        """Streamline count per voxel of a bundle (``CST_L``, ``CC`` ...) from the tract stage."""
        import nibabel as nib

        path = self._one(f"density map of bundle {bundle} in {space} space", "tract",
                         datatype="dwi", suffix="dwimap", extension=_NIFTI, space=space,
                         bundle=bundle.replace("_", ""), desc="density")
        return nib.load(path)

    # ------------------------------------------------------------------ tables
    def _table(self, what: str, stage: str, **spec: Any) -> pd.DataFrame:
        spec.setdefault("extension", ".tsv")
        return read_tsv(self._one(what, stage, **spec))

    def roi_table(self, *, rois: Iterable[str] | None = None,
                  metrics: Iterable[str] | None = None) -> pd.DataFrame:
        """Tensor metrics per ROI (long format: ``roi, metric, units, n_voxels, mean, ...``).

        Diffusivities in um^2/ms (= 1e-3 mm^2/s). ``rois`` / ``metrics`` select rows
        (e.g. ``rois=["NAWM_L", "NAWM_R"]``), in the file's order.
        """
        table = self._table("ROI table", "dwi", **STAGE_OUTPUTS["dwi"])
        return _select(table, roi=rois, metric=metrics)

    def tract_table(self) -> pd.DataFrame:
        """Per-bundle status (``ok | not_found | too_few``), reason, counts and mean metrics."""
        return self._table("tract table", "tract", **STAGE_OUTPUTS["tract"])

    def tract_profiles(self, *, bundles: Iterable[str] | None = None,
                       metrics: Iterable[str] | None = None,
                       lesion_masked: bool | None = None) -> pd.DataFrame:
        """Tract profiles, long format: ``bundle, node, metric, value, lesion_masked``.

        ``lesion_masked`` True / False selects the profiles without / with lesion samples.
        """
        table = self._table("tract profiles", "tract", datatype="dwi", space="dwi",
                            model="tensor", suffix="tractprofiles")
        if lesion_masked is not None:
            flag = table["lesion_masked"].astype(str).str.lower().isin(["true", "1"])
            table = table[flag == lesion_masked]
        return _select(table, bundle=bundles, metric=metrics)

    def volumes(self) -> pd.DataFrame:
        """Tissue volumes (mm^3) and fractions of the intracranial volume (one row)."""
        return self._table("tissue volumes", "anat", datatype="anat", suffix="volumes", desc=None)

    def lesions(self, *, summary: bool = False) -> pd.DataFrame:
        """One row per lesion (size, centroid, location); ``summary=True``: count and
        volume per location."""
        what = "lesion summary" if summary else "lesion table"
        return self._table(what, "anat", datatype="anat", suffix="lesions",
                           desc="summary" if summary else None)

    def dwi_motion(self) -> pd.DataFrame:
        """Per-volume DWI head motion and outlier flags (``desc-confounds_timeseries``)."""
        return self._table("DWI motion table", "dwi", datatype="dwi", desc="confounds",
                           suffix="timeseries", task=None)

    def func_summary(self, *, task: str | None = None) -> pd.DataFrame:
        """The fMRI run summary: volumes, FD, censoring, regions, exclusion (one row)."""
        return self._table("fMRI run summary", "func", datatype="func", desc="summary",
                           suffix="bold", task=task or self.results.task)

    def motion_summary(self) -> pd.DataFrame:
        """Head motion of every modality that was processed, one row per modality.

        Columns ``modality, n_volumes, mean_fd_mm, max_fd_mm, n_flagged, excluded``;
        DWI ``n_flagged`` counts motion or dropout outliers, fMRI counts censored volumes.
        Modalities without their motion table are left out (an empty table if none ran).
        """
        import pandas as pd

        rows = []
        with contextlib.suppress(MissingOutputError):
            m = self.dwi_motion()
            flags = [c for c in ("motion_outlier", "dropout_outlier") if c in m]
            flagged = m[flags].fillna(0).astype(bool).any(axis=1).sum() if flags else 0
            fd = m["framewise_displacement"]
            rows.append({"modality": "dwi", "n_volumes": len(m), "mean_fd_mm": fd.mean(),
                         "max_fd_mm": fd.max(), "n_flagged": int(flagged), "excluded": False})
        with contextlib.suppress(MissingOutputError):
            for _, r in self.func_summary().iterrows():
                rows.append({"modality": f"bold (task-{r['task']})", "n_volumes": r["n_volumes"],
                             "mean_fd_mm": r["mean_fd_mm"], "max_fd_mm": r["max_fd_mm"],
                             "n_flagged": r["n_censored"], "excluded": bool(r["excluded"])})
        columns = ["modality", "n_volumes", "mean_fd_mm", "max_fd_mm", "n_flagged", "excluded"]
        return pd.DataFrame(rows, columns=columns)

    # ------------------------------------------------------------------ connectivity
    def atlases(self) -> list[str]:
        """Atlases (``seg`` entity) with a connectivity matrix in this session."""
        return sorted({self.results._entity(p, "seg") for p in
                       self.files(datatype="func", suffix="relmat", extension=".tsv")} - {None})

    def measures(self, atlas: str | None = None) -> list[str]:
        """Connectivity measures (``stat`` entity) written for ``atlas`` (default: all)."""
        files = self.files(datatype="func", suffix="relmat", extension=".tsv",
                           **({"seg": atlas} if atlas else {}))
        return sorted({self.results._entity(p, "stat") for p in files} - {None})

    def connectome(
        self, atlas: str | None = None, measure: str = "pearsoncorrelation", *,
        task: str | None = None,
    ) -> ConnectivityMatrix:
        """The connectivity matrix of one atlas and measure, with its region table.

        Parameters
        ----------
        atlas : str, optional
            The ``seg`` entity; default: the only atlas present, else the configured one.
        measure : str
            The ``stat`` entity (``pearsoncorrelation``, ``fisherz``,
            ``partialcorrelation``) or its configuration name (``correlation``, ...).
        task : str, optional
            Default: the configured ``bids.bold_task`` (``rest``).

        Raises
        ------
        MissingOutputError
            No such matrix (with the exclusion reason when the run was excluded).
        InputError
            The matrix's labels differ from the region table beside it.
        """
        task = task or self.results.task
        stat = MEASURE_ALIASES.get(measure, measure)
        atlas = atlas or self._default_atlas()
        reason = None
        if not self.files(datatype="func", suffix="relmat", extension=".tsv", seg=atlas,
                          stat=stat, task=task):
            reason = self._func_missing_reason(task, atlas, stat)
        path = self._one(f"{stat} connectivity matrix ({atlas})", "func", datatype="func",
                         suffix="relmat", extension=".tsv", task=task, seg=atlas, stat=stat,
                         reason=reason)
        labels_path = self._one(f"region table of {path.name}", "func", datatype="func",
                                suffix="dseg", extension=".tsv", task=task, seg=atlas)
        labels = read_tsv(labels_path)
        matrix = read_tsv(path, index_col=0)
        names = [str(n) for n in labels["name"]]
        if [str(c) for c in matrix.columns] != names or [str(i) for i in matrix.index] != names:
            raise InputError(path, f"expected row and column labels equal to the region names of "
                             f"{labels_path.name} ({len(names)} regions), got "
                             f"{matrix.shape[0]} x {matrix.shape[1]} with other labels")
        matrix.index.name = None
        side = path.with_name(path.name.split(".", 1)[0] + ".json")
        meta = _read_json(side) if side.is_file() else {}
        return ConnectivityMatrix(matrix=matrix, labels=labels, atlas=atlas, measure=stat,
                                  path=path, labels_path=labels_path, metadata=meta)

    def _default_atlas(self) -> str:
        found = self.atlases()
        if len(found) == 1:
            return found[0]
        configured = (self.results.config.get("func") or {}).get("atlas")
        if configured and (configured in found or not found):
            return str(configured)
        if not found:
            raise MissingOutputError(
                self._expected(datatype="func", suffix="relmat", extension=".tsv",
                               task=self.results.task, seg="<atlas>", stat="<measure>"),
                f"sub-{self.subject} ses-{self.session}: connectivity matrix", stage="func",
                reason=self._func_missing_reason(self.results.task, None, None),
            )
        raise InputError(self.folder / "func", f"several atlases have matrices ({', '.join(found)}); "
                         "pass atlas=... to choose one")

    def _func_missing_reason(self, task: str, atlas: str | None, stat: str | None) -> str | None:
        try:
            summary = self.func_summary(task=task)
        except MissingOutputError:
            return None  # the stage did not run: the default message says so
        row = summary.iloc[0]
        if int(row.get("excluded", 0) or 0):
            return f"the run was excluded ({row.get('exclusion_reason')}), so no matrix was written"
        have = ", ".join(f"seg-{a} stat-{m}" for a in self.atlases() for m in self.measures(a))
        return (
            f"the func stage ran but wrote no such matrix (written: {have or 'none'}; "
            "see func.atlas and func.measures in the configuration)"
        )

    # ------------------------------------------------------------------ figures, provenance
    def figures(self) -> dict[str, Path]:
        """The QC figures of this session: ``{name: path}``.

        ``name`` is the file name without the ``sub-*_ses-*_`` prefix and the extension,
        e.g. ``"desc-fa_dwi"``, ``"task-rest_desc-fd_bold"``, ``"desc-profiles_tract"``.
        """
        prefix = f"sub-{self.subject}_" + (f"ses-{self.session}_" if self.session else "")
        out = {}
        for path in self.files(datatype="figures"):
            name = path.name.split(".", 1)[0]
            out[name[len(prefix) :] if name.startswith(prefix) else name] = path
        return dict(sorted(out.items()))

    def provenance(self, path: PathT) -> dict[str, Any]:
        """The JSON sidecar of a file of this session (see :meth:`DerivativesResults.provenance`)."""
        return self.results.provenance(path)

    def summary(self) -> dict[str, Any]:
        """Key facts of this session: stages run, file counts and headline numbers.

        Keys: ``subject, session, stages`` (stage -> bool), ``n_files``, ``n_figures``, and
        when available ``brain_fraction_icv``, ``lesion_mm3``, ``n_lesions``,
        ``NAWM_<L|R>_<metric>`` (means), ``n_bundles_ok``, ``func_mean_fd_mm``,
        ``func_excluded``, ``atlases``.
        """
        stages = self.stages
        out: dict[str, Any] = {"subject": self.subject, "session": self.session,
                               "stages": stages, "n_files": len(self.files()),
                               "n_figures": len(self.figures())}
        if stages["anat"]:
            vol = self.volumes().iloc[0]
            out["brain_fraction_icv"] = float(vol.get("brain_fraction_icv", float("nan")))
            out["lesion_mm3"] = float(vol.get("lesion_mm3", float("nan")))
            with contextlib.suppress(MissingOutputError):
                out["n_lesions"] = len(self.lesions())
        if stages["dwi"]:
            t = self.roi_table(rois=["NAWM_L", "NAWM_R"])
            for _, r in t.iterrows():
                out[f"{r['roi']}_{r['metric']}"] = float(r["mean"])
        if stages["tract"]:
            out["n_bundles_ok"] = int((self.tract_table()["status"] == "ok").sum())
        if stages["func"]:
            row = self.func_summary().iloc[0]
            out["func_mean_fd_mm"] = float(row["mean_fd_mm"])
            out["func_excluded"] = bool(row["excluded"])
            out["atlases"] = self.atlases()
        return out


def _select(table: pd.DataFrame, **filters: Iterable[str] | None) -> pd.DataFrame:
    for column, values in filters.items():
        if values is None:
            continue
        values = [values] if isinstance(values, str) else list(values)
        unknown = sorted(set(values) - set(table[column].astype(str)))
        if unknown:
            raise ValueError(f"no {column} {unknown} in the table; available: "
                             f"{sorted(set(table[column].astype(str)))}")
        table = table[table[column].astype(str).isin(values)]
    return table.reset_index(drop=True)


# --------------------------------------------------------------------------- dataset


class DerivativesResults:
    """An msmri derivatives folder, indexed for reading.

    Parameters
    ----------
    output_dir : path-like
        The pipeline's output folder: a BIDS-Derivatives dataset whose
        ``dataset_description.json`` has ``"DatasetType": "derivative"`` and ``GeneratedBy``.
    participant_label : str or sequence of str, optional
        Index only these subjects (faster on a large trial); others are then unknown.
    database_path : path-like, optional
        pybids SQLite index cache, reused across runs if it exists.

    Attributes
    ----------
    root : pathlib.Path
    description : dict
        ``dataset_description.json``.
    config : dict
        The resolved configuration the outputs were made with (``GeneratedBy[0].Configuration``
        or ``config.yaml``); empty if neither is present.
    layout : bids.BIDSLayout

    Raises
    ------
    InputError
        The folder does not exist or is not a derivatives dataset.
    """

    def __init__(
        self,
        output_dir: PathT,
        *,
        participant_label: str | Sequence[str] | None = None,
        database_path: PathT | None = None,
    ):
        self.root = Path(output_dir).expanduser().absolute()
        self.description = read_dataset_description(self.root, derivative=True, outputs=True)
        self.config = self._read_config()
        wanted = [participant_label] if isinstance(participant_label, str) else participant_label
        self._wanted = None if wanted is None else [_strip(s, "sub-") for s in wanted]
        self._database_path = database_path
        self.layout = self._index()
        self._set_catalogue(self._catalogue_of(self.layout))

    def __repr__(self) -> str:
        return f"<DerivativesResults {self.root}: {len(self.subjects)} subject(s)>"

    # ------------------------------------------------------------------ indexing
    def _read_config(self) -> dict[str, Any]:
        for gen in self.description.get("GeneratedBy") or []:
            if isinstance(gen, dict) and isinstance(gen.get("Configuration"), dict):
                return gen["Configuration"]
        cfg = self.root / "config.yaml"
        if cfg.is_file():
            import yaml

            content = yaml.safe_load(cfg.read_text(encoding="utf-8"))
            return content if isinstance(content, dict) else {}
        return {}

    def _index(self) -> bids.BIDSLayout:
        import bids
        from bids.exceptions import PyBIDSError
        from bids.layout import BIDSLayoutIndexer

        # hidden files anywhere: the writer's in-progress temporary files (".<name>.tmp...")
        ignore: list[Any] = [re.compile(r"/\."), "logs", "code", "sourcedata", "work"]
        if self._wanted is not None:
            present = {p.name[4:] for p in self.root.glob("sub-*") if p.is_dir()}
            self._check_subjects(self._wanted, present)
            keep = "|".join(re.escape(s) for s in self._wanted)
            ignore.append(re.compile(rf"^/sub-(?!(?:{keep})(?:/|$))[^/]+"))
        indexer = BIDSLayoutIndexer(validate=False, ignore=ignore, index_metadata=False)
        kwargs: dict[str, Any] = {}
        if self._database_path is not None:
            kwargs["database_path"] = str(self._database_path)
        try:
            return bids.BIDSLayout(str(self.root), validate=False, indexer=indexer,
                                   config=["bids", "derivatives", PYBIDS_CONFIG], **kwargs)
        except (PyBIDSError, ValueError) as exc:
            raise InputError(self.root, f"pybids could not index the derivatives: {exc}") from exc

    def refresh(self) -> None:
        """Re-index the folder (after a stage has written more files)."""
        self.layout = self._index()
        self._set_catalogue(self._catalogue_of(self.layout))

    def _entity(self, path: Path, key: str) -> str | None:
        m = re.search(rf"(?:^|_){re.escape(key)}-([a-zA-Z0-9+]+)", path.name)
        return m.group(1) if m else None

    def _catalogue_of(self, layout: bids.BIDSLayout) -> dict[Path, dict[str, str]]:
        """``{path: {entity: value}}`` of every indexed file, from pybids' index.

        One query of pybids' tag table instead of a ``layout.get`` per lookup: a
        notebook makes hundreds of lookups, and each ``get`` costs 50-300 ms while
        the whole catalogue of a 15-session trial takes well under a second.
        """
        from bids.layout.models import Tag

        rows = layout.session.query(Tag.file_path, Tag.entity_name, Tag._value).filter(
            Tag.is_metadata.is_(False)
        )
        catalogue: dict[Path, dict[str, str]] = {}
        for path, name, value in rows:
            catalogue.setdefault(Path(path), {})[name] = value
        return catalogue

    def _set_catalogue(self, catalogue: dict[Path, dict[str, str]]) -> None:
        self._catalogue = catalogue
        self._by_pair: dict[tuple[str | None, str | None], list[tuple[Path, dict[str, str]]]] = {}
        for path, ent in catalogue.items():
            self._by_pair.setdefault((ent.get("subject"), ent.get("session")), []).append(
                (path, ent)
            )
        self._sessions: dict[tuple[str, str | None], SubjectSession] = {}

    def _find(self, *, sub: str | None, ses: str | None, folder: str | None,
              **entities: Any) -> list[Path]:
        """Indexed files by writer-style entities (``None``: the entity must be absent,
        a list: any of its values); ``folder`` is the datatype folder name ("" for the
        files directly in the subject-session folder)."""
        query: dict[str, Any] = {}
        for key, value in {"sub": sub, "ses": ses, **entities}.items():
            if key == "datatype":  # pybids knows anat/dwi/func only: the folder selects
                continue
            name = _PYBIDS_KEYS.get(key, key)
            query[name] = (None if value is None else
                           {str(v) for v in ([value] if isinstance(value, str) else value)})
        base = self.root if sub is None else self.root / f"sub-{sub}"
        if sub is not None and ses is not None:
            base = base / f"ses-{ses}"
        parent = None if folder is None else (base / folder if folder else base)
        paths = []
        for path, ent in self._by_pair.get((sub, ses), ()):
            if parent is not None and path.parent != parent:
                continue
            if sub is not None and base not in path.parents:  # e.g. a report page at the root
                continue
            if all((ent.get(k) is None) if v is None else (ent.get(k) in v)
                   for k, v in query.items()):
                paths.append(path)
        return sorted(paths)

    # ------------------------------------------------------------------ subjects, sessions
    @property
    def subjects(self) -> list[str]:
        """Subject labels (without ``sub-``) with outputs, sorted."""
        return sorted({e["subject"] for e in self._catalogue.values() if "subject" in e})

    @property
    def task(self) -> str:
        """The resting-state task label the fMRI outputs use (``bids.bold_task``)."""
        return str((self.config.get("bids") or {}).get("bold_task") or "rest")

    def _check_subjects(self, wanted: Iterable[str], present: Iterable[str]) -> None:
        present = sorted(present)
        unknown = [s for s in wanted if s not in present]
        if unknown:
            raise InputError(self.root, f"subject(s) {', '.join('sub-' + s for s in unknown)} "
                             f"not found in this derivatives folder; available: "
                             f"{', '.join('sub-' + s for s in present) or 'none'}")

    def _subject(self, subject: str) -> str:
        subject = _strip(subject, "sub-")
        self._check_subjects([subject], self.subjects)
        return subject

    def sessions(self, subject: str) -> list[str]:
        """Session labels of ``subject`` in time order (``sessions.order`` of the
        configuration, then alphabetical for any others)."""
        subject = self._subject(subject)
        found = {e["session"] for e in self._catalogue.values()
                 if e.get("subject") == subject and "session" in e}
        order = list((self.config.get("sessions") or {}).get("order") or [])
        return [s for s in order if s in found] + sorted(found - set(order))

    def session(self, subject: str, session: str | None = None) -> SubjectSession:
        """The outputs of one subject-session (``session`` default: the first in time)."""
        subject = self._subject(subject)
        sessions = self.sessions(subject)
        session = (
            (sessions[0] if sessions else None) if session is None else _strip(session, "ses-")
        )
        if session is not None and session not in sessions:
            raise InputError(self.root / f"sub-{subject}",
                             f"session ses-{session} not found for sub-{subject}; available: "
                             f"{', '.join('ses-' + s for s in sessions) or 'none'}")
        key = (subject, session)
        if key not in self._sessions:  # one object per session: its lookups are cached
            self._sessions[key] = SubjectSession(self, subject, session)
        return self._sessions[key]

    def __getitem__(self, key: str | tuple[str, str]) -> SubjectSession:
        """``results["01", "baseline"]`` or ``results["01"]`` (first session)."""
        return self.session(*key) if isinstance(key, tuple) else self.session(key)

    def months(self, session: str) -> float | None:
        """Time of ``session`` since baseline from ``sessions.months``, if configured."""
        months = (self.config.get("sessions") or {}).get("months") or {}
        value = months.get(session)
        return None if value is None else float(value)

    def longitudinal(self, subject: str, table: str = "roi_table", **kwargs: Any) -> pd.DataFrame:
        """One table of every session of ``subject``: a :class:`SubjectSession` table
        accessor (``roi_table``, ``tract_table``, ``tract_profiles``, ``volumes``,
        ``lesions``, ``func_summary``, ``motion_summary``) called per session with
        ``kwargs`` and concatenated in time order, with ``session`` and ``time_months``
        columns first. Sessions without that output are skipped; the frame's
        ``attrs["missing"]`` lists them.

        Raises :class:`MissingOutputError` if no session has it.
        """
        import pandas as pd

        allowed = ("roi_table", "tract_table", "tract_profiles", "volumes", "lesions",
                   "func_summary", "motion_summary", "dwi_motion")
        if table not in allowed:
            raise ValueError(f"unknown table {table!r}; expected one of {allowed}")
        frames, missing, first_error = [], [], None
        for ses in self.sessions(subject):
            try:
                t = getattr(self.session(subject, ses), table)(**kwargs)
            except MissingOutputError as exc:
                missing.append(ses)
                first_error = first_error or exc
                continue
            t = t.drop(columns=[c for c in ("session", _TIME_COLUMN) if c in t])
            t.insert(0, _TIME_COLUMN, self.months(ses))
            t.insert(0, "session", ses)
            frames.append(t)
        if not frames:
            if first_error is None:
                raise InputError(self.root / f"sub-{_strip(subject, 'sub-')}", "no sessions")
            raise first_error
        out = pd.concat(frames, ignore_index=True)
        out.attrs["missing"] = missing
        return out

    # ------------------------------------------------------------------ group, provenance
    def group_files(self) -> list[Path]:
        """Files of the ``group/`` folder."""
        return self._find(sub=None, ses=None, folder="group")

    def group_table(self, suffix: str, *, desc: str | None = None, **entities: Any) -> pd.DataFrame:
        """A group-level TSV, e.g. ``group_table("dwistats", desc="tests")``.

        ``entities`` narrow the choice (``seg``, ``stat``, ``task``); with several
        matches the error lists them.
        """
        query = dict(entities)
        if desc is not None:
            query["desc"] = desc
        found = self._find(sub=None, ses=None, folder="group", suffix=suffix, extension=".tsv",
                           **query)
        if not found:
            stage = GROUP_STAGES.get(suffix, "group")
            raise MissingOutputError(
                build_path(self.root, datatype="group", suffix=suffix, extension=".tsv", **query),
                f"group {suffix} table", stage=stage, level="group",
            )
        if len(found) > 1:
            raise InputError(self.root / "group", f"{len(found)} {suffix} tables match "
                             f"({', '.join(p.name for p in found)}); pass desc=... to choose")
        return read_tsv(found[0])

    def provenance(self, path: PathT) -> dict[str, Any]:
        """The provenance sidecar of a derived file (its ``.json`` beside it).

        ``path`` is absolute, relative to the output folder, or a bare file name
        found in the index. Returns the sidecar content (``Sources``, ``Parameters``,
        ``RandomSeed``, ``SoftwareVersions`` ...); a JSON data file is returned as is.
        """
        p = Path(path)
        if not p.is_absolute():
            candidates = [self.root / p] if (self.root / p).exists() else [
                f for f in self._catalogue if f.name == p.name
            ]
            if len(candidates) != 1:
                raise InputError(self.root / p, f"expected one file named {p.name} in the "
                                 f"derivatives folder, found {len(candidates)}")
            p = candidates[0]
        if not p.exists():
            raise InputError(p, "file not found")
        side = p if p.name.endswith(".json") else p.with_name(p.name.split(".", 1)[0] + ".json")
        if not side.is_file():
            raise InputError(side, f"provenance sidecar of {p.name} not found")
        return _read_json(side)
