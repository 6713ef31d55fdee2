"""Within-subject longitudinal steps of the structural stage.

Subject reference (``anat.anatomical_reference`` first or unbiased): before the
per-session structural jobs, every session's T1w is rigidly aligned to one
within-subject reference (:mod:`pipeline.anat.reference`); the reference image
and each session's transform are written once and every session's structural
outputs are then on that grid.

For a follow-up session: rigid registration of its bias-corrected T1w brain to
the subject's reference session (the first session in time), then new and
enlarging lesions relative to that reference on the reference grid
(:func:`pipeline.anat.lesions.compare_lesions`). Reads the structural outputs of
both sessions; writes the within-subject transform and a lesion-change table.
"""

from __future__ import annotations

import logging
from pathlib import Path

import nibabel as nib
import numpy as np

from pipeline.config import Config, resolve_sessions
from pipeline.errors import ConfigError, InputError
from workflows.derivatives import DerivativesWriter, build_path

__all__ = [
    "CHANGE_COLUMNS",
    "order_sessions",
    "reference_paths",
    "reference_session",
    "write_lesion_changes",
    "write_subject_reference",
]

log = logging.getLogger("msmri.longitudinal")

#: A new / enlarging lesion is confirmed when the follow-up FLAIR is brighter than the
#: reference over its new voxels by this fraction of the NAWM signal (see
#: pipeline.anat.lesions.confirm_with_flair for the figures behind it).
FLAIR_CONFIRMATION = 0.1


def _thickest_flair_slice(out: Path, subject: str, sessions) -> float:
    """Largest voxel edge (mm) of the raw FLAIRs of ``sessions`` (from their inventories)."""
    from workflows.derivatives import read_tsv

    edges = [1.0]
    for ses in sessions:
        inv = out / f"sub-{subject}" / f"ses-{ses}" / f"sub-{subject}_ses-{ses}_inventory.tsv"
        if not inv.exists():
            continue
        rows = read_tsv(inv)
        for v in rows.loc[rows["modality"] == "FLAIR", "voxel_size_mm"].dropna():
            edges += [float(x) for x in str(v).replace("x", " ").replace(",", " ").split()]
    return max(edges)


CHANGE_COLUMNS = {
    "followup_id": {"Description": "lesion label in this session's mask (on the reference grid)"},
    "status": {"Description": "new or enlarging relative to the reference session; "
               "unconfirmed_new / unconfirmed_enlarging: the masks differ but the FLAIR did not "
               "brighten by the confirmation threshold; stable; new_below_size "
               "(pipeline.anat.lesions.compare_lesions, confirm_with_flair)"},
    "flair_increase": {"Description": "mean FLAIR increase over the lesion's new voxels, as a "
                       "fraction of the NAWM signal (both FLAIRs on the reference grid, "
                       "resolution-matched); n/a without a FLAIR in both sessions"},
    "volume_mm3": {"Description": "lesion volume at this session", "Units": "mm^3"},
    "baseline_ids": {"Description": "overlapping lesion labels at the reference session"},
    "baseline_volume_mm3": {"Description": "summed volume of those lesions", "Units": "mm^3"},
    "volume_change_mm3": {"Description": "volume minus baseline volume", "Units": "mm^3"},
    "centroid_i": {"Description": "centroid voxel index i on the reference T1w grid"},
    "centroid_j": {"Description": "centroid voxel index j on the reference T1w grid"},
    "centroid_k": {"Description": "centroid voxel index k on the reference T1w grid"},
}


def order_sessions(config: Config, sessions_table: list[dict], available: list[str]) -> list[str]:
    """A subject's available sessions in time order (unknown ones last, by label)."""
    try:
        ordered = [s.label for s in resolve_sessions(config, sessions_table or None)]
    except ConfigError as exc:  # sessions unknown to the configuration: fall back to label order
        log.warning("session order unknown (%s); using label order %s", exc, sorted(available))
        ordered = []
    return [s for s in ordered if s in available] + sorted(s for s in available if s not in ordered)


def reference_session(config: Config, sessions_table: list[dict], available: list[str]) -> str:
    """The first session in time among those available for a subject."""
    return order_sessions(config, sessions_table, available)[0]


def reference_paths(out: Path, subject: str, session: str | None = None) -> Path:
    """The subject reference image, or (with ``session``) that session's transform to it."""
    if session is None:
        return build_path(out, datatype="anat", suffix="T1w", extension=".nii.gz",
                          sub=subject, desc="subjectref")
    return build_path(out, datatype="anat", suffix="xfm", extension=".json", sub=subject,
                      ses=session, **{"from": "T1w", "to": "subject"}, mode="image")


def _fingerprint(t1ws: dict[str, Path], config: Config) -> dict:
    """What the reference depends on: mode, rounds, and each input's name, size and mtime."""
    return {
        "mode": config.anat.anatomical_reference,
        "iterations": config.anat.reference_iterations,
        "inputs": {
            ses: [Path(p).name, Path(p).stat().st_size, int(Path(p).stat().st_mtime)]
            for ses, p in t1ws.items()
        },
    }


def write_subject_reference(
    writer: DerivativesWriter, *, subject: str, t1ws: dict[str, Path], config: Config
) -> Path | None:
    """Build and write a subject's within-subject reference (first / unbiased).

    ``t1ws`` maps session -> raw T1w, in time order (all sessions of the subject,
    whatever the session filter, so that the reference does not depend on which
    sessions one job asked for). Returns the reference image path, or None in
    ``sessionwise`` mode. An existing reference built from the same inputs and
    settings is kept (its sessions' outputs stay valid); otherwise it is rebuilt.
    """
    import dataclasses
    import json

    from pipeline.anat.brain import extract_brain
    from pipeline.anat.reference import build_subject_reference
    from pipeline.registration import registration_quality

    mode = config.anat.anatomical_reference
    if mode == "sessionwise":
        return None
    out = writer.root
    ref_path = reference_paths(out, subject)
    stamp = _fingerprint(t1ws, config)
    sidecar = ref_path.with_name(ref_path.name.replace(".nii.gz", ".json"))
    if (
        ref_path.exists()
        and sidecar.exists()
        and all(reference_paths(out, subject, ses).exists() for ses in t1ws)
        and json.loads(sidecar.read_text()).get("Fingerprint") == stamp
    ):
        log.info("sub-%s: subject reference up to date (%s)", subject, ref_path)
        return ref_path
    images, masks = {}, {}
    for ses, path in t1ws.items():
        img = nib.load(path)
        images[ses] = img
        mask = extract_brain(img, method=config.anat.brain_extraction,
                             skull_stripped=config.anat.skull_stripped).mask
        masks[ses] = nib.Nifti1Image(mask.astype(np.uint8), img.affine)
    ref = build_subject_reference(images, masks, mode=mode,
                                  iterations=config.anat.reference_iterations)
    params = {"mode": mode, "iterations": ref.iterations, "sessions": list(ref.sessions),
              "registration": "rigid, Mattes mutual information (DIPY), skull-stripped brains",
              "displacement_mm_at_80mm": ref.displacement_mm()}
    for ses in ref.sessions:
        meta = writer.provenance(sources=[t1ws[ses]], parameters=params, seed=config.seed)
        # quality in the session's own space (its brain mask): the reference through the
        # inverse transform against the session T1w
        xfm = ref.transforms[ses]
        quality = registration_quality(images[ses], ref.image, xfm.inverse(), mask=masks[ses])
        xfm = dataclasses.replace(xfm, quality=quality)
        if not quality["passed"]:
            log.warning("sub-%s ses-%s: T1w -> subject reference registration failed its "
                        "quality check (NMI sharpness %.3f < %g)", subject, ses,
                        quality["nmi_sharpness"], quality["threshold"])
        writer.write_with(xfm.save, meta=meta, sub=subject, ses=ses,
                          datatype="anat", **{"from": "T1w", "to": "subject"}, mode="image",
                          suffix="xfm", extension=".json")
    meta = writer.provenance(sources=list(t1ws.values()), parameters=params, seed=config.seed,
                             extra={"Description": f"within-subject reference T1w ({mode})",
                                    "Fingerprint": stamp})
    path = writer.write_nifti(ref.image, meta=meta, sub=subject, datatype="anat",
                              desc="subjectref", suffix="T1w")
    log.info("sub-%s: subject reference (%s) of sessions %s -> %s", subject, mode,
             list(ref.sessions), path)
    return path


def _anat(out: Path, sub: str, ses: str, suffix: str, **ent) -> Path:
    path = build_path(
        out, datatype="anat", suffix=suffix, extension=".nii.gz", sub=sub, ses=ses, **ent
    )
    if not path.exists():
        raise InputError(path, f"structural output of ses-{ses} missing: run the anat stage first")
    return path


def write_lesion_changes(
    writer: DerivativesWriter, *, subject: str, session: str, reference: str, config: Config
) -> Path:
    """Register ``session`` to ``reference`` and write new/enlarging lesions."""
    from pipeline.anat.lesions import (
        compare_lesions,
        confirm_with_flair,
        flair_increase,
        label_lesions,
    )
    from pipeline.registration import register_rigid

    out = writer.root
    ref_t1 = nib.load(_anat(out, subject, reference, "T1w", desc="preproc"))
    ref_mask = nib.load(_anat(out, subject, reference, "mask", desc="brain"))
    t1 = nib.load(_anat(out, subject, session, "T1w", desc="preproc"))
    mask = nib.load(_anat(out, subject, session, "mask", desc="brain"))
    ref_lesion = (
        np.asanyarray(nib.load(_anat(out, subject, reference, "mask", label="lesion")).dataobj) > 0
    )
    lesion_img = nib.load(_anat(out, subject, session, "mask", label="lesion"))

    def brain(img, m):
        return nib.Nifti1Image(
            np.asarray(img.dataobj, dtype=np.float32) * (np.asarray(m.dataobj) > 0), img.affine
        )

    shared = config.anat.anatomical_reference != "sessionwise"
    if shared:  # both sessions are already on the subject reference grid
        if t1.shape != ref_t1.shape or not np.allclose(t1.affine, ref_t1.affine, atol=1e-4):
            raise InputError(_anat(out, subject, session, "T1w", desc="preproc"),
                             f"not on the grid of ses-{reference} although anatomical_reference "
                             f"is {config.anat.anatomical_reference}: rerun the anat stage")
        from pipeline.registration import Transform

        xfm = Transform.identity("T1w", "T1wRef")
    else:
        xfm = register_rigid(brain(ref_t1, ref_mask), brain(t1, mask), static_mask=ref_mask,
                             source="T1w", target="T1wRef")
    follow = xfm.resample_mask(lesion_img, ref_t1)
    zooms = np.asarray(ref_t1.header.get_zooms()[:3], dtype=float)
    min_vol = config.anat.lesion_min_volume_mm3
    base_labels, _ = label_lesions(ref_lesion, zooms, min_volume_mm3=min_vol)
    follow_labels, _ = label_lesions(follow, zooms, min_volume_mm3=min_vol)
    table = compare_lesions(base_labels, follow_labels, voxel_size=zooms,
                            include_stable=True)
    flairs = [build_path(out, datatype="anat", suffix="FLAIR", extension=".nii.gz", sub=subject,
                         ses=s, space="T1w", desc="preproc") for s in (reference, session)]
    evidence = "none: no FLAIR in both sessions (new / enlarging from the masks alone)"
    if all(p.exists() for p in flairs):
        ref_flair, fu_flair = nib.load(flairs[0]), nib.load(flairs[1])
        fu_on_ref = np.asarray(xfm.resample(fu_flair, ref_t1, order=1).dataobj, dtype=np.float32)
        nawm = np.asanyarray(nib.load(_anat(out, subject, reference, "mask", label="NAWM")).dataobj) > 0
        fwhm = _thickest_flair_slice(out, subject, (reference, session))
        increase = flair_increase(follow_labels, ref_lesion, np.asarray(ref_flair.dataobj, dtype=np.float32),
                                  fu_on_ref, nawm & ~follow, voxel_size=zooms, fwhm_mm=fwhm)
        table = confirm_with_flair(table, increase, min_increase=FLAIR_CONFIRMATION)
        evidence = (f"FLAIR increase >= {FLAIR_CONFIRMATION} x NAWM signal over the new voxels "
                    f"(both FLAIRs NAWM-normalised, Gaussian FWHM {fwhm:.1f} mm)")
    else:
        table["flair_increase"] = np.nan
    table["baseline_ids"] = table["baseline_ids"].map(
        lambda ids: ",".join(str(i) for i in ids) or "n/a"
    )
    sources = [_anat(out, subject, s, "mask", label="lesion") for s in (reference, session)]
    meta = writer.provenance(
        sources=sources,
        parameters={
            "reference_session": reference,
            "registration": "none: sessions share the subject reference grid"
            if shared
            else "rigid, mutual information (DIPY)",
            "lesion_min_volume_mm3": min_vol,
            "definitions": "pipeline.anat.lesions.compare_lesions",
            "confirmation": evidence,
        },
        seed=config.seed,
        extra={
            "Description": f"new and enlarging lesions of ses-{session} relative to ses-{reference}"
        },
    )
    ent = {"sub": subject, "ses": session, "datatype": "anat"}
    writer.write_with(xfm.save, **ent, **{"from": "T1w", "to": "T1wRef"}, mode="image",
                      suffix="xfm", extension=".json")
    path = writer.write_tsv(
        table, columns=CHANGE_COLUMNS, meta=meta, **ent, desc="changes", suffix="lesions"
    )
    log.info("sub-%s ses-%s: %d new, %d enlarging lesions vs ses-%s (%d mask differences without "
             "a FLAIR increase left unconfirmed)", subject, session,
             int((table["status"] == "new").sum()), int((table["status"] == "enlarging").sum()),
             reference, int(table["status"].str.startswith("unconfirmed").sum()))
    return path
