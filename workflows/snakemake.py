"""Helpers used by the Snakefile: subject-session discovery and the job command line."""

from __future__ import annotations

import functools
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from workflows.outputs import participant_output

__all__ = [
    "anat_job_inputs", "anatomical_reference", "bold_task", "discover", "dwi_job_inputs", "followups",
    "func_input_mode", "func_job_inputs", "msmri_cmd", "nbs_output", "qcfc_output", "with_modality",
]


def _as_list(value: Any, available: list[str]) -> list[str] | None:
    """Labels from a Snakemake config value (string, number or list).

    ``--config participant_label=02`` reaches us as the integer 2 (Snakemake
    parses values as YAML), so numbers are matched numerically against the
    labels that exist.
    """
    if value in (None, "", []):
        return None
    if isinstance(value, str):
        items: list[Any] = [v for v in value.replace(",", " ").split() if v]
    elif isinstance(value, (int, float)):
        items = [value]
    else:
        items = list(value)
    labels = []
    for item in items:
        text = str(item)
        if not isinstance(item, str):
            numeric = [a for a in available if a.isdigit() and int(a) == int(item)]
            text = numeric[0] if len(numeric) == 1 else text
        labels.append(text)
    return labels


@functools.lru_cache(maxsize=4)
def _file_index(bids_dir: Path):
    """One pybids index of the dataset's files (no sidecar metadata) per process.

    The Snakefile is parsed once per Snakemake process, and its DAG needs only
    which files exist, so one index without the JSON sidecars serves every helper
    (it was built three times, with sidecars; ``benchmarks/bench_dag.py``).
    """
    from workflows.bids import index_dataset

    return index_dataset(bids_dir, index_metadata=False)


def _layout(config: Mapping[str, Any]):
    return _file_index(Path(config["bids_dir"]).resolve())


def discover(config: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(subject, session) pairs of the BIDS dataset, honouring the label filters."""
    from workflows.bids import list_subject_sessions

    layout = _layout(config)
    pairs = list_subject_sessions(
        layout,
        participant_label=_as_list(config.get("participant_label"), layout.get_subjects()),
        session_label=_as_list(config.get("session_label"), layout.get_sessions()),
    )
    missing_ses = [s for s, t in pairs if t is None]
    if missing_ses:
        raise ValueError(
            f"{config['bids_dir']}: subjects {missing_ses} have no ses- folders; msmri expects "
            "longitudinal data with one folder per session"
        )
    return [(s, t) for s, t in pairs if t is not None]


def with_modality(
    config: Mapping[str, Any], pairs: list[tuple[str, str]], suffix: str, **entities: Any
) -> list[tuple[str, str]]:
    """The (subject, session) pairs that have an image with this BIDS suffix (e.g. ``dwi``).

    ``entities`` narrow the query further, e.g. ``task="rest"`` for BOLD runs.
    """
    from workflows.bids import subject_session_of

    layout = _layout(config)
    files = layout.get(suffix=suffix, extension=[".nii", ".nii.gz"], return_type="filename",
                       **entities)
    found = {subject_session_of(layout.root, f) for f in files}
    return [p for p in pairs if p in found]


def msmri_cmd(config: Mapping[str, Any], level: str, stage: str) -> str:
    """The `msmri` command (without subject/session filters) for one stage."""
    parts = [
        "msmri",
        str(Path(config["bids_dir"]).resolve()),
        str(Path(config["output_dir"]).resolve()),
        level,
    ]
    if config.get("msmri_config"):
        parts += ["--config", str(Path(config["msmri_config"]).resolve())]
    if config.get("work_dir"):
        parts += ["--work-dir", str(Path(config["work_dir"]).resolve())]
    parts += ["--stages", stage]
    return " ".join(shlex.quote(p) for p in parts)


def _msmri_config(config: Mapping[str, Any]):
    from pipeline.config import load_config

    return load_config([config["msmri_config"]] if config.get("msmri_config") else [])


def anatomical_reference(config: Mapping[str, Any]) -> str:
    """``anat.anatomical_reference`` of the pipeline configuration the jobs will use."""
    return _msmri_config(config).anat.anatomical_reference


def bold_task(config: Mapping[str, Any]) -> str:
    """``bids.bold_task`` of the pipeline configuration the jobs will use."""
    return _msmri_config(config).bids.bold_task


def anat_job_inputs(out_dir: Path, mode: str, subject: str, session: str) -> list[Path]:
    """Inputs of one structural job: its inventory, plus the subject reference when used."""
    out_dir = Path(out_dir)
    inputs = [out_dir / participant_output("inventory", subject, session)]
    if mode != "sessionwise":
        inputs.append(out_dir / f"sub-{subject}/anat/sub-{subject}_desc-subjectref_T1w.nii.gz")
    return inputs


def dwi_job_inputs(out_dir: Path, subject: str, session: str, has_t1w: bool) -> list[Path]:
    """Inputs of one diffusion job: the session's structural table, or its inventory when
    the session has no T1w (the diffusion stage then runs on the DWI alone)."""
    return [Path(out_dir) / participant_output("anat" if has_t1w else "inventory", subject, session)]


def func_input_mode(config: Mapping[str, Any]) -> str:
    """``func.input`` of the pipeline configuration the jobs will use (raw or fmriprep)."""
    return _msmri_config(config).func.input


def func_job_inputs(out_dir: Path, mode: str, subject: str, session: str) -> list[Path]:
    """Inputs of one fMRI job.

    Raw BOLD is registered to the structural stage's T1w and uses its tissue masks,
    so the job waits for that session's structural job. fMRIPrep derivatives are
    already in MNI space with their own confounds: the job needs only the
    session's inventory and runs as soon as it exists.
    """
    stage = "inventory" if mode == "fmriprep" else "anat"
    return [Path(out_dir) / participant_output(stage, subject, session)]


def followups(
    config: Mapping[str, Any], pairs: list[tuple[str, str]]
) -> list[tuple[str, str, str]]:
    """(subject, follow-up session, reference session) for every non-reference session."""
    from workflows.bids import read_sessions_table
    from workflows.longitudinal import reference_session

    cfg = _msmri_config(config)
    out = []
    for sub in sorted({s for s, _ in pairs}):
        available = [t for s, t in pairs if s == sub]
        ref = reference_session(cfg, read_sessions_table(Path(config["bids_dir"]), sub), available)
        out += [(sub, ses, ref) for ses in available if ses != ref]
    return out


def _group_func_output(config: Mapping[str, Any], desc: str, suffix: str) -> str:
    from workflows.outputs import group_func_output

    return group_func_output(_msmri_config(config), desc, suffix)


def nbs_output(config: Mapping[str, Any]) -> str:
    """Path (relative to the output folder) of the group NBS job's last-written table."""
    return _group_func_output(config, "exclusions", "nbs")


def qcfc_output(config: Mapping[str, Any]) -> str:
    """Path (relative to the output folder) of the group QC-FC job's last-written table."""
    return _group_func_output(config, "qcfcruns", "bold")
