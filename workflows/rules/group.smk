"""Group stage: longitudinal tests over every participant output (one job)."""


rule dwi_stats:
    input:
        [OUT_DIR / participant_output("dwi", s, t) for s, t in DWI_PAIRS],
    output:
        OUT_DIR / "group/desc-tests_dwistats.tsv",
    log:
        OUT_DIR / "logs/group/dwi_stats.log",
    benchmark:
        OUT_DIR / "logs/benchmarks/dwi_stats/group.tsv"
    conda:
        "../../configs/envs/msmri.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=20,
    params:
        cmd=msmri_cmd(config, "group", "dwi_stats"),
    shell:
        "{params.cmd} > {log} 2>&1"


rule tract_stats:
    input:
        [OUT_DIR / participant_output("tract", s, t) for s, t in TRACT_PAIRS],
    output:
        OUT_DIR / "group/desc-tests_tractstats.tsv",
    log:
        OUT_DIR / "logs/group/tract_stats.log",
    benchmark:
        OUT_DIR / "logs/benchmarks/tract_stats/group.tsv"
    conda:
        "../../configs/envs/msmri.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=20,
    params:
        cmd=msmri_cmd(config, "group", "tract_stats"),
    shell:
        "{params.cmd} > {log} 2>&1"


rule nbs:
    input:
        [
            OUT_DIR / participant_output("func", s, t, task=BOLD_TASK)
            for s, t in BOLD_PAIRS
        ],
    output:
        OUT_DIR / NBS_OUTPUT,
    log:
        OUT_DIR / "logs/group/nbs.log",
    benchmark:
        OUT_DIR / "logs/benchmarks/nbs/group.tsv"
    conda:
        "../../configs/envs/msmri.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        cmd=msmri_cmd(config, "group", "nbs"),
    shell:
        "{params.cmd} > {log} 2>&1"


rule qcfc:
    input:
        [
            OUT_DIR / participant_output("func", s, t, task=BOLD_TASK)
            for s, t in BOLD_PAIRS
        ],
    output:
        OUT_DIR / QCFC_OUTPUT,
    log:
        OUT_DIR / "logs/group/qcfc.log",
    benchmark:
        OUT_DIR / "logs/benchmarks/qcfc/group.tsv"
    conda:
        "../../configs/envs/msmri.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=20,
    params:
        cmd=msmri_cmd(config, "group", "qcfc"),
    shell:
        "{params.cmd} > {log} 2>&1"


rule clinical_stats:
    input:
        [OUT_DIR / participant_output("tract", s, t) for s, t in TRACT_PAIRS],
    output:
        OUT_DIR / "group/desc-tests_clinicalstats.tsv",
    log:
        OUT_DIR / "logs/group/clinical_stats.log",
    benchmark:
        OUT_DIR / "logs/benchmarks/clinical_stats/group.tsv"
    conda:
        "../../configs/envs/msmri.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=20,
    params:
        cmd=msmri_cmd(config, "group", "clinical_stats"),
    shell:
        "{params.cmd} > {log} 2>&1"
