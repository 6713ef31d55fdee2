"""BIDS indexing (pybids) and per-session input collection.

This is the only place that knows the BIDS layout: it turns a BIDS dataset
(plus derivative datasets such as lesion masks) into plain
:class:`SessionInputs` records of paths that the science library
(:mod:`pipeline`) consumes.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import bids
from bids.exceptions import PyBIDSError
from bids.layout import Query

from pipeline.errors import InputError
from workflows.derivatives import read_dataset_description

__all__ = [
    "LESION_SPACES",
    "SessionInputs",
    "collect_inputs",
    "index_dataset",
    "list_subject_sessions",
    "read_participants",
    "read_sessions_table",
    "subject_session_of",
]

PathT = str | PathLike[str]
NIFTI = [".nii.gz", ".nii"]
LESION_SPACES = ("T1w", "FLAIR")


# ------------------------------------------------------------------ indexing
def index_dataset(
    bids_dir: PathT,
    *,
    derivatives: Sequence[PathT] = (),
    validate: bool = False,
    database_path: PathT | None = None,
    index_metadata: bool = True,
) -> bids.BIDSLayout:
    """Index a BIDS dataset with pybids.

    Parameters
    ----------
    bids_dir : path-like
        Dataset root; must contain ``dataset_description.json``.
    derivatives : sequence of path-like
        Derivative datasets to index too (e.g. ``<bids>/derivatives/lesions``);
        pybids ignores ``derivatives/`` in the root unless listed here.  Each
        must contain a ``dataset_description.json`` with ``GeneratedBy``.
    validate : bool
        Passed to :class:`bids.BIDSLayout` (pybids' own file-name validation).
    database_path : path-like, optional
        pybids SQLite cache directory (reused if it exists).
    index_metadata : bool
        Index the JSON sidecars too (needed for metadata queries). Off for file
        discovery alone (the Snakefile), which then skips reading every sidecar.
    """
    root = Path(bids_dir).absolute()
    read_dataset_description(root, derivative=False)
    deriv_paths: list[Path] = []
    for d in derivatives:
        p = Path(d).absolute()
        read_dataset_description(p, derivative=True)
        if p not in deriv_paths:
            deriv_paths.append(p)
    kwargs: dict[str, Any] = {"validate": validate}
    if deriv_paths:
        kwargs["derivatives"] = [str(p) for p in deriv_paths]
    if database_path is not None:
        kwargs["database_path"] = str(database_path)
    if not index_metadata:
        from bids.layout import BIDSLayoutIndexer

        kwargs["indexer"] = BIDSLayoutIndexer(validate=validate, index_metadata=False)
    try:
        return bids.BIDSLayout(str(root), **kwargs)
    except (PyBIDSError, ValueError) as exc:
        raise InputError(root, f"pybids could not index the dataset: {exc}") from exc


# ------------------------------------------------------------------- labels
def _strip(label: str, prefix: str) -> str:
    label = str(label).strip()
    return label[len(prefix) :] if label.startswith(prefix) else label


def _labels(value: str | Iterable[str] | None, prefix: str) -> list[str] | None:
    if value is None:
        return None
    values = [value] if isinstance(value, str) else list(value)
    return [_strip(v, prefix) for v in values]


def subject_session_of(root: PathT, path: PathT) -> tuple[str, str | None] | None:
    """``(subject, session)`` of a file from its ``sub-*/ses-*`` folders, else None.

    Read from the path alone (no pybids entity query), for discovery over many files.
    """
    try:
        parts = Path(path).relative_to(root).parts
    except ValueError:
        return None
    if len(parts) < 2 or not parts[0].startswith("sub-"):
        return None
    ses = parts[1][4:] if len(parts) > 2 and parts[1].startswith("ses-") else None
    return parts[0][4:], ses


def list_subject_sessions(
    layout: bids.BIDSLayout,
    *,
    participant_label: str | Iterable[str] | None = None,
    session_label: str | Iterable[str] | None = None,
) -> list[tuple[str, str | None]]:
    """Sorted ``(subject, session)`` pairs of the raw dataset, optionally filtered.

    Labels are returned without ``sub-``/``ses-`` prefixes and accepted with or
    without them.  Subjects without sessions yield ``(subject, None)``.
    Requesting a subject, or a session, that does not exist is an error.
    """
    root = Path(layout.root)
    subjects = sorted(layout.get_subjects(scope="raw"))
    wanted = _labels(participant_label, "sub-")
    if wanted is not None:
        unknown = [s for s in wanted if s not in subjects]
        if unknown:
            raise InputError(
                root,
                f"participant label(s) {', '.join('sub-' + s for s in unknown)} not found; "
                f"available: {', '.join('sub-' + s for s in subjects) or 'none'}",
            )
        subjects = [s for s in subjects if s in set(wanted)]

    wanted_ses = _labels(session_label, "ses-")
    # one query for the whole dataset: a get_sessions(subject=...) per subject makes
    # the discovery quadratic in the number of subjects (minutes for 500 subjects)
    sessions_of: dict[str, set[str]] = {sub: set() for sub in subjects}
    for path in layout.get(scope="raw", return_type="filename"):
        pair = subject_session_of(root, path)
        if pair is not None and pair[1] is not None and pair[0] in sessions_of:
            sessions_of[pair[0]].add(pair[1])
    pairs: list[tuple[str, str | None]] = []
    seen_sessions: set[str] = set()
    for sub in subjects:
        sessions = sorted(sessions_of[sub])
        seen_sessions.update(sessions)
        if not sessions:
            if wanted_ses is None:
                pairs.append((sub, None))
            continue
        for ses in sessions:
            if wanted_ses is None or ses in wanted_ses:
                pairs.append((sub, ses))
    if wanted_ses is not None:
        unknown = [s for s in wanted_ses if s not in seen_sessions]
        if unknown:
            raise InputError(
                root,
                f"session label(s) {', '.join('ses-' + s for s in unknown)} not found for the "
                f"selected participants; available: "
                f"{', '.join('ses-' + s for s in sorted(seen_sessions)) or 'none'}",
            )
    return pairs


# ------------------------------------------------------------------ inputs
@dataclass(frozen=True)
class SessionInputs:
    """Input files of one subject/session (``None`` when absent).

    ``missing`` lists human-readable reasons for absent inputs; ``notes``
    records choices made (e.g. which of several runs was taken).
    """

    subject: str
    session: str | None
    t1w: Path | None = None
    flair: Path | None = None
    t2w: Path | None = None
    dwi: Path | None = None
    dwi_bval: Path | None = None
    dwi_bvec: Path | None = None
    dwi_json: Path | None = None
    bold: Path | None = None
    bold_json: Path | None = None
    lesion_mask: Path | None = None
    lesion_space: str | None = None
    missing: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


def _run_key(f: Any) -> tuple:
    ents = f.entities
    run = ents.get("run")
    return (
        "ceagent" in ents,  # prefer non contrast-enhanced images
        int(run) if run is not None else 0,
        Path(f.path).name,
    )


def _pick(files: list, what: str, notes: list[str]) -> Path | None:
    if not files:
        return None
    files = sorted(files, key=_run_key)
    if len(files) > 1:
        notes.append(
            f"{what}: {len(files)} files match; using {Path(files[0].path).name} "
            f"(ignored: {', '.join(Path(f.path).name for f in files[1:])})"
        )
    return Path(files[0].path)


def _nearest(layout: bids.BIDSLayout, path: Path, suffix: str, extension: str) -> Path | None:
    found = layout.get_nearest(
        str(path), suffix=suffix, extension=extension, scope="raw", all_=False
    )
    return Path(found) if found else None


def collect_inputs(
    layout: bids.BIDSLayout,
    subject: str,
    session: str | None,
    *,
    bold_task: str = "rest",
    lesion_label: str = "lesion",
) -> SessionInputs:
    """Find the input files of one subject/session.

    Queries the raw dataset for T1w, FLAIR (``anat``), DWI with its
    ``.bval``/``.bvec``/``.json`` (``dwi``, nearest files so BIDS inheritance
    works) and ``task-<bold_task>`` BOLD with its JSON sidecar (``func``), and
    the derivative datasets for ``label-<lesion_label>_mask`` images in
    ``space-T1w`` or ``space-FLAIR``.  When several files match, the first by
    run number is used (non contrast-enhanced first) and a note is recorded.
    Absent inputs are ``None`` and explained in ``missing``; it is up to the
    caller to decide which are required.

    Raises
    ------
    InputError
        Unknown subject or session; lesion masks found only in spaces other
        than T1w/FLAIR (or without a ``space`` entity).
    """
    root = Path(layout.root)
    sub = _strip(subject, "sub-")
    ses = None if session is None else _strip(session, "ses-")
    if sub not in layout.get_subjects(scope="raw"):
        raise InputError(root, f"participant sub-{sub} not found in the dataset")
    if ses is not None and ses not in layout.get_sessions(subject=sub, scope="raw"):
        raise InputError(root, f"session ses-{ses} not found for participant sub-{sub}")

    pre = f"sub-{sub}" + (f"_ses-{ses}" if ses is not None else "")
    rel = Path(f"sub-{sub}") / (f"ses-{ses}" if ses is not None else "")
    base = {
        "subject": sub,
        "session": ses if ses is not None else Query.NONE,
        "invalid_filters": "allow",
    }
    missing: list[str] = []
    notes: list[str] = []

    def query(datatype: str, suffix: str, **extra: Any) -> list:
        return layout.get(
            scope="raw", datatype=datatype, suffix=suffix, extension=NIFTI, **base, **extra
        )

    # anatomy
    t1w = _pick(query("anat", "T1w"), "T1w", notes)
    if t1w is None:
        missing.append(f"T1w: no {pre}_T1w.nii.gz found in {rel / 'anat'}")
    flair = _pick(query("anat", "FLAIR"), "FLAIR", notes)
    if flair is None:
        missing.append(f"FLAIR: no {pre}_FLAIR.nii.gz found in {rel / 'anat'}")
    t2w = _pick(query("anat", "T2w"), "T2w", notes)

    # diffusion
    dwi = _pick(query("dwi", "dwi"), "DWI", notes)
    dwi_bval = dwi_bvec = dwi_json = None
    if dwi is None:
        missing.append(f"DWI: no {pre}_dwi.nii.gz found in {rel / 'dwi'}")
    else:
        dwi_bval = _nearest(layout, dwi, "dwi", ".bval")
        dwi_bvec = _nearest(layout, dwi, "dwi", ".bvec")
        dwi_json = _nearest(layout, dwi, "dwi", ".json")
        stem = dwi.name.split(".")[0]
        if dwi_bval is None:
            missing.append(f"DWI b-values: no {stem}.bval found for {dwi.name}")
        if dwi_bvec is None:
            missing.append(f"DWI gradient directions: no {stem}.bvec found for {dwi.name}")
        if dwi_json is None:
            notes.append(f"DWI: no JSON sidecar found for {dwi.name}")

    # resting-state BOLD
    bold = _pick(query("func", "bold", task=bold_task), f"BOLD (task-{bold_task})", notes)
    bold_json = None
    if bold is None:
        missing.append(f"BOLD: no {pre}_task-{bold_task}_bold.nii.gz found in {rel / 'func'}")
    else:
        bold_json = _nearest(layout, bold, "bold", ".json")
        if bold_json is None:
            missing.append(
                f"BOLD sidecar: no {bold.name.split('.')[0]}.json found for {bold.name} "
                "(RepetitionTime is required)"
            )

    # lesion mask (derivatives)
    lesion_mask = lesion_space = None
    candidates = []
    if layout.derivatives:
        candidates = layout.get(
            scope="derivatives", suffix="mask", label=lesion_label, extension=NIFTI, **base
        )
    usable = [f for f in candidates if f.entities.get("space") in LESION_SPACES]
    if candidates and not usable:
        bad = candidates[0]
        space = bad.entities.get("space")
        raise InputError(
            bad.path,
            "expected a lesion mask in space-T1w or space-FLAIR, got "
            + (f"space-{space}" if space else "no space entity"),
        )
    if usable:
        # T1w first: it is the analysis space, so no extra resampling is needed
        usable.sort(key=lambda f: (LESION_SPACES.index(f.entities["space"]), _run_key(f)))
        lesion_mask = Path(usable[0].path)
        lesion_space = usable[0].entities["space"]
        ignored = [Path(f.path).name for f in candidates if f is not usable[0]]
        if ignored:
            notes.append(
                f"lesion mask: {len(candidates)} files match; using {lesion_mask.name} "
                f"(ignored: {', '.join(ignored)})"
            )
    else:
        where = (
            "the derivative datasets"
            if layout.derivatives
            else "any derivative dataset (none were indexed)"
        )
        missing.append(
            f"lesion mask: no {pre}_space-<T1w|FLAIR>_label-{lesion_label}_mask.nii.gz "
            f"found in {where}"
        )

    return SessionInputs(
        subject=sub,
        session=ses,
        t1w=t1w,
        flair=flair,
        t2w=t2w,
        dwi=dwi,
        dwi_bval=dwi_bval,
        dwi_bvec=dwi_bvec,
        dwi_json=dwi_json,
        bold=bold,
        bold_json=bold_json,
        lesion_mask=lesion_mask,
        lesion_space=lesion_space,
        missing=tuple(missing),
        notes=tuple(notes),
    )


# -------------------------------------------------------------------- tables
def _root_of(layout_or_dir: bids.BIDSLayout | PathT) -> Path:
    if isinstance(layout_or_dir, (str, PathLike)):
        return Path(layout_or_dir)  # note: Path objects have a (different) .root too
    return Path(layout_or_dir.root)


def _read_tsv(path: Path, required: str) -> list[dict[str, str | None]]:
    """Rows of a BIDS TSV file as dicts of strings (``n/a`` -> ``None``)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(path, f"unreadable: expected a UTF-8 TSV file ({exc})") from exc
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        raise InputError(path, f"expected a header row with a '{required}' column, got empty file")
    rows = list(csv.reader(lines, delimiter="\t"))
    header = [h.strip() for h in rows[0]]
    if required not in header:
        raise InputError(path, f"expected a '{required}' column, got columns: {', '.join(header)}")
    records = []
    for lineno, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise InputError(
                path, f"line {lineno}: expected {len(header)} tab-separated values, got {len(row)}"
            )
        values = [v.strip() for v in row]
        records.append(
            {k: (None if v == "n/a" else v) for k, v in zip(header, values, strict=True)}
        )
    return records


def read_sessions_table(
    layout_or_bids_dir: bids.BIDSLayout | PathT, subject: str
) -> list[dict[str, str | None]]:
    """Rows of ``sub-<label>/sub-<label>_sessions.tsv`` (``[]`` if absent).

    Values are strings, ``n/a`` becomes ``None``; ``session_id`` is kept as
    written (``ses-<label>``).
    """
    sub = _strip(subject, "sub-")
    path = _root_of(layout_or_bids_dir) / f"sub-{sub}" / f"sub-{sub}_sessions.tsv"
    if not path.is_file():
        return []
    return _read_tsv(path, "session_id")


def read_participants(
    bids_dir: bids.BIDSLayout | PathT,
) -> list[dict[str, str | None]]:
    """Rows of ``participants.tsv`` (``[]`` if absent); strings, ``n/a`` -> ``None``."""
    path = _root_of(bids_dir) / "participants.tsv"
    if not path.is_file():
        return []
    return _read_tsv(path, "participant_id")
