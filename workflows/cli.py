"""The ``msmri`` command line (BIDS-Apps convention).

::

    msmri BIDS_DIR OUTPUT_DIR {participant,group} [options]   run the pipeline
    msmri synth OUTPUT_DIR [--preset tiny|trial] [options]    write the demo dataset

Every Snakemake rule calls this entry point, so a job run by hand and a job run
by Snakemake (locally or on SLURM) do exactly the same thing.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

__all__ = ["GROUP_STAGES", "PARTICIPANT_STAGES", "main"]

log = logging.getLogger("msmri")

#: Stages run at the participant level, in order.
PARTICIPANT_STAGES = (
    "inventory", "anat_reference", "anat", "dwi", "tract", "func", "lesion_changes", "report",
)
#: Stages run at the group level, in order.
GROUP_STAGES = (
    "inventory", "dwi_stats", "tract_stats", "nbs", "qcfc", "clinical_stats", "report",
)


def _bids_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="msmri",
        description=(
            "Longitudinal MS trial imaging pipeline: diffusion tensor metrics in NAWM and "
            "tracts, resting-state connectomes and group statistics, over a BIDS dataset."
        ),
        epilog=(
            "Synthetic demo dataset: `msmri synth OUTPUT_DIR [--preset tiny|trial]` "
            "(see `msmri synth --help`)."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("bids_dir", type=Path, help="root of the BIDS dataset (BIDS_DIR)")
    p.add_argument("output_dir", type=Path, help="derivatives output folder (OUTPUT_DIR)")
    p.add_argument(
        "analysis_level", choices=["participant", "group"], help="processing level to run"
    )
    p.add_argument(
        "--participant-label", "--participant_label", nargs="+", metavar="LABEL",
        help="subjects to process (with or without `sub-`); default all",
    )
    p.add_argument(
        "--session-label", "--session_label", nargs="+", metavar="LABEL",
        help="sessions to process (with or without `ses-`); default all",
    )
    p.add_argument(
        "--config", type=Path, action="append", default=[], metavar="FILE",
        help="YAML file merged over configs/default.yaml (repeatable, later wins)",
    )
    p.add_argument(
        "--work-dir", "-w", type=Path, default=None, metavar="DIR",
        help="scratch folder for intermediate (Nipype) files; default OUTPUT_DIR/../work",
    )
    p.add_argument("--nprocs", type=int, default=1, metavar="N", help="CPU cores to use")
    p.add_argument(
        "--stages", nargs="+", default=None, metavar="STAGE",
        help=f"stages to run (participant: {', '.join(PARTICIPANT_STAGES)}; "
        f"group: {', '.join(GROUP_STAGES)}); default all",
    )
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    return p


def _synth_parser() -> argparse.ArgumentParser:
    from pipeline.phantom.trial import PRESETS

    p = argparse.ArgumentParser(
        prog="msmri synth",
        description=(
            "Write the synthetic longitudinal MS trial (BIDS raw data, lesion-mask "
            "derivatives and ground truth) built from the MNI152 template shipped with nilearn."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("output_dir", type=Path, help="folder that receives bids/ and truth/")
    p.add_argument("--preset", choices=sorted(PRESETS), default="trial", help="dataset size")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: the preset's)")
    p.add_argument("--subjects", type=int, default=None, help="number of subjects")
    p.add_argument("--snr", type=float, default=None, help="b = 0 white-matter SNR of the DWI")
    p.add_argument(
        "--rd-change", type=float, nargs="+", default=None, metavar="FRACTION",
        help="relative change of left-NAWM radial diffusivity per session, e.g. 0 -0.03 -0.06",
    )
    p.add_argument(
        "--bold-effect", type=float, nargs="+", default=None, metavar="STRENGTH",
        help="planted connectivity increase per session, as a fraction of the largest the "
        "model allows (correlation rise about 0.3 at 1.0), e.g. 0 0.5 1",
    )
    p.add_argument("--no-new-lesion", action="store_true", help="no new lesion at the last session")
    p.add_argument(
        "--nprocs", type=int, default=os.cpu_count() or 1, metavar="N",
        help="subject-sessions generated in parallel (the files do not depend on it)",
    )
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    return p


def _setup_logging(verbose: int) -> None:
    level = logging.INFO if verbose == 0 else logging.DEBUG
    logging.basicConfig(
        level=level, format="%(asctime)s %(name)s %(levelname)s: %(message)s", stream=sys.stderr
    )


def run_synth(args: argparse.Namespace) -> int:
    from pipeline.phantom.trial import PRESETS
    from workflows.synth import write_trial

    spec = PRESETS[args.preset]
    changes: dict = {}
    if args.seed is not None:
        changes["seed"] = args.seed
    if args.subjects is not None:
        changes["n_subjects"] = args.subjects
    if args.snr is not None:
        changes["snr_b0"] = args.snr
    if args.rd_change is not None:
        changes["rd_change"] = tuple(args.rd_change)
    if args.bold_effect is not None:
        changes["bold_effect"] = tuple(args.bold_effect)
    if args.no_new_lesion:
        changes["new_lesion_last_session"] = False
    spec = spec.replace(**changes)
    summary = write_trial(args.output_dir, spec, n_procs=args.nprocs)
    log.info(
        "synthetic trial (%s preset, seed %d): %d subjects x %d sessions in %.1f s -> %s",
        args.preset, spec.seed, spec.n_subjects, len(spec.sessions),
        summary["seconds_total"], args.output_dir,
    )
    return 0


def run_bids_app(args: argparse.Namespace) -> int:
    from pipeline.config import load_config
    from workflows.bids import collect_inputs, index_dataset, list_subject_sessions
    from workflows.derivatives import DerivativesWriter
    from workflows.inventory import check_session, write_inventory

    config = load_config(args.config)
    bids_dir = args.bids_dir.resolve()
    out = args.output_dir.resolve()
    if out == bids_dir:
        raise SystemExit("msmri: OUTPUT_DIR must differ from BIDS_DIR")
    known = PARTICIPANT_STAGES if args.analysis_level == "participant" else GROUP_STAGES
    stages = tuple(args.stages) if args.stages else known
    bad = [s for s in stages if s not in known]
    if bad:
        raise SystemExit(
            f"msmri: unknown {args.analysis_level} stage(s) {bad}; known: {list(known)}"
        )
    writer = DerivativesWriter(out, config=config.to_dict(), source_datasets=[str(bids_dir)])

    if args.analysis_level == "group":
        for name in GROUP_STAGES:  # registry order, not the command line's
            if name in stages:
                GROUP_RUNNERS[name](writer, config, bids_dir, out)
        return 0

    derivs = []
    if config.bids.lesion_derivatives:
        lesion_dir = Path(config.bids.lesion_derivatives)
        lesion_dir = lesion_dir if lesion_dir.is_absolute() else bids_dir / lesion_dir
        if lesion_dir.exists():
            derivs.append(lesion_dir)
        else:
            log.warning("lesion derivatives %s not found: no lesion masks will be used", lesion_dir)
    layout = index_dataset(bids_dir, derivatives=derivs, validate=config.bids.pybids_validate)
    pairs = list_subject_sessions(
        layout, participant_label=args.participant_label, session_label=args.session_label
    )
    work_root = (args.work_dir or out.parent / "work").resolve()
    failures = []
    if "anat_reference" in stages and config.anat.anatomical_reference != "sessionwise":
        failures += _subject_references(layout, pairs, config, writer)
    failed_subjects = {sub for sub, _, _ in failures}
    for sub, ses in pairs:
        if sub in failed_subjects:
            continue
        t0 = time.perf_counter()
        inputs = collect_inputs(
            layout, sub, ses, bold_task=config.bids.bold_task, lesion_label=config.bids.lesion_label
        )
        try:
            if "inventory" in stages:
                write_inventory(writer, inputs, config, bids_dir)
            else:  # validate before any processing, even when the inventory is not rewritten
                # only the raw series this job's stages read (tract reads derivatives)
                series = [name for name, stage in (("dwi", "dwi"), ("bold", "func")) if stage in stages]
                check_session(inputs, config, bids_dir, series=series)
            for name, runner in SESSION_RUNNERS.items():  # in stage order
                if name in stages:
                    runner(inputs, config, out, work_root / f"sub-{sub}_ses-{ses}", args.nprocs,
                           bids_dir=bids_dir)
        except Exception as exc:  # one subject's failure must not stop the others
            log.error("sub-%s ses-%s failed: %s", sub, ses, exc)
            failures.append((sub, ses, exc))
            continue
        log.info("sub-%s ses-%s done in %.1f s", sub, ses, time.perf_counter() - t0)
    if "lesion_changes" in stages:
        from workflows.bids import read_sessions_table
        from workflows.longitudinal import reference_session, write_lesion_changes

        failed = {sub for sub, _, _ in failures}
        all_pairs = list_subject_sessions(layout, participant_label=args.participant_label)
        for sub, ses in pairs:
            if sub in failed:
                continue
            available = [t for s, t in all_pairs if s == sub]
            ref = reference_session(config, read_sessions_table(layout, sub), available)
            if ses == ref:
                log.info("sub-%s ses-%s is the reference session: no lesion changes", sub, ses)
                continue
            if not (out / f"sub-{sub}/ses-{ses}/anat").exists() and collect_inputs(
                layout, sub, ses, bold_task=config.bids.bold_task,
                lesion_label=config.bids.lesion_label,
            ).t1w is None:
                log.warning("sub-%s ses-%s: lesion changes skipped: no T1w in this session", sub, ses)
                continue
            ref_done = out / f"sub-{sub}/ses-{ref}/anat/sub-{sub}_ses-{ref}_desc-preproc_T1w.nii.gz"
            if (sub, ref) not in pairs and not ref_done.exists():
                log.warning("sub-%s ses-%s: lesion changes skipped: the reference session %s was "
                            "not selected and has no structural outputs yet", sub, ses, ref)
                continue
            try:
                write_lesion_changes(writer, subject=sub, session=ses, reference=ref, config=config)
            except Exception as exc:
                log.error("sub-%s ses-%s lesion changes failed: %s", sub, ses, exc)
                failures.append((sub, ses, exc))
    if "report" in stages:  # last: it shows what the other stages wrote
        from workflows.report import write_session_report

        failed = {(sub, ses) for sub, ses, _ in failures}
        for sub, ses in pairs:
            if (sub, ses) in failed or (sub, "*") in failed:
                continue
            try:
                write_session_report(out, sub, ses, task=config.bids.bold_task)
            except Exception as exc:
                log.error("sub-%s ses-%s report failed: %s", sub, ses, exc)
                failures.append((sub, ses, exc))
    if failures:
        for sub, ses, exc in failures:
            print(f"msmri: sub-{sub} ses-{ses}: {exc}", file=sys.stderr)
        return 1
    return 0


def _subject_references(layout, pairs, config, writer) -> list:
    """Write the within-subject reference of every subject in ``pairs`` (all its sessions)."""
    from workflows.bids import collect_inputs, list_subject_sessions, read_sessions_table
    from workflows.longitudinal import order_sessions, write_subject_reference

    failures = []
    for sub in dict.fromkeys(s for s, _ in pairs):
        available = [t for _, t in list_subject_sessions(layout, participant_label=[sub])]
        ordered = order_sessions(config, read_sessions_table(layout, sub), available)
        try:
            t1ws = {}
            for ses in ordered:
                t1w = collect_inputs(layout, sub, ses, bold_task=config.bids.bold_task,
                                     lesion_label=config.bids.lesion_label).t1w
                if t1w is None:
                    log.warning(
                        "sub-%s ses-%s has no T1w: left out of the subject reference", sub, ses
                    )
                    continue
                t1ws[ses] = t1w
            write_subject_reference(writer, subject=sub, t1ws=t1ws, config=config)
        except Exception as exc:  # this subject's sessions are skipped, the others go on
            log.error("sub-%s subject reference failed: %s", sub, exc)
            failures.append((sub, "*", exc))
    return failures


def _no_t1w(inputs, stage: str) -> None:
    from workflows.inventory import DWI_ONLY_REASON

    log.warning("sub-%s ses-%s: %s skipped: %s", inputs.subject, inputs.session, stage,
                DWI_ONLY_REASON)


def run_anat(inputs, config, out: Path, work_dir: Path, nprocs: int) -> None:
    """Build and run the structural Nipype workflow of one subject-session."""
    from pipeline.errors import InputError
    from workflows.anat import init_anat_wf
    from workflows.derivatives import read_plausibility
    from workflows.engine import run_workflow
    from workflows.longitudinal import reference_paths

    if inputs.t1w is None:
        _no_t1w(inputs, "structural stage")
        return
    reference = {}
    mode = config.anat.anatomical_reference
    if mode != "sessionwise":
        xfm = reference_paths(out, inputs.subject, inputs.session)
        image = reference_paths(out, inputs.subject)
        for path in (image, xfm):
            if not path.exists():
                raise InputError(path, f"missing: anat.anatomical_reference is {mode}; run the "
                                 "anat_reference stage for this subject first")
        reference = {"reference_xfm": str(xfm), "reference_image": str(image)}

    lesion_mask, lesion_space = inputs.lesion_mask, inputs.lesion_space
    if lesion_mask is not None and lesion_space == "FLAIR" and inputs.flair is None:
        log.warning("sub-%s ses-%s: lesion mask %s is in FLAIR space but there is no FLAIR; "
                    "it is not used", inputs.subject, inputs.session, lesion_mask)
        lesion_mask = lesion_space = None
    if lesion_mask is None and inputs.flair is None:
        log.warning("sub-%s ses-%s: no lesion mask and no FLAIR: automatic lesion segmentation is "
                    "unavailable; the lesion mask will be empty and NAWM = white matter",
                    inputs.subject, inputs.session)
    wf = init_anat_wf(
        config=config.to_dict(),
        t1w=str(inputs.t1w),
        flair=str(inputs.flair) if inputs.flair else None,
        lesion_mask=str(lesion_mask) if lesion_mask else None,
        lesion_space=lesion_space,
        subject=inputs.subject,
        session=inputs.session,
        output_dir=str(out),
        **reference,
    )
    run_workflow(wf, work_dir=work_dir, nprocs=nprocs)
    flag = read_plausibility(out, inputs.subject, inputs.session)
    if flag is not None and flag["flagged"]:
        log.warning("sub-%s ses-%s: structural results FLAGGED as implausible (%s): %s; the "
                    "group statistics leave this session out unless group.include_flagged is "
                    "true", inputs.subject, inputs.session, ", ".join(flag["failed"]),
                    flag["reason"])


def run_dwi(inputs, config, out: Path, work_dir: Path, nprocs: int) -> None:
    """Build and run the diffusion Nipype workflow of one subject-session."""
    from workflows.dwi import init_dwi_wf, structural_inputs
    from workflows.engine import run_workflow

    if inputs.dwi is None:
        log.warning("sub-%s ses-%s: no DWI series; diffusion stage skipped",
                    inputs.subject, inputs.session)
        return
    wf = init_dwi_wf(
        config=config.to_dict(),
        dwi=str(inputs.dwi),
        bval=str(inputs.dwi_bval),
        bvec=str(inputs.dwi_bvec),
        anat=None if inputs.t1w is None else structural_inputs(out, inputs.subject, inputs.session),
        subject=inputs.subject,
        session=inputs.session,
        output_dir=str(out),
        nprocs=nprocs,
    )
    run_workflow(wf, work_dir=work_dir, nprocs=nprocs)
    from workflows.derivatives import read_dwi_exclusions

    ex = read_dwi_exclusions(out, inputs.subject, inputs.session)
    if ex is not None and ex["flagged"]:
        log.warning("sub-%s ses-%s: DWI FLAGGED: %s; the group statistics leave this session "
                    "out unless group.include_flagged is true (table: %s)", inputs.subject,
                    inputs.session, ex["reason"], ex["path"].with_suffix(".tsv"))
    elif ex is not None and ex["warning"]:
        log.warning("sub-%s ses-%s: DWI: %s (table: %s)", inputs.subject, inputs.session,
                    ex["warning"], ex["path"].with_suffix(".tsv"))


def run_tract(inputs, config, out: Path, work_dir: Path, nprocs: int) -> None:
    """Build and run the tractography / tractometry workflow of one subject-session."""
    from workflows.engine import run_workflow
    from workflows.tract import diffusion_inputs, init_tract_wf

    if inputs.dwi is None:
        log.warning("sub-%s ses-%s: no DWI series; tract stage skipped",
                    inputs.subject, inputs.session)
        return
    if inputs.t1w is None:
        _no_t1w(inputs, "tract stage (bundle waypoints come through the T1w -> MNI transform)")
        return
    cfg = config.to_dict()
    wf = init_tract_wf(
        config=cfg,
        inputs=diffusion_inputs(out, inputs.subject, inputs.session, model=cfg["tract"]["model"]),
        subject=inputs.subject,
        session=inputs.session,
        output_dir=str(out),
    )
    run_workflow(wf, work_dir=work_dir, nprocs=nprocs)


def run_func(inputs, config, out: Path, work_dir: Path, nprocs: int, *, bids_dir: Path) -> None:
    """Build and run the resting-state fMRI Nipype workflow of one subject-session.

    A run excluded for too little data after censoring is not a failure: its
    summary and the reason are written and the job succeeds.  With
    ``func.input: fmriprep`` the run comes from fMRIPrep derivatives and no
    structural output is needed.
    """
    from pipeline.errors import InputError
    from workflows.engine import run_workflow
    from workflows.func import (
        fmriprep_inputs,
        func_structural_inputs,
        init_func_fmriprep_wf,
        init_func_wf,
    )

    cfg = config.to_dict()
    fcfg = cfg["func"]
    if fcfg["atlas_labels"] is not None:  # a label image: paths relative to the BIDS dir
        for key in ("atlas", "atlas_labels"):
            path = Path(fcfg[key])
            fcfg[key] = str(path if path.is_absolute() else bids_dir / path)
    if fcfg["input"] == "raw" and inputs.t1w is None:
        _no_t1w(inputs, "resting-state stage")
        return
    if fcfg["input"] == "fmriprep":
        root = Path(fcfg["fmriprep_dir"])
        fcfg["fmriprep_dir"] = str(root if root.is_absolute() else bids_dir / root)
        try:
            files = fmriprep_inputs(
                fcfg["fmriprep_dir"], inputs.subject, inputs.session, task=config.bids.bold_task,
                space=fcfg["fmriprep_space"], raw_bold=inputs.bold, raw_json=inputs.bold_json,
            )
        except InputError:
            if inputs.bold is not None:
                raise
            log.warning("sub-%s ses-%s: no resting-state BOLD (raw or fMRIPrep); fMRI stage "
                        "skipped", inputs.subject, inputs.session)
            return
        wf = init_func_fmriprep_wf(
            config=cfg, files=files, subject=inputs.subject, session=inputs.session,
            output_dir=str(out), task=config.bids.bold_task,
        )
    elif inputs.bold is None:
        log.warning("sub-%s ses-%s: no resting-state BOLD; fMRI stage skipped",
                    inputs.subject, inputs.session)
        return
    else:
        wf = init_func_wf(
            config=cfg,
            bold=str(inputs.bold),
            bold_json=str(inputs.bold_json) if inputs.bold_json else None,
            anat=func_structural_inputs(out, inputs.subject, inputs.session),
            subject=inputs.subject,
            session=inputs.session,
            output_dir=str(out),
            task=config.bids.bold_task,
        )
    run_workflow(wf, work_dir=work_dir, nprocs=nprocs)
    summary = (
        out
        / f"sub-{inputs.subject}/ses-{inputs.session}/func"
        / (
            f"sub-{inputs.subject}_ses-{inputs.session}_task-{config.bids.bold_task}_desc-summary_bold.json"
        )
    )
    if summary.exists():
        import json

        side = json.loads(summary.read_text())
        if side.get("Excluded"):
            log.warning("sub-%s ses-%s: resting-state run EXCLUDED: %s", inputs.subject,
                        inputs.session, side.get("ExclusionReason"))
        if side.get("Flagged"):
            log.warning("sub-%s ses-%s: resting-state run FLAGGED: %s; the NBS leaves this "
                        "session out unless group.include_flagged is true", inputs.subject,
                        inputs.session, side.get("Reason"))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``msmri`` console script."""
    from pipeline.errors import MsmriError

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "synth":
        args = _synth_parser().parse_args(argv[1:])
        runner = run_synth
    else:
        args = _bids_parser().parse_args(argv)
        runner = run_bids_app
    _setup_logging(args.verbose)
    if os.environ.get("SLURM_JOB_ID"):  # say which cluster job wrote this log
        log.info("running in SLURM job %s on %s", os.environ["SLURM_JOB_ID"],
                 os.environ.get("SLURMD_NODENAME", "unknown node"))
    try:
        return runner(args)
    except MsmriError as exc:
        print(f"msmri: error: {exc}", file=sys.stderr)
        return 2


# --------------------------------------------------------------------------- stage registry


def _group_inventory(writer, config, bids_dir: Path, out: Path) -> None:
    from workflows.inventory import summarise_inventories

    tsvs = sorted(out.glob("sub-*/ses-*/sub-*_inventory.tsv"))
    path = summarise_inventories(writer, tsvs)
    log.info("group inventory of %d subject-sessions -> %s", len(tsvs), path)


def _dwi_stats(writer, config, bids_dir: Path, out: Path) -> None:
    from workflows.group import write_dwi_stats

    write_dwi_stats(writer, config)


def _tract_stats(writer, config, bids_dir: Path, out: Path) -> None:
    from workflows.group import write_tract_stats

    write_tract_stats(writer, config)


def _nbs(writer, config, bids_dir: Path, out: Path) -> None:
    from workflows.nbs import write_nbs

    write_nbs(writer, config)


def _qcfc(writer, config, bids_dir: Path, out: Path) -> None:
    from workflows.qcfc import write_qcfc

    write_qcfc(writer, config)


def _clinical_stats(writer, config, bids_dir: Path, out: Path) -> None:
    from workflows.group import write_clinical_stats

    write_clinical_stats(writer, config, bids_dir)


def _group_report(writer, config, bids_dir: Path, out: Path) -> None:
    from workflows.report import write_group_report

    write_group_report(out)


#: Group stage -> ``f(writer, config, bids_dir, out)``, run in :data:`GROUP_STAGES` order
#: (imports are lazy: one stage does not load the others' dependencies).
GROUP_RUNNERS = {
    "inventory": _group_inventory,
    "dwi_stats": _dwi_stats,
    "tract_stats": _tract_stats,
    "nbs": _nbs,
    "qcfc": _qcfc,
    "clinical_stats": _clinical_stats,
    "report": _group_report,
}


def _without_bids_dir(runner):
    def run(inputs, config, out, work_dir, nprocs, *, bids_dir):
        return runner(inputs, config, out, work_dir, nprocs)

    return run


#: Per-session participant stages (in order) -> ``f(inputs, config, out, work_dir, nprocs,
#: bids_dir=...)``; the inventory, the subject reference, lesion changes and the session
#: report span sessions and are run around them.
SESSION_RUNNERS = {
    "anat": _without_bids_dir(run_anat),
    "dwi": _without_bids_dir(run_dwi),
    "tract": _without_bids_dir(run_tract),
    "func": run_func,
}
assert list(GROUP_RUNNERS) == list(GROUP_STAGES)
assert [s for s in PARTICIPANT_STAGES if s in SESSION_RUNNERS] == list(SESSION_RUNNERS)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
