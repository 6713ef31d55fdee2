"""Names of the files msmri writes, in one place (no Nipype import).

The Snakefile and its rules, the stage writers, the reports, the results API and
the group stages build output paths through these helpers instead of spelling
file names by hand (snakebids' ``bids()`` is the model). Importing this module
is cheap: building the Snakemake DAG must not import Nipype.

- :data:`STAGE_OUTPUTS`: per participant stage, the entities of the file whose
  presence shows the stage ran (the Snakemake job's output);
- :func:`participant_output` / :func:`participant_pattern`: that file's path
  relative to the output folder, for given labels or with Snakemake wildcards;
- :data:`MEASURE_STATS` and :func:`seg_name`: the ``stat-`` and ``seg-`` entities of
  the connectivity matrices;
- :func:`group_func_output`: group-level fMRI tables (NBS, QC-FC).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from workflows.derivatives import build_path

__all__ = [
    "MEASURE_STATS",
    "STAGE_OUTPUTS",
    "group_func_output",
    "participant_output",
    "participant_pattern",
    "seg_name",
]

#: Participant stage -> entities of the table that shows the stage ran.
STAGE_OUTPUTS: dict[str, dict[str, Any]] = {
    "inventory": {"datatype": None, "suffix": "inventory", "extension": ".tsv"},
    "anat": {"datatype": "anat", "suffix": "volumes", "extension": ".tsv"},
    "dwi": {"datatype": "dwi", "space": "dwi", "model": "tensor", "suffix": "roistats",
            "extension": ".tsv"},
    "tract": {"datatype": "dwi", "space": "dwi", "model": "tensor", "suffix": "tractstats",
              "extension": ".tsv"},
    "func": {"datatype": "func", "desc": "summary", "suffix": "bold", "extension": ".tsv"},
}

#: Connectivity measure (configuration name) -> (nilearn / pipeline kind, ``stat``
#: entity of the matrix file, description).
MEASURE_STATS: dict[str, tuple[str, str, str]] = {
    "correlation": ("correlation", "pearsoncorrelation",
                    "Pearson correlation of the denoised region time series (empirical "
                    "covariance, nilearn ConnectivityMeasure)"),
    "fisher_z": ("fisher_z", "fisherz",
                 "Fisher z (arctanh) of the correlation matrix; diagonal set to 0"),
    "partial_correlation": ("partial correlation", "partialcorrelation",
                            "partial correlation (Ledoit-Wolf shrunk covariance, nilearn)"),
}


def seg_name(atlas: str, atlas_labels: str | None = None) -> str:
    """The ``seg-`` entity of an atlas: its name, or the label table's file stem (alphanumeric)."""
    if atlas_labels is None:
        return atlas
    stem = Path(atlas_labels).name.split(".")[0]
    name = "".join(c for c in stem if c.isalnum())
    return name or "labels"


def participant_output(stage: str, subject: str, session: str, **entities: Any) -> str:
    """Path, relative to the output folder, of ``stage``'s table for one subject-session.

    ``entities`` adds entities the stage's name needs (``task`` for ``func``).

    >>> participant_output("dwi", "01", "m06")
    'sub-01/ses-m06/dwi/sub-01_ses-m06_space-dwi_model-tensor_roistats.tsv'
    """
    spec = {**STAGE_OUTPUTS[stage], **entities}
    return build_path("", sub=subject, ses=session, **spec).as_posix()


def participant_pattern(stage: str, **entities: Any) -> str:
    """:func:`participant_output` with the Snakemake wildcards ``{subject}`` / ``{session}``."""
    return participant_output(stage, "{subject}", "{session}", **entities)


def group_func_output(config: Any, desc: str, suffix: str, extension: str = ".tsv") -> str:
    """Relative path of a group fMRI table (``task``, ``seg``, ``stat`` entities of ``nbs.measure``).

    ``config`` is a :class:`pipeline.config.Config`.
    """
    seg = seg_name(config.func.atlas, config.func.atlas_labels)
    stat = MEASURE_STATS[config.nbs.measure][1]
    return build_path("", datatype="group", task=config.bids.bold_task, seg=seg, stat=stat,
                      desc=desc, suffix=suffix, extension=extension).as_posix()

