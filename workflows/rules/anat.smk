"""Structural stage: one job per subject-session (Nipype inside, MultiProc with the job's threads).

With anat.anatomical_reference first/unbiased, a per-subject job first aligns all
sessions' T1w to one within-subject reference, which every session's job uses.
"""


rule anat_reference:
    output:
        OUT_DIR / "sub-{subject}/anat/sub-{subject}_desc-subjectref_T1w.nii.gz",
    log:
        OUT_DIR / "logs/anat_reference/sub-{subject}.log",
    benchmark:
        OUT_DIR / "logs/benchmarks/anat_reference/sub-{subject}.tsv"
    conda:
        "../../configs/envs/msmri.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=20,
    params:
        cmd=msmri_cmd(config, "participant", "anat_reference"),
    shell:
        "{params.cmd} --participant-label {wildcards.subject} > {log} 2>&1"


rule anat:
    input:
        lambda w: anat_job_inputs(OUT_DIR, ANAT_REFERENCE, w.subject, w.session),
    output:
        OUT_DIR / participant_pattern("anat"),
    log:
        OUT_DIR / "logs/anat/sub-{subject}_ses-{session}.log",
    benchmark:
        OUT_DIR / "logs/benchmarks/anat/sub-{subject}_ses-{session}.tsv"
    conda:
        "../../configs/envs/msmri.yaml"
    # One thread: on 2 cores, two structural + diffusion jobs at 1 thread each finished 1.9 x
    # sooner than one after another at 2 threads (identical outputs); most of the job is serial.
    threads: 1
    resources:
        mem_mb=3000,
        runtime=30,
    params:
        cmd=msmri_cmd(config, "participant", "anat"),
    shell:
        "{params.cmd} --participant-label {wildcards.subject} "
        "--session-label {wildcards.session} --nprocs {threads} > {log} 2>&1"


rule lesion_changes:
    input:
        reference=lambda w: OUT_DIR
        / participant_output("anat", w.subject, REFERENCE[w.subject]),
        followup=OUT_DIR / participant_pattern("anat"),
    output:
        OUT_DIR
        / "sub-{subject}/ses-{session}/anat/sub-{subject}_ses-{session}_desc-changes_lesions.tsv",
    log:
        OUT_DIR / "logs/lesion_changes/sub-{subject}_ses-{session}.log",
    benchmark:
        OUT_DIR / "logs/benchmarks/lesion_changes/sub-{subject}_ses-{session}.tsv"
    conda:
        "../../configs/envs/msmri.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        cmd=msmri_cmd(config, "participant", "lesion_changes"),
    shell:
        "{params.cmd} --participant-label {wildcards.subject} "
        "--session-label {wildcards.session} --nprocs {threads} > {log} 2>&1"
