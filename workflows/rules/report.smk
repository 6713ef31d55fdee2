"""QC reports: one HTML page per subject-session, then the group page (NiPreps style).

The pages only read what the other stages wrote (figures, tables, provenance
sidecars), so each waits for its session's participant outputs, and the group
page for the group outputs and every session page it links to.
"""


rule report:
    input:
        lambda w: session_report_inputs(
            OUT_DIR,
            w.subject,
            w.session,
            dwi=(w.subject, w.session) in DWI_PAIRS,
            anat=(w.subject, w.session) in T1W_PAIRS,
            bold=(w.subject, w.session) in BOLD_PAIRS,
            followup=w.subject in REFERENCE and REFERENCE[w.subject] != w.session,
            task=BOLD_TASK,
        ),
    output:
        OUT_DIR / "sub-{subject}_ses-{session}.html",
    log:
        OUT_DIR / "logs/report/sub-{subject}_ses-{session}.log",
    conda:
        "../../configs/envs/msmri.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        cmd=msmri_cmd(config, "participant", "report"),
    shell:
        "{params.cmd} --participant-label {wildcards.subject} "
        "--session-label {wildcards.session} --nprocs {threads} > {log} 2>&1"


rule group_report:
    input:
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
    output:
        OUT_DIR / "group.html",
    log:
        OUT_DIR / "logs/group/report.log",
    conda:
        "../../configs/envs/msmri.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        cmd=msmri_cmd(config, "group", "report"),
    shell:
        "{params.cmd} > {log} 2>&1"
