"""Input validation and inventory stage (per subject-session, and its group summary).

For one subject-session: find the inputs with pybids, validate every present
modality (errors name the file and stop this subject-session before anything is
written), and write an inventory TSV + JSON describing what the later stages will
use and why anything is skipped.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Collection
from pathlib import Path

import pandas as pd

from pipeline.config import Config
from pipeline.errors import InputError
from pipeline.inventory import describe_image
from pipeline.validation import validate_anat, validate_bold, validate_dwi, validate_mask_grid
from workflows.bids import SessionInputs
from workflows.derivatives import DerivativesWriter

__all__ = ["DWI_ONLY_REASON", "INVENTORY_COLUMNS", "check_session", "summarise_inventories", "write_inventory"]

log = logging.getLogger("msmri.inventory")

#: Inventory note of a session with a DWI series but no T1w (read back by the CLI,
#: the Snakefile and the report: the ``T1w`` row is ``skipped`` with this note).
DWI_ONLY_REASON = (
    "no T1w in this session: the diffusion stage runs on the DWI alone (brain mask, tensor "
    "maps, QC and whole-brain / FA-defined white-matter ROIs); the structural stage, NAWM, "
    "lesion and atlas ROIs, tractography and the resting-state stage need a T1w and are not run"
)

#: Column descriptions of the inventory TSV (stored in its JSON sidecar).
INVENTORY_COLUMNS = {
    "modality": {"Description": "input role: T1w, FLAIR, T2w, dwi, bold or lesion_mask"},
    "path": {"Description": "file used, relative to the BIDS directory"},
    "shape": {"Description": "spatial matrix size (voxels)"},
    "n_volumes": {"Description": "number of volumes (1 for 3-D images)"},
    "voxel_size_mm": {"Description": "voxel size", "Units": "mm"},
    "orientation": {"Description": "voxel axis orientation codes (nibabel aff2axcodes)"},
    "datatype": {"Description": "on-disk data type"},
    "b_values": {"Description": "DWI shells as b-value x number of volumes", "Units": "s/mm^2"},
    "n_directions": {"Description": "distinct b > 0 gradient directions"},
    "repetition_time_s": {"Description": "BOLD repetition time", "Units": "s"},
    "status": {"Description": "used; unused (found, not read by any stage, see `note`); or skipped with the reason in `note`"},
    "note": {"Description": "why a modality is skipped, or warnings raised while validating"},
}


def _derived_volume_notes(dwi: Path, chk, v) -> list[str]:
    """Warnings for the "b = 0" volumes that are scanner-derived images (a trace / ADC
    image kept by the converter; :func:`pipeline.dwi.volumes.derived_volumes`), which the
    diffusion stage leaves out. b > 0 volumes with a zero vector are already in
    ``chk.warnings``."""
    import nibabel as nib
    import numpy as np

    from pipeline.dwi.gradtable import DwiGradients
    from pipeline.dwi.volumes import derived_volumes

    img = nib.load(dwi)
    grads = DwiGradients(bvals=chk.bvals, bvecs=chk.bvecs, affine=img.affine,
                         b0_threshold=v.b0_threshold, shell_tolerance=v.shell_tolerance)
    found = derived_volumes(np.asarray(img.dataobj, dtype=np.float32), grads)
    return [d.warning for d in found if d.index not in chk.derived]


def check_session(
    inputs: SessionInputs,
    config: Config,
    bids_dir: Path,
    *,
    series: Collection[str] = ("dwi", "bold"),
) -> tuple[pd.DataFrame, dict]:
    """Validate every input of one subject-session and describe it.

    Returns the inventory table and a JSON-ready dict of what was found.
    Raises :class:`pipeline.errors.InputError` (naming the file) for a broken
    input; missing optional modalities become rows with ``status = skipped``.
    ``series`` limits the 4-D series validated ("dwi", "bold"): a stage's job
    checks the structural inputs and its own series only, so that a broken BOLD
    run does not stop the session's diffusion job, and no job decompresses a
    series it does not use (about 1.3 s for the DWI and 2.6 s for the BOLD of a
    trial-preset session). The inventory always checks both.
    """
    unknown = set(series) - {"dwi", "bold"}
    if unknown:
        raise ValueError(f"series must be among 'dwi', 'bold', got {sorted(unknown)}")
    v = config.validation
    rows: list[dict] = []
    caught: list[str] = []

    def rel(p: Path) -> str:
        try:
            return str(Path(p).resolve().relative_to(bids_dir.resolve()))
        except ValueError:
            return str(p)

    def add(path: Path, modality: str, note: str = "", status: str = "used", **kw) -> None:
        row = describe_image(path, modality=modality, shell_tolerance=v.shell_tolerance, **kw)
        row["path"] = rel(path)
        row["status"] = status
        row["note"] = note
        rows.append(row)

    def skip(modality: str, reason: str) -> None:
        log.warning(
            "sub-%s ses-%s: %s skipped: %s", inputs.subject, inputs.session, modality, reason
        )
        rows.append({"modality": modality, "status": "skipped", "note": reason})

    missing = {m.split(":", 1)[0].strip(): m for m in inputs.missing}
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        has_dwi = inputs.dwi is not None and inputs.dwi_bval is not None
        if inputs.t1w is None and not has_dwi:
            raise InputError(
                bids_dir / f"sub-{inputs.subject}" / f"ses-{inputs.session}",
                "no T1w image and no DWI series (with .bval/.bvec) found: nothing to process. "
                "Every stage except the diffusion stage needs a T1w (anat/sub-<label>_ses-<label>"
                "_T1w.nii.gz); a session with only a DWI series gets the diffusion stage alone",
            )
        if inputs.t1w is None:
            skip("T1w", DWI_ONLY_REASON)
        else:
            validate_anat(inputs.t1w)
            add(inputs.t1w, "T1w")
        if inputs.t1w is None:
            if inputs.flair is not None:
                add(inputs.flair, "FLAIR", "not used: no T1w in this session", status="unused")
        elif inputs.flair is not None:
            validate_anat(inputs.flair)
            add(inputs.flair, "FLAIR")
        else:
            skip("FLAIR", missing.get("FLAIR", "no FLAIR image found"))
        if inputs.t2w is not None:
            validate_anat(inputs.t2w)
            add(inputs.t2w, "T2w", "listed, not used: the structural stage reads the T1w and FLAIR",
                status="unused")
        if "dwi" in series and has_dwi and inputs.dwi_bvec is not None:
            chk = validate_dwi(
                inputs.dwi, inputs.dwi_bval, inputs.dwi_bvec,
                b0_threshold=v.b0_threshold, shell_tolerance=v.shell_tolerance,
                bvec_norm_tolerance=v.bvec_norm_tolerance, min_directions=v.min_directions,
            )
            notes = [*chk.warnings, *_derived_volume_notes(inputs.dwi, chk, v)]
            add(inputs.dwi, "dwi", "; ".join(notes), bvals=chk.bvals, bvecs=chk.bvecs)
        elif "dwi" in series:
            skip(
                "dwi",
                missing.get("dwi", missing.get("DWI", "no DWI series with .bval/.bvec found")),
            )
        raw_bold = config.func.input == "raw"
        if "bold" in series and inputs.bold is not None and inputs.t1w is None and raw_bold:
            skip("bold", "not processed: the resting-state stage registers the BOLD run to the "
                 "session's T1w and takes its tissue masks and MNI transform from the structural "
                 "stage; this session has no T1w")
        elif "bold" in series and inputs.bold is not None:
            bchk = validate_bold(inputs.bold, inputs.bold_json, min_volumes=v.min_bold_volumes)
            add(inputs.bold, "bold", "; ".join(bchk.warnings), repetition_time=bchk.repetition_time)
        elif "bold" in series:
            skip("bold", missing.get("BOLD", missing.get("bold", "no resting-state BOLD found")))
        if inputs.lesion_mask is not None and inputs.t1w is None:
            skip("lesion_mask", "not used: no T1w in this session (lesions enter the diffusion "
                 "ROIs through the structural stage)")
        elif inputs.lesion_mask is not None:
            reference = inputs.t1w if inputs.lesion_space == "T1w" else inputs.flair
            if reference is None:
                skip(
                    "lesion_mask",
                    f"{inputs.lesion_mask.name} is in space-{inputs.lesion_space} but this session "
                    f"has no {inputs.lesion_space} image to place it",
                )
            else:
                validate_mask_grid(inputs.lesion_mask, reference, tolerance_mm=v.grid_tolerance_mm)
                add(inputs.lesion_mask, "lesion_mask", f"space-{inputs.lesion_space}")
        else:
            skip(
                "lesion_mask",
                missing.get("lesion mask", "no lesion mask in the lesion derivatives"),
            )
    caught = [str(w.message) for w in record]
    for msg in caught:
        log.warning("sub-%s ses-%s: %s", inputs.subject, inputs.session, msg)
    table = pd.DataFrame(rows, columns=list(INVENTORY_COLUMNS))
    found = {
        "subject": inputs.subject,
        "session": inputs.session,
        "missing": list(inputs.missing),
        "notes": list(inputs.notes),
        "warnings": caught,
    }
    return table, found


def write_inventory(
    writer: DerivativesWriter, inputs: SessionInputs, config: Config, bids_dir: Path
) -> Path:
    """Validate, then write ``sub-X_ses-Y_inventory.tsv`` (+ JSON). Returns the TSV path."""
    table, found = check_session(inputs, config, bids_dir)
    sources = [bids_dir / p for p in table.loc[table["status"] == "used", "path"]]
    meta = writer.provenance(
        sources=sources,
        parameters=config.validation.model_dump(mode="json"),
        seed=config.seed,
        extra={"Description": "Inputs found, validated and used for this subject-session", **found},
    )
    return writer.write_tsv(
        table, columns=INVENTORY_COLUMNS, meta=meta,
        datatype=None, suffix="inventory", sub=inputs.subject, ses=inputs.session,
    )


def summarise_inventories(writer: DerivativesWriter, tsv_paths: list[Path]) -> Path:
    """Concatenate per-session inventories into ``group/inventory.tsv``."""
    frames = []
    for p in sorted(tsv_paths):
        df = pd.read_csv(p, sep="\t", dtype=str, keep_default_na=False)
        name = Path(p).name
        ents = dict(part.split("-", 1) for part in name.split("_")[:-1])
        df.insert(0, "session", ents.get("ses", "n/a"))
        df.insert(0, "subject", ents.get("sub", "n/a"))
        frames.append(df)
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    columns = {
        "subject": {"Description": "participant label"},
        "session": {"Description": "session label"},
        **INVENTORY_COLUMNS,
    }
    meta = writer.provenance(
        sources=tsv_paths, extra={"Description": "All inventories of the dataset"}
    )
    return writer.write_tsv(table, columns=columns, meta=meta, datatype="group", suffix="inventory")
