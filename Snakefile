"""msmri: Snakemake entry point over a BIDS dataset.

Run (see README):

    snakemake --cores 2 --config bids_dir=demo/bids output_dir=demo/derivatives

Snakemake decides which subject-session jobs run; every job calls the `msmri`
command line, which runs the science for that one subject-session.
"""

from pathlib import Path

from workflows.snakemake import (
    anat_job_inputs,
    anatomical_reference,
    bold_task,
    discover,
    dwi_job_inputs,
    followups,
    func_input_mode,
    func_job_inputs,
    msmri_cmd,
    nbs_output,
    qcfc_output,
    with_modality,
)
from workflows.outputs import participant_output, participant_pattern
from workflows.report import session_report_inputs


configfile: Path(workflow.basedir) / "configs" / "snakemake.yaml"


BIDS_DIR = Path(config["bids_dir"]).resolve()
OUT_DIR = Path(config["output_dir"]).resolve()
PAIRS = discover(config)
SUBJECTS = [s for s, _ in PAIRS]
SESSIONS = [t for _, t in PAIRS]
# Sessions without a T1w get the inventory, the diffusion stage (on the DWI alone) and
# the report; the structural, tract, lesion-change and raw-BOLD jobs need the T1w.
T1W_PAIRS = with_modality(config, PAIRS, "T1w")
FOLLOWUPS = followups(config, T1W_PAIRS)
REFERENCE = {sub: ref for sub, _, ref in FOLLOWUPS}
ANAT_REFERENCE = anatomical_reference(config)
DWI_PAIRS = with_modality(config, PAIRS, "dwi")
TRACT_PAIRS = [p for p in DWI_PAIRS if p in T1W_PAIRS]
BOLD_TASK = bold_task(config)
FUNC_INPUT = func_input_mode(config)
BOLD_PAIRS = [
    p
    for p in with_modality(config, PAIRS, "bold", task=BOLD_TASK)
    if FUNC_INPUT == "fmriprep" or p in T1W_PAIRS
]
NBS_OUTPUT = nbs_output(config)
QCFC_OUTPUT = qcfc_output(config)


wildcard_constraints:
    subject="[a-zA-Z0-9]+",
    session="[a-zA-Z0-9]+",


include: "workflows/rules/inventory.smk"
include: "workflows/rules/anat.smk"
include: "workflows/rules/dwi.smk"
include: "workflows/rules/tract.smk"
include: "workflows/rules/func.smk"
include: "workflows/rules/group.smk"
include: "workflows/rules/report.smk"


rule all:
    default_target: True
    input:
        expand(
            OUT_DIR / participant_pattern("inventory"),
            zip,
            subject=SUBJECTS,
            session=SESSIONS,
        ),
        OUT_DIR / "group/inventory.tsv",
        OUT_DIR / "group/desc-tests_dwistats.tsv",
        OUT_DIR / "group/desc-tests_tractstats.tsv",
        OUT_DIR / NBS_OUTPUT,
        OUT_DIR / QCFC_OUTPUT,
        OUT_DIR / "group/desc-tests_clinicalstats.tsv",
        expand(
            OUT_DIR / "sub-{subject}_ses-{session}.html",
            zip,
            subject=SUBJECTS,
            session=SESSIONS,
        ),
        OUT_DIR / "group.html",
        [OUT_DIR / participant_output("anat", s, t) for s, t in T1W_PAIRS],
        [
            OUT_DIR / f"sub-{s}/ses-{t}/anat/sub-{s}_ses-{t}_desc-changes_lesions.tsv"
            for s, t, _ in FOLLOWUPS
        ],
        [OUT_DIR / participant_output("dwi", s, t) for s, t in DWI_PAIRS],
        [OUT_DIR / participant_output("tract", s, t) for s, t in TRACT_PAIRS],
        [
            OUT_DIR / participant_output("func", s, t, task=BOLD_TASK)
            for s, t in BOLD_PAIRS
        ],
