"""Input validation and inventory: one job per subject-session, then a group summary."""


rule inventory:
    input:
        BIDS_DIR / "dataset_description.json",
    output:
        OUT_DIR / participant_pattern("inventory"),
    log:
        OUT_DIR / "logs/inventory/sub-{subject}_ses-{session}.log",
    benchmark:
        OUT_DIR / "logs/benchmarks/inventory/sub-{subject}_ses-{session}.tsv"
    conda:
        "../../configs/envs/msmri.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        cmd=msmri_cmd(config, "participant", "inventory"),
    shell:
        "{params.cmd} --participant-label {wildcards.subject} "
        "--session-label {wildcards.session} --nprocs {threads} > {log} 2>&1"


rule group_inventory:
    input:
        expand(
            OUT_DIR / participant_pattern("inventory"),
            zip,
            subject=SUBJECTS,
            session=SESSIONS,
        ),
    output:
        OUT_DIR / "group/inventory.tsv",
    log:
        OUT_DIR / "logs/group/inventory.log",
    benchmark:
        OUT_DIR / "logs/benchmarks/group_inventory/group.tsv"
    conda:
        "../../configs/envs/msmri.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        cmd=msmri_cmd(config, "group", "inventory"),
    shell:
        "{params.cmd} > {log} 2>&1"
