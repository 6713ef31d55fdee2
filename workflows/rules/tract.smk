"""Tract stage: tractography and tractometry per subject-session, after its diffusion job."""


rule tract:
    input:
        OUT_DIR / participant_pattern("dwi"),
    output:
        OUT_DIR / participant_pattern("tract"),
    log:
        OUT_DIR / "logs/tract/sub-{subject}_ses-{session}.log",
    benchmark:
        OUT_DIR / "logs/benchmarks/tract/sub-{subject}_ses-{session}.tsv"
    conda:
        "../../configs/envs/msmri.yaml"
    threads: 1
    resources:
        mem_mb=3000,
        runtime=30,
    params:
        cmd=msmri_cmd(config, "participant", "tract"),
    shell:
        "{params.cmd} --participant-label {wildcards.subject} "
        "--session-label {wildcards.session} --nprocs {threads} > {log} 2>&1"
