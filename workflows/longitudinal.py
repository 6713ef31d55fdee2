"""Within-subject longitudinal steps of the structural stage.

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

__all__ = ["CHANGE_COLUMNS", "reference_session", "write_lesion_changes"]

log = logging.getLogger("msmri.longitudinal")

CHANGE_COLUMNS = {
    "followup_id": {"Description": "lesion label in this session's mask (on the reference grid)"},
    "status": {"Description": "new or enlarging relative to the reference session"},
    "volume_mm3": {"Description": "lesion volume at this session", "Units": "mm^3"},
    "baseline_ids": {"Description": "overlapping lesion labels at the reference session"},
    "baseline_volume_mm3": {"Description": "summed volume of those lesions", "Units": "mm^3"},
    "volume_change_mm3": {"Description": "volume minus baseline volume", "Units": "mm^3"},
    "centroid_i": {"Description": "centroid voxel index i on the reference T1w grid"},
    "centroid_j": {"Description": "centroid voxel index j on the reference T1w grid"},
    "centroid_k": {"Description": "centroid voxel index k on the reference T1w grid"},
}


def reference_session(config: Config, sessions_table: list[dict], available: list[str]) -> str:
    """The first session in time among those available for a subject."""
    try:
        ordered = [s.label for s in resolve_sessions(config, sessions_table or None)]
    except ConfigError as exc:  # sessions unknown to the configuration: fall back to label order
        log.warning("session order unknown (%s); using label order %s", exc, sorted(available))
        ordered = []
    ranked = [s for s in ordered if s in available] + sorted(
        s for s in available if s not in ordered
    )
    return ranked[0]


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
    from pipeline.anat.lesions import compare_lesions, label_lesions
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

    xfm = register_rigid(brain(ref_t1, ref_mask), brain(t1, mask), static_mask=ref_mask,
                         source="T1w", target="T1wRef")  # fmt: skip
    follow = xfm.resample_mask(lesion_img, ref_t1)
    zooms = np.asarray(ref_t1.header.get_zooms()[:3], dtype=float)
    min_vol = config.anat.lesion_min_volume_mm3
    base_labels, _ = label_lesions(ref_lesion, zooms, min_volume_mm3=min_vol)
    follow_labels, _ = label_lesions(follow, zooms, min_volume_mm3=min_vol)
    table = compare_lesions(base_labels, follow_labels, voxel_size=zooms)
    table["baseline_ids"] = table["baseline_ids"].map(
        lambda ids: ",".join(str(i) for i in ids) or "n/a"
    )
    sources = [_anat(out, subject, s, "mask", label="lesion") for s in (reference, session)]
    meta = writer.provenance(
        sources=sources,
        parameters={
            "reference_session": reference,
            "lesion_min_volume_mm3": min_vol,
            "definitions": "pipeline.anat.lesions.compare_lesions",
        },
        seed=config.seed,
        extra={
            "Description": f"new and enlarging lesions of ses-{session} relative to ses-{reference}"
        },
    )
    ent = {"sub": subject, "ses": session, "datatype": "anat"}
    writer.write_with(xfm.save, **ent, **{"from": "T1w", "to": "T1wRef"}, mode="image",
                      suffix="xfm", extension=".json")  # fmt: skip
    path = writer.write_tsv(
        table, columns=CHANGE_COLUMNS, meta=meta, **ent, desc="changes", suffix="lesions"
    )
    log.info("sub-%s ses-%s: %d new, %d enlarging lesions vs ses-%s", subject, session,
             int((table["status"] == "new").sum()), int((table["status"] == "enlarging").sum()), reference)  # fmt: skip
    return path
