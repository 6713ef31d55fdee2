"""Diffusion stage: one job per subject-session with a DWI series, after its structural job."""


rule dwi:
    input:
        OUT_DIR
        / "sub-{subject}/ses-{session}/anat/sub-{subject}_ses-{session}_volumes.tsv",
    output:
        OUT_DIR
        / "sub-{subject}/ses-{session}/dwi/sub-{subject}_ses-{session}_space-dwi_model-tensor_roistats.tsv",
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
