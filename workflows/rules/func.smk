"""Resting-state fMRI stage: one job per subject-session with a BOLD run.

With func.input raw the job runs after the session's structural job (registration
to its T1w, tissue masks); with func.input fmriprep it needs only the inventory.

The output is the run summary, written for every run, also one excluded for too
little data after censoring (the reason is in the summary and its sidecar).
"""


rule func:
    input:
        lambda w: func_job_inputs(OUT_DIR, FUNC_INPUT, w.subject, w.session),
    output:
        OUT_DIR / participant_pattern("func", task=BOLD_TASK),
    log:
        OUT_DIR / "logs/func/sub-{subject}_ses-{session}.log",
    benchmark:
        OUT_DIR / "logs/benchmarks/func/sub-{subject}_ses-{session}.tsv"
    conda:
        "../../configs/envs/msmri.yaml"
    # One thread: two fMRI jobs at 1 thread each finished 2.1 x sooner than one after
    # another at 2 threads on 2 cores (identical matrices); most of the job is serial.
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        cmd=msmri_cmd(config, "participant", "func"),
    shell:
        "{params.cmd} --participant-label {wildcards.subject} "
        "--session-label {wildcards.session} --nprocs {threads} > {log} 2>&1"
