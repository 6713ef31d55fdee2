"""Write the synthetic longitudinal trial (``msmri synth``) as a BIDS dataset.

Layout of ``OUTPUT_DIR``::

    bids/                              raw BIDS dataset (T1w, FLAIR, dwi, rest BOLD)
    bids/derivatives/lesions/          lesion masks (a BIDS-Derivatives dataset)
    truth/                             ground truth, outside the raw tree

The science (anatomy, tensors, BOLD model) lives in :mod:`pipeline.phantom`;
this module only names and writes files.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.gradients import world_to_fsl
from pipeline.phantom.trial import PhantomSpec, SessionPhantom, make_subject, simulate_session
from workflows.derivatives import DerivativesWriter, atomic_write_text, build_path, dumps_json

__all__ = ["write_trial"]

log = logging.getLogger("msmri.synth")

#: Acquisition metadata written to the raw sidecars (typical clinical 3T values).
SIDECARS = {
    "T1w": {"MagneticFieldStrength": 3, "RepetitionTime": 2.3, "EchoTime": 0.00298,
            "InversionTime": 0.9, "FlipAngle": 9, "MRAcquisitionType": "3D"},
    "FLAIR": {"MagneticFieldStrength": 3, "RepetitionTime": 5.0, "EchoTime": 0.393,
              "InversionTime": 1.8, "MRAcquisitionType": "3D"},
    "dwi": {"MagneticFieldStrength": 3, "RepetitionTime": 8.8, "EchoTime": 0.089,
            "PhaseEncodingDirection": "j-", "TotalReadoutTime": 0.05},
    "bold": {"MagneticFieldStrength": 3, "EchoTime": 0.03, "TaskName": "rest",
             "PhaseEncodingDirection": "j-", "TotalReadoutTime": 0.03},
}

SESSION_COLUMNS = {
    "acq_time": {"Description": "acquisition date and time of the session"},
    "time_months": {"Description": "time since baseline", "Units": "month"},
    "edss": {"Description": "Expanded Disability Status Scale score", "Units": "arbitrary"},
}

MANUFACTURER = {"Manufacturer": "msmri synthetic phantom", "ManufacturersModelName": "msmri-synth"}


def _write_json(path: Path, data: dict) -> None:
    atomic_write_text(path, dumps_json(data))


def _write_raw_session(bids: Path, ph: SessionPhantom, spec: PhantomSpec) -> None:
    sub, ses = ph.subject.label, ph.session
    ent = {"sub": sub, "ses": ses}
    writer = _RawWriter(bids)
    for suffix in ("T1w", "FLAIR"):
        writer.image(
            ph.images[suffix], datatype="anat", suffix=suffix, meta=SIDECARS[suffix], **ent
        )
    dwi = ph.images["dwi"]
    writer.image(dwi, datatype="dwi", suffix="dwi", meta=SIDECARS["dwi"], **ent)
    fsl = world_to_fsl(ph.bvecs_world, dwi.affine)
    bval = build_path(bids, datatype="dwi", suffix="dwi", extension=".bval", **ent)
    bvec = build_path(bids, datatype="dwi", suffix="dwi", extension=".bvec", **ent)
    atomic_write_text(bval, " ".join(f"{b:g}" for b in ph.bvals) + "\n")
    atomic_write_text(
        bvec, "\n".join(" ".join(f"{v:.6f}" for v in row) for row in np.asarray(fsl).T) + "\n"
    )
    bold = ph.images["bold"]
    meta = dict(SIDECARS["bold"], RepetitionTime=float(spec.bold_tr))
    writer.image(bold, datatype="func", suffix="bold", meta=meta, task="rest", **ent)


class _RawWriter:
    def __init__(self, root: Path):
        self.root = root

    def image(self, img, *, datatype: str, suffix: str, meta: dict, **entities) -> Path:
        import nibabel as nib

        from workflows.derivatives import atomic_path

        path = build_path(
            self.root, datatype=datatype, suffix=suffix, extension=".nii.gz", **entities
        )
        with atomic_path(path) as tmp:
            nib.save(img, tmp)
        _write_json(path.with_name(path.name.replace(".nii.gz", ".json")), {**meta, **MANUFACTURER})
        return path


def _write_lesions(lesion_writer: DerivativesWriter, ph: SessionPhantom, raw_bids: Path) -> None:
    sub, ses = ph.subject.label, ph.session
    # odd subjects have masks drawn on FLAIR, even subjects on T1w: both spaces occur
    space = "FLAIR" if ph.subject.index % 2 == 0 else "T1w"
    img = ph.truth_images[f"space-{space}_label-lesion_mask"]
    source = build_path(
        raw_bids, datatype="anat", suffix=space, extension=".nii.gz", sub=sub, ses=ses
    )
    meta = lesion_writer.provenance(
        sources=[source],
        extra={
            "Description": f"Binary lesion mask on the {space} grid (phantom truth; occupancy >= 0.5)",
            "SpatialReference": f"sub-{sub}/ses-{ses}/anat/{source.name}",
            "Type": "Lesion",
        },
    )
    lesion_writer.write_nifti(
        img,
        meta=meta,
        datatype="anat",
        suffix="mask",
        sub=sub,
        ses=ses,
        space=space,
        label="lesion",
    )


def _write_truth(truth: DerivativesWriter, ph: SessionPhantom) -> None:
    sub, ses = ph.subject.label, ph.session
    for key, img in ph.truth_images.items():
        *ents, suffix = key.split("_")
        entities = dict(e.split("-", 1) for e in ents)
        datatype = "dwi" if entities.get("space") == "dwi" else "anat"
        truth.write_nifti(img, datatype=datatype, suffix=suffix, sub=sub, ses=ses, **entities)
    truth.write_json(ph.truth, datatype=None, suffix="truth", extension=".json", sub=sub, ses=ses)
    for name, table in ph.tables.items():
        if name == "lesions":
            truth.write_tsv(table, datatype="anat", suffix="lesions", sub=sub, ses=ses)
        elif name == "bold_region_timeseries":
            truth.write_tsv(
                table, datatype="func", suffix="timeseries", sub=sub, ses=ses, task="rest"
            )
        elif name == "bold_population_correlation":
            truth.write_tsv(
                table, index=True, datatype="func", suffix="relmat", sub=sub, ses=ses,
                task="rest", stat="populationcorrelation",
            )


def _writers(out: Path, spec: PhantomSpec) -> tuple[DerivativesWriter, DerivativesWriter]:
    """Writers of the lesion-mask derivatives and of the ground truth."""
    lesions = DerivativesWriter(
        out / "bids" / "derivatives" / "lesions",
        name="msmri-synth",
        description="Lesion masks of the synthetic trial",
        source_datasets=["../../"],
    )
    truth = DerivativesWriter(
        out / "truth",
        name="msmri-synth",
        description="Ground truth of the synthetic trial",
        config={"phantom": spec.to_dict()},
    )
    return lesions, truth


def _session_job(job: tuple[Path, PhantomSpec, int, int]) -> float:
    """Generate and write one subject-session (runs in a worker process)."""
    out, spec, index, session_index = job
    t0 = time.perf_counter()
    bids = out / "bids"
    lesions, truth = _writers(out, spec)
    subj = make_subject(spec, index)
    ph = simulate_session(spec, subj, session_index)
    _write_raw_session(bids, ph, spec)
    _write_lesions(lesions, ph, bids)
    _write_truth(truth, ph)
    elapsed = time.perf_counter() - t0
    log.info("sub-%s ses-%s written in %.1f s", subj.label, ph.session, elapsed)
    return elapsed


def _participants(subjects) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "participant_id": [f"sub-{s.label}" for s in subjects],
            "age": [s.age for s in subjects],
            "sex": [s.sex for s in subjects],
            "group": ["treated"] * len(subjects),
        }
    )


def write_trial(
    out_dir: str | Path,
    spec: PhantomSpec,
    *,
    subjects: Sequence[int] | None = None,
    n_procs: int = 1,
) -> dict:
    """Generate and write the synthetic trial; return a summary dict.

    Parameters
    ----------
    out_dir : path
        Folder that receives ``bids/`` and ``truth/``.
    spec : PhantomSpec
        Generation parameters (see :data:`pipeline.phantom.trial.PRESETS`).
    subjects : sequence of int, optional
        0-based subject indices to generate (default: all).
    n_procs : int
        Subject-sessions generated in parallel (each is independent and seeded on
        its own, so the files do not depend on this).
    """
    out = Path(out_dir)
    bids = out / "bids"
    t0 = time.perf_counter()
    spec_dict = spec.to_dict()
    _write_json(
        bids / "dataset_description.json",
        {
            "Name": "msmri synthetic longitudinal MS trial",
            "BIDSVersion": "1.9.0",
            "DatasetType": "raw",
            "License": "CC0",
            "Authors": ["msmri developers", "msmri synth (generated data)"],
            "GeneratedBy": [{"Name": "msmri synth", "Description": "synthetic phantom"}],
            "HowToAcknowledge": "Template data: MNI152 2009 (ICBM, McConnell Brain Imaging Centre) via nilearn.",
        },
    )
    atomic_write_text(
        bids / "README",
        "Synthetic longitudinal MS cell-therapy trial generated by `msmri synth`.\n"
        f"Generation parameters: {dumps_json(spec_dict)}\n"
        "Ground truth is in ../truth (outside this raw dataset).\n",
    )
    _write_json(bids / "task-rest_bold.json", {"TaskName": "rest", "RepetitionTime": spec.bold_tr})
    _write_json(
        bids / "participants.json",
        {
            "age": {"Description": "age at baseline", "Units": "year"},
            "sex": {"Description": "sex", "Levels": {"F": "female", "M": "male"}},
            "group": {"Description": "trial arm"},
        },
    )
    _, truth = _writers(out, spec)
    indices = list(range(spec.n_subjects)) if subjects is None else list(subjects)
    models = [make_subject(spec, i) for i in range(spec.n_subjects)]
    part = _participants(models)
    atomic_write_text(
        bids / "participants.tsv", part.to_csv(sep="\t", index=False, lineterminator="\n")
    )
    jobs = [(i, s) for i in indices for s in range(len(spec.sessions))]
    timings: list[float] = []
    if n_procs > 1 and len(jobs) > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        ctx = mp.get_context("spawn")  # no fork of a process holding large arrays
        with ProcessPoolExecutor(max_workers=n_procs, mp_context=ctx) as pool:
            timings = list(pool.map(_session_job, [(out, spec, i, s) for i, s in jobs]))
    else:
        timings = [_session_job((out, spec, i, s)) for i, s in jobs]
    for i in indices:
        subj = models[i]
        truth.write_json(
            subj.to_dict(), datatype=None, suffix="anatomy", extension=".json", sub=subj.label
        )
        rows = [
            {
                "session_id": f"ses-{ses}",
                "acq_time": f"2025-{1 + int(spec.session_months[s]):02d}-15T09:00:00",
                "time_months": spec.session_months[s],
                "edss": subj.edss[s],
            }
            for s, ses in enumerate(spec.sessions)
        ]
        ses_tab = pd.DataFrame(rows)
        atomic_write_text(
            bids / f"sub-{subj.label}" / f"sub-{subj.label}_sessions.tsv",
            ses_tab.to_csv(sep="\t", index=False, lineterminator="\n"),
        )
        _write_json(bids / f"sub-{subj.label}" / f"sub-{subj.label}_sessions.json", SESSION_COLUMNS)
    summary = {
        "spec": spec_dict,
        "subjects": [models[i].label for i in indices],
        "seconds_total": time.perf_counter() - t0,
        "seconds_per_session": timings,
    }
    truth.write_json(
        {
            "spec": spec_dict,
            "planted_effects": {
                "dti": "radial diffusivity of left-hemisphere white matter outside lesions changes by "
                "rd_change[session] (relative); axial diffusivity unchanged; right hemisphere and "
                "lesions unchanged",
                "rd_change": dict(zip(spec.sessions, spec.rd_change, strict=True)),
                "bold": "correlations of the planted edges rise with bold_effect[session]",
                "bold_effect": dict(zip(spec.sessions, spec.bold_effect, strict=True)),
            },
            "seed": spec.seed,
        },
        datatype=None,
        suffix="phantom",
        extension=".json",
    )
    return summary
