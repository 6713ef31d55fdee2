"""One naming specification and one writer for every file msmri produces.

File names follow BIDS and BIDS-Derivatives (with the common draft entities for
diffusion models, bundles and connectivity)::

    sub-01/ses-baseline/dwi/sub-01_ses-baseline_space-dwi_model-tensor_param-fa_dwimap.nii.gz
    sub-01/ses-baseline/func/sub-01_ses-baseline_task-rest_seg-dosenbach_stat-pearsoncorrelation_relmat.tsv

Every write is atomic: data go to a hidden temporary file in the destination
folder which is then renamed over the final name, so a crashed job never leaves
a file that looks finished. Every data file gets a JSON sidecar with its
provenance (sources, parameters, software versions, random seed).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import io
import json
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from pipeline import __version__
from pipeline.errors import InputError
from pipeline.validation import read_json_object

__all__ = [
    "ENTITY_ORDER",
    "DerivativesWriter",
    "atomic_path",
    "atomic_write_text",
    "bids_name",
    "build_path",
    "flagged_sessions",
    "read_dataset_description",
    "read_dwi_exclusions",
    "read_plausibility",
    "read_tsv",
    "software_versions",
]

#: Order of entities in file names (BIDS order, then the derivative entities).
ENTITY_ORDER: tuple[str, ...] = (
    "sub", "ses", "task", "acq", "ce", "rec", "dir", "run", "echo",
    "from", "to", "mode", "space", "res", "den", "hemi", "seg", "label",
    "model", "param", "bundle", "stat", "desc",
)


def bids_name(entities: Mapping[str, Any], suffix: str, extension: str) -> str:
    """Compose ``key-value_..._suffix.ext`` with entities in :data:`ENTITY_ORDER`.

    ``None`` values are skipped; values may not contain ``_``, ``-`` or ``/``.
    """
    unknown = set(entities) - set(ENTITY_ORDER)
    if unknown:
        raise ValueError(f"unknown BIDS entities {sorted(unknown)}; known: {ENTITY_ORDER}")
    parts = []
    for key in ENTITY_ORDER:
        val = entities.get(key)
        if val is None:
            continue
        val = str(val)
        if not val or any(c in val for c in "_-/ "):
            raise ValueError(f"invalid value {val!r} for entity '{key}'")
        parts.append(f"{key}-{val}")
    if not extension.startswith("."):
        extension = "." + extension
    return "_".join([*parts, suffix]) + extension


def build_path(
    root: str | os.PathLike[str],
    *,
    datatype: str | None,
    suffix: str,
    extension: str,
    **entities: Any,
) -> Path:
    """Full path of a file in a BIDS(-Derivatives) tree rooted at ``root``."""
    folder = Path(root)
    if entities.get("sub") is not None:
        folder = folder / f"sub-{entities['sub']}"
        if entities.get("ses") is not None:
            folder = folder / f"ses-{entities['ses']}"
    if datatype:
        folder = folder / datatype
    return folder / bids_name(entities, suffix, extension)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it to ``path`` on success.

    The temporary name keeps the full extension (e.g. ``.nii.gz``) so writers
    that infer the format from the name work; it starts with a dot so BIDS
    indexers ignore it. On error the temporary file is removed.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    name = final.name
    stem, dot, ext = name.partition(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{stem}.", suffix=f".tmp{dot}{ext}", dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write text atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def dumps_json(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n"


def read_tsv(path: str | os.PathLike[str], **kwargs: Any) -> Any:
    """Read a TSV this writer wrote: ``n/a`` is missing, ``subject``/``session`` stay strings."""
    import pandas as pd

    kwargs.setdefault("dtype", {"subject": str, "session": str})
    return pd.read_csv(path, sep="\t", keep_default_na=False, na_values=["n/a"], **kwargs)


def read_plausibility(root: str | os.PathLike[str], subject: str, session: str) -> dict | None:
    """The structural plausibility flag of one subject-session, or None if not written.

    Returns ``{"flagged": bool, "failed": [check names], "reason": str, "path": Path}``
    from ``anat/sub-*_ses-*_desc-plausibility_checks.json`` (see
    :mod:`pipeline.anat.plausibility`).
    """
    path = build_path(root, datatype="anat", suffix="checks", extension=".json",
                      sub=subject, ses=session, desc="plausibility")
    if not path.exists():
        return None
    meta = read_json_object(path)
    return {"flagged": bool(meta.get("Flagged")), "failed": list(meta.get("FailedChecks", [])),
            "reason": str(meta.get("Reason", "")), "path": path}


def read_dwi_exclusions(root: str | os.PathLike[str], subject: str, session: str) -> dict | None:
    """The DWI volume-exclusion record of one subject-session, or None if not written.

    Returns ``{"flagged": bool, "reason": str, "warning": str, "excluded": [volumes],
    "fraction": float, "path": Path}`` from the sidecar of
    ``dwi/sub-*_ses-*_desc-confounds_timeseries.tsv``.
    """
    path = build_path(root, datatype="dwi", suffix="timeseries", extension=".json",
                      sub=subject, ses=session, desc="confounds")
    if not path.exists():
        return None
    meta = read_json_object(path)
    if "ExcludedVolumes" not in meta:
        return None
    return {"flagged": bool(meta.get("Flagged")), "reason": str(meta.get("Reason", "")),
            "warning": str(meta.get("Warning", "")), "excluded": list(meta["ExcludedVolumes"]),
            "fraction": float(meta.get("ExcludedFraction", 0.0)), "path": path}


def flagged_sessions(
    root: str | os.PathLike[str], modalities: Sequence[str] = ("anat",)
) -> dict[tuple[str, str], str]:
    """``(subject, session) -> reason`` of every session whose results are flagged.

    ``modalities``: ``"anat"`` (structural plausibility checks), ``"dwi"`` (more
    diffusion-weighted volumes excluded than ``dwi.max_excluded_fraction``, or a failed
    b = 0 -> T1w registration) and ``"func"`` (a failed BOLD -> T1w registration).
    """
    out: dict[tuple[str, str], str] = {}
    for path in sorted(Path(root).glob("sub-*/ses-*")):
        if not path.is_dir():
            continue
        sub, ses = path.parent.name[4:], path.name[4:]
        why = []
        if "anat" in modalities:
            flag = read_plausibility(root, sub, ses)
            if flag and flag["flagged"]:
                why.append(f"ses-{ses} structural results flagged ({', '.join(flag['failed'])})")
        if "dwi" in modalities:
            ex = read_dwi_exclusions(root, sub, ses)
            if ex and ex["flagged"]:
                why.append(f"ses-{ses} DWI flagged ({ex['reason']})")
        if "func" in modalities:
            for summary in sorted(path.glob("func/sub-*_desc-summary_bold.json")):
                meta = read_json_object(summary)
                if meta.get("Flagged"):
                    why.append(f"ses-{ses} BOLD flagged ({meta.get('Reason', '')})")
        if why:
            out[(sub, ses)] = "; ".join(why)
    return out


OUTPUT_HINT = (
    "give the msmri OUTPUT_DIR (run the participant stages first), not the raw BIDS folder"
)


def read_dataset_description(
    root: str | os.PathLike[str], *, derivative: bool, outputs: bool = False
) -> dict[str, Any]:
    """Check a dataset's root and return its ``dataset_description.json``.

    The one check behind every entry point that opens a dataset: the BIDS input
    (``derivative=False``), an input derivatives folder such as the lesion masks
    or fMRIPrep outputs (``derivative=True``), and msmri's own output folder read
    back by the reports and the results API (``outputs=True``, which also needs
    ``"DatasetType": "derivative"``).

    Raises
    ------
    InputError
        Naming the folder or its description file: missing folder, a file instead
        of a folder, no description, unreadable JSON, a derivatives description
        without ``GeneratedBy`` (or legacy ``PipelineDescription``) naming the
        pipeline, or ``DatasetType`` other than ``derivative``.
    """
    root = Path(root)
    derivative = derivative or outputs
    kind = "BIDS derivatives dataset" if derivative else "BIDS dataset"
    hint = f" ({OUTPUT_HINT})" if outputs else ""
    if not root.exists():
        raise InputError(root, f"{kind} directory not found{hint}")
    if not root.is_dir():
        raise InputError(root, f"expected a {kind} directory, got a file{hint}")
    desc = root / "dataset_description.json"
    if not desc.is_file():
        raise InputError(desc, f"file not found: expected every {kind} to have a "
                         f"dataset_description.json at its root ({root}){hint}")
    content = read_json_object(desc)
    if not derivative:
        return content
    dtype = content.get("DatasetType")
    if (outputs or dtype is not None) and dtype != "derivative":
        raise InputError(desc, f'not a derivatives dataset: expected "DatasetType": "derivative", '
                         f"got {dtype!r}{hint}")
    generated = content.get("GeneratedBy") or []
    names = [g.get("Name") for g in generated if isinstance(g, Mapping)] if isinstance(
        generated, list) else []
    legacy = content.get("PipelineDescription")
    if not any(names) and not (isinstance(legacy, Mapping) and legacy.get("Name")):
        raise InputError(
            desc, 'expected a derivatives description with "GeneratedBy": [{"Name": ...}] '
            "naming the pipeline, got none"
        )
    return content


def software_versions() -> dict[str, str]:
    """Versions of the scientific packages that can influence results."""
    from importlib import metadata

    out = {"msmri": __version__}
    for pkg in ("numpy", "scipy", "nibabel", "dipy", "nilearn", "nipype", "pandas", "networkx"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[pkg] = metadata.version(pkg)
    return out


class DerivativesWriter:
    """Writes files of one BIDS-Derivatives dataset, atomically, with provenance.

    Parameters
    ----------
    root : path
        Root of the derivatives dataset; created with a ``dataset_description.json``
        (``DatasetType: derivative``, ``GeneratedBy``) if it does not exist.
    name : str
        Name of the dataset / generating pipeline.
    config : mapping, optional
        The resolved configuration; stored in ``dataset_description.json`` and
        as ``config.yaml`` at the root.
    source_datasets : sequence of str
        Paths or URLs of the datasets this one derives from.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        name: str = "msmri",
        description: str | None = None,
        config: Mapping[str, Any] | None = None,
        source_datasets: Sequence[str] = (),
    ):
        self.root = Path(root)
        self.name = name
        self.config = dict(config) if config is not None else None
        self._describe(description, source_datasets)

    def _describe(self, description: str | None, source_datasets: Sequence[str]) -> None:
        desc_path = self.root / "dataset_description.json"
        content = {
            "Name": description or f"{self.name} derivatives",
            "BIDSVersion": "1.9.0",
            "DatasetType": "derivative",
            "GeneratedBy": [
                {
                    "Name": self.name,
                    "Version": __version__,
                    "Description": "msmri: longitudinal MS trial imaging pipeline",
                }
            ],
        }
        if source_datasets:
            content["SourceDatasets"] = [{"URL": str(s)} for s in source_datasets]
        if self.config is not None:
            content["GeneratedBy"][0]["Configuration"] = self.config
        if desc_path.exists():
            try:
                old = json.loads(desc_path.read_text())
            except json.JSONDecodeError:
                old = None
            if old == json.loads(dumps_json(content)):
                return
        atomic_write_text(desc_path, dumps_json(content))
        if self.config is not None:
            import yaml

            atomic_write_text(
                self.root / "config.yaml", yaml.safe_dump(self.config, sort_keys=False)
            )

    # ------------------------------------------------------------------ paths
    def path(self, *, datatype: str | None, suffix: str, extension: str, **entities: Any) -> Path:
        return build_path(
            self.root, datatype=datatype, suffix=suffix, extension=extension, **entities
        )

    def provenance(
        self,
        *,
        sources: Sequence[str | os.PathLike[str]] = (),
        parameters: Mapping[str, Any] | None = None,
        seed: int | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The sidecar content every derived file carries."""
        meta: dict[str, Any] = {}
        if extra:
            meta.update(extra)
        meta["Sources"] = [self._rel(s) for s in sources]
        if parameters is not None:
            meta["Parameters"] = dict(parameters)
        meta["RandomSeed"] = seed
        meta["GeneratedBy"] = {"Name": self.name, "Version": __version__}
        meta["SoftwareVersions"] = software_versions()
        meta["DateGenerated"] = _dt.date.today().isoformat()
        return meta

    def _rel(self, path: str | os.PathLike[str]) -> str:
        p = Path(path)
        try:
            return os.path.relpath(p.resolve(), self.root.resolve())
        except ValueError:  # different drive
            return str(p)

    # ------------------------------------------------------------------ writers
    def _sidecar(self, data_path: Path, meta: Mapping[str, Any] | None) -> Path | None:
        if meta is None:
            return None
        name = data_path.name
        stem = name.split(".", 1)[0]
        side = data_path.with_name(stem + ".json")
        atomic_write_text(side, dumps_json(meta))
        return side

    def write_nifti(self, img: Any, *, meta: Mapping[str, Any] | None = None, **spec: Any) -> Path:
        """Save a nibabel image under the name given by ``spec`` (see :meth:`path`)."""
        import nibabel as nib

        spec.setdefault("extension", ".nii.gz")
        path = self.path(**spec)
        with atomic_path(path) as tmp:
            nib.save(img, tmp)
        self._sidecar(path, meta)
        return path

    def write_tsv(
        self,
        table: Any,
        *,
        meta: Mapping[str, Any] | None = None,
        columns: Mapping[str, Any] | None = None,
        index: bool = False,
        **spec: Any,
    ) -> Path:
        """Save a pandas DataFrame as TSV (``n/a`` for missing values).

        ``columns`` maps column names to BIDS column descriptions
        (``{"Description": ..., "Units": ...}``) stored in the sidecar.
        """
        spec.setdefault("extension", ".tsv")
        path = self.path(**spec)
        buf = io.StringIO()
        table.to_csv(buf, sep="\t", index=index, na_rep="n/a", lineterminator="\n")
        atomic_write_text(path, buf.getvalue())
        if meta is not None or columns is not None:
            full = dict(columns or {})
            full.update(meta or {})
            self._sidecar(path, full)
        return path

    def write_json(self, data: Mapping[str, Any], **spec: Any) -> Path:
        spec.setdefault("extension", ".json")
        path = self.path(**spec)
        atomic_write_text(path, dumps_json(data))
        return path

    def write_text(self, text: str, **spec: Any) -> Path:
        path = self.path(**spec)
        atomic_write_text(path, text)
        return path

    def write_bytes(self, data: bytes, **spec: Any) -> Path:
        path = self.path(**spec)
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)
        return path

    def write_with(self, saver: Any, *, meta: Mapping[str, Any] | None = None, **spec: Any) -> Path:
        """Atomically install the files an object's ``saver(path)`` writes.

        ``saver`` receives the final file name inside a temporary folder next to
        the destination and returns the paths it wrote (e.g. a transform JSON and
        its warp). Companion files are moved first and the named file last, so
        its presence means the set is complete.
        """
        path = self.path(**spec)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmpdir = Path(tempfile.mkdtemp(prefix=".tmp-", dir=path.parent))
        try:
            written = [Path(p) for p in saver(tmpdir / path.name)]
            for f in sorted(written, key=lambda f: f.name == path.name):
                os.replace(f, path.parent / f.name)
        finally:
            import shutil

            shutil.rmtree(tmpdir, ignore_errors=True)
        if not path.name.endswith(".json"):
            self._sidecar(path, meta)
        return path

    def write_figure(self, fig: Any, *, meta: Mapping[str, Any] | None = None, **spec: Any) -> Path:
        """Save a matplotlib figure (``extension`` .svg or .png)."""
        spec.setdefault("extension", ".svg")
        path = self.path(**spec)
        from pipeline.report.figures import save_figure

        with atomic_path(path) as tmp:
            save_figure(fig, tmp, close=False)
        self._sidecar(path, meta)
        return path
