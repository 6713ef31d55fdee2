"""Diffusion stage: one job per subject-session with a DWI series, after its structural job
(after its inventory in a session without a T1w: the DWI alone)."""


rule dwi:
    input:
        lambda w: dwi_job_inputs(
            OUT_DIR, w.subject, w.session, (w.subject, w.session) in T1W_PAIRS
        ),
    output:
        OUT_DIR / participant_pattern("dwi"),
    log:
        OUT_DIR / "logs/dwi/sub-{subject}_ses-{session}.log",
    benchmark:
        OUT_DIR / "logs/benchmarks/dwi/sub-{subject}_ses-{session}.tsv"
    conda:
        "../../configs/envs/msmri.yaml"
    # One thread: see the anat rule (measured together; identical outputs).
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        cmd=msmri_cmd(config, "participant", "dwi"),
    shell:
        "{params.cmd} --participant-label {wildcards.subject} "
        "--session-label {wildcards.session} --nprocs {threads} > {log} 2>&1"
