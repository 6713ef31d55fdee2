"""Per subject-session and group HTML QC reports, assembled from the derivatives.

This layer knows the derivatives layout: it finds each stage's figures, tables
and provenance sidecars, decides each stage's status (done, not run, excluded
with its reason, no input), and hands a :class:`pipeline.report.html.Report` to
the renderer. Nothing is recomputed: a report shows what the stages wrote.

Report files (fMRIPrep's ``sub-<label>.html`` at the derivatives root, one per
session as fMRIPrep does for longitudinal data)::

    OUTPUT_DIR/sub-<label>_ses-<label>.html    one per subject-session
    OUTPUT_DIR/group.html                      the group report

Figures are referenced by relative paths (``sub-01/ses-baseline/figures/...svg``),
so a report is a few tens of kB and stays valid when the whole output folder
is moved or copied.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pipeline.errors import InputError
from pipeline.report.html import (
    Figure,
    KeyValues,
    Note,
    Report,
    Section,
    Table,
    methods_boilerplate,
    render_report,
)
from pipeline.validation import read_json_object
from workflows.derivatives import (
    atomic_write_text,
    read_dataset_description,
    read_dwi_exclusions,
    read_plausibility,
    read_tsv,
)
from workflows.outputs import participant_output

__all__ = [
    "check_derivatives",
    "group_report",
    "group_report_path",
    "session_report",
    "session_report_inputs",
    "session_report_path",
    "write_group_report",
    "write_session_report",
]

log = logging.getLogger("msmri.report")


# --------------------------------------------------------------------------- names


def session_report_path(out: str | os.PathLike[str], subject: str, session: str) -> Path:
    """``OUTPUT_DIR/sub-<subject>_ses-<session>.html``."""
    return Path(out) / f"sub-{subject}_ses-{session}.html"


def group_report_path(out: str | os.PathLike[str]) -> Path:
    """``OUTPUT_DIR/group.html``."""
    return Path(out) / "group.html"


def session_report_inputs(
    out_dir: str | os.PathLike[str],
    subject: str,
    session: str,
    *,
    dwi: bool,
    bold: bool,
    followup: bool,
    task: str = "rest",
    anat: bool = True,
) -> list[Path]:
    """The participant outputs one session's report job waits for (Snakemake input).

    The inventory always; the structural table when the session has a T1w
    (``anat``); the lesion-change table for a follow-up session; the ROI table
    when the session has a DWI series, and the tract table when it also has a
    T1w; the run summary when it has a resting-state BOLD run.
    """
    def output(stage: str, **entities: Any) -> Path:
        return Path(out_dir) / participant_output(stage, subject, session, **entities)

    files = [output("inventory")]
    if anat:
        files.append(output("anat"))
    if followup and anat:
        files.append(Path(out_dir) / f"sub-{subject}/ses-{session}/anat/"
                     f"sub-{subject}_ses-{session}_desc-changes_lesions.tsv")
    if dwi:
        files.append(output("dwi"))
    if dwi and anat:
        files.append(output("tract"))
    if bold:
        files.append(output("func", task=task))
    return files


# --------------------------------------------------------------------------- readers


def check_derivatives(out: str | os.PathLike[str]) -> dict[str, Any]:
    """``dataset_description.json`` of an msmri output folder (see
    :func:`workflows.derivatives.read_dataset_description`)."""
    return read_dataset_description(out, derivative=True, outputs=True)


def _json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, json.JSONDecodeError):
        log.warning("report: unreadable sidecar %s", path)
        return {}


def _tsv(path: Path):
    return read_tsv(path) if path.is_file() else None


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name.split(".", 1)[0] + ".json")


def _software(sidecars: Sequence[Mapping[str, Any]]) -> dict[str, list[str]]:
    versions: dict[str, list[str]] = {}
    for meta in sidecars:
        for name, ver in (meta.get("SoftwareVersions") or {}).items():
            versions.setdefault(name, [])
            if str(ver) not in versions[name]:
                versions[name].append(str(ver))
    return versions


def _cols(df, columns: Sequence[str]):
    return df[[c for c in columns if c in df.columns]]


# --------------------------------------------------------------------------- session report


class _Session:
    def __init__(self, out: Path, subject: str, session: str, task: str):
        self.out, self.sub, self.ses, self.task = out, subject, session, task
        self.dir = out / f"sub-{subject}/ses-{session}"
        self.stem = f"sub-{subject}_ses-{session}"

    def fig(self, desc: str, suffix: str, *, task: bool = False) -> Path:
        t = f"_task-{self.task}" if task else ""
        return self.dir / f"figures/{self.stem}{t}_desc-{desc}_{suffix}.svg"

    def file(self, datatype: str, name: str) -> Path:
        return self.dir / datatype / f"{self.stem}_{name}"


def _inventory_section(s: _Session) -> tuple[Section, dict[str, str], dict[str, Any]]:
    path = s.dir / f"{s.stem}_inventory.tsv"
    table = _tsv(path)
    meta = _json(_sidecar(path))
    skipped: dict[str, str] = {}
    if table is None:
        return (Section("summary", "Summary", "not run",
                        f"no inventory ({path.name}); run the inventory stage"), skipped, meta)
    for _, row in table.iterrows():
        if str(row.get("status")) == "skipped":
            skipped[str(row["modality"])] = str(row.get("note") or "not available")
    items: list[Any] = [Table(_cols(table, ["modality", "path", "shape", "n_volumes",
                                            "voxel_size_mm", "orientation", "b_values",
                                            "n_directions", "repetition_time_s", "status",
                                            "note"]), "Inputs found and validated")]
    for w in meta.get("warnings") or []:
        items.append(Note(str(w), "warning"))
    for n in meta.get("notes") or []:
        items.append(Note(str(n)))
    return Section("summary", "Summary and inputs", "ok", items=tuple(items)), skipped, meta


def _anat_section(s: _Session, skipped: Mapping[str, str]) -> tuple[Section, dict[str, Any]]:
    vol_path = s.out / participant_output("anat", s.sub, s.ses)
    meta = _json(_sidecar(vol_path))
    if "T1w" in skipped:
        return Section("anat", "Structural", "no input", skipped["T1w"]), meta
    vol = _tsv(vol_path)
    figs = (
        Figure(s.fig("brainseg", "T1w"), "Brain mask and tissue segmentation",
               "Bias-corrected T1w with the brain mask outline and the grey / white matter segmentation."),
        Figure(s.fig("t1w2mni", "T1w"), "Spatial normalisation to MNI152NLin2009aSym",
               "The T1w resampled to the template with the template's brain and white-matter "
               "outlines (check the fit of ventricles and cortex)."),
        Figure(s.fig("lesions", "T1w"), "Lesions and normal-appearing white matter",
               "Lesion mask and NAWM (white matter minus the dilated lesions) on the FLAIR (T1w "
               "without FLAIR)."),
    )
    if vol is None:
        return Section("anat", "Structural", "not run",
                       f"no structural outputs ({vol_path.name}); run the anat stage",
                       items=figs), meta
    flag = read_plausibility(s.out, s.sub, s.ses)
    checks = _tsv(flag["path"].with_suffix(".tsv")) if flag else None
    row = vol.iloc[0]
    kv = [(k, row[k]) for k in ("icv_mm3", "gm_mm3", "wm_mm3", "csf_mm3", "lesion_mm3",
                                "nawm_mm3", "bpf") if k in vol.columns]
    items: list[Any] = [KeyValues(tuple(kv), "Volumes (mm³) and brain parenchymal fraction")]
    if meta.get("LesionMethod"):
        items.append(Note(f"lesion mask: {meta['LesionMethod']}"))
    items += list(figs)
    summary = _tsv(s.file("anat", "desc-summary_lesions.tsv"))
    if summary is not None:
        items.append(Table(summary, "Lesions by location"))
    changes_path = s.file("anat", "desc-changes_lesions.tsv")
    changes = _tsv(changes_path)
    if changes is not None:
        ref = (_json(_sidecar(changes_path)).get("Parameters") or {}).get("reference_session")
        items.append(Table(changes, f"New and enlarging lesions relative to ses-{ref}"))
    else:
        refs = [(_json(p).get("Parameters") or {}).get("reference_session")
                for p in s.out.glob(f"sub-{s.sub}/ses-*/anat/sub-{s.sub}_ses-*_desc-changes_lesions.json")]
        if s.ses in refs:
            items.append(Note("lesion changes: this is the subject's reference session "
                              "(the follow-up sessions are compared with it)"))
        else:
            items.append(Note("lesion changes: no table for this session (run the lesion_changes "
                              "stage; the subject's reference session itself has none)", "warning"))
    if checks is not None:
        items.append(Table(checks, "Plausibility checks (a failed check flags the session)"))
    if flag and flag["flagged"]:
        return Section("anat", "Structural", "flagged", f"implausible results: {flag['reason']}",
                       items=tuple(items)), meta
    return Section("anat", "Structural", "ok", items=tuple(items)), meta


def _dwi_section(s: _Session, skipped: Mapping[str, str]) -> tuple[Section, dict[str, Any]]:
    path = s.out / participant_output("dwi", s.sub, s.ses)
    meta = _json(_sidecar(path))
    figs = (
        Figure(s.fig("motion", "dwi"), "Head motion and outlier volumes",
               "Framewise displacement and slice dropout per volume; flagged volumes are left "
               "out of the tensor fit."),
        *(() if "T1w" in skipped else (
            Figure(s.fig("b0toT1w", "dwi"), "Diffusion to T1w registration",
                   "Mean b = 0 image in T1w space with the T1w brain mask outline."),)),
        Figure(s.fig("fa", "dwi"), "Fractional anisotropy"),
        Figure(s.fig("colorfa", "dwi"), "Colour FA (red L-R, green A-P, blue S-I)"),
        Figure(s.fig("rois", "dwi"), "Regions of interest in diffusion space",
               "WM, NAWM, lesion and perilesional ROIs used for the ROI table."),
    )
    if "dwi" in skipped:
        return Section("dwi", "Diffusion", "no input", skipped["dwi"]), meta
    table = _tsv(path)
    if table is None:
        return Section("dwi", "Diffusion", "not run",
                       f"no ROI table ({path.name}); run the dwi stage", items=figs), meta
    params = meta.get("Parameters") or {}
    motion, tensor = params.get("motion") or {}, params.get("tensor") or {}
    kurt = params.get("kurtosis") or {}
    kv = (("tensor fit", tensor.get("method")),
          ("volumes fitted", tensor.get("n_volumes_fitted")),
          ("volumes excluded (0-based)", ", ".join(map(str, tensor.get("excluded_volumes", []))) or "none"),
          ("mean FD (mm)", motion.get("mean_framewise_displacement_mm")),
          ("max FD (mm)", motion.get("max_framewise_displacement_mm")),
          ("negative-eigenvalue voxels", tensor.get("n_negative_eigenvalue_voxels")),
          ("tensor shells (s/mm²)", ", ".join(f"{b:g}" for b in (tensor.get("shells") or {}).get(
              "tensor_shells", [])) or "n/a"),
          ("shells left out of the tensor", ", ".join(f"{b:g}" for b in (tensor.get("shells") or {}).get(
              "tensor_shells_left_out", [])) or "none"),
          ("kurtosis (DKI)", ("fitted on b = " + ", ".join(f"{b:g}" for b in kurt["shells"]))
           if kurt.get("fitted") else (kurt.get("reason") or "not run")))
    items: list[Any] = [KeyValues(kv, "Motion and tensor fit")]
    items += list(figs)
    items.append(Table(_cols(table, ["roi", "metric", "units", "n_voxels", "mean", "median",
                                     "sd", "lesion_loss_fraction"]), "ROI statistics",
                       "Diffusivities in µm²/ms (= 10⁻³ mm²/s)."))
    for w in params.get("input_warnings") or []:
        items.append(Note(str(w), "warning"))
    not_produced = meta.get("NotProduced") or {}
    for what, why in not_produced.items():
        items.append(Note(f"not produced: {what} ({why})", "warning"))
    if not_produced:
        return Section("dwi", "Diffusion", "partial", "no T1w: DWI-only measures",
                       items=tuple(items)), meta
    return Section("dwi", "Diffusion", "ok", items=tuple(items)), meta


def _tract_section(s: _Session, skipped: Mapping[str, str]) -> tuple[Section, dict[str, Any]]:
    path = s.out / participant_output("tract", s.sub, s.ses)
    meta = _json(_sidecar(path))
    figs = (
        Figure(s.fig("bundles", "tract"), "Recognised bundles over FA",
               "Voxels with streamline density > 0 of each recognised bundle."),
        Figure(s.fig("profiles", "tract"), "Tract profiles",
               "FA / MD / AD / RD along each bundle (dotted: lesion samples excluded)."),
    )
    if "dwi" in skipped:
        return Section("tract", "Tracts", "no input", skipped["dwi"]), meta
    if "T1w" in skipped:
        return Section("tract", "Tracts", "no input", "no T1w in this session: bundle "
                       "waypoints come through the structural stage's T1w -> MNI transform"), meta
    table = _tsv(path)
    if table is None:
        return Section("tract", "Tracts", "not run",
                       f"no tract table ({path.name}); run the tract stage", items=figs), meta
    lost = table[table["status"].astype(str) != "ok"] if "status" in table else table.iloc[:0]
    status = "partial" if len(lost) else "ok"
    reason = "; ".join(f"{r.bundle}: {r.reason}" for r in lost.itertuples()) if len(lost) else ""
    cols = ["bundle", "status", "reason", "n_recognised", "n_streamlines", "lesion_node_fraction",
            "mean_fa", "mean_md", "mean_ad", "mean_rd"]
    items = (*figs, Table(_cols(table, cols), "Bundles", "Means of the 100-node profiles; "
                          "diffusivities in µm²/ms."))
    return Section("tract", "Tracts", status, reason, items=items), meta


def _func_section(s: _Session, skipped: Mapping[str, str]) -> tuple[Section, dict[str, Any]]:
    path = s.out / participant_output("func", s.sub, s.ses, task=s.task)
    meta = _json(_sidecar(path))
    reg = s.fig("boldtoT1w", "bold", task=True)
    if not reg.exists() and s.fig("boldtoMNI", "bold", task=True).exists():
        reg = s.fig("boldtoMNI", "bold", task=True)
    figs = (
        Figure(s.fig("carpetraw", "bold", task=True), "Carpet plot before denoising",
               "Brain-voxel time series of the realigned BOLD, with FD."),
        Figure(s.fig("carpetdenoised", "bold", task=True), "Carpet plot after denoising",
               "Kept (uncensored) volumes after confound regression and filtering.",
               reason="not drawn with fewer than 10 kept volumes"),
        Figure(s.fig("fd", "bold", task=True), "Framewise displacement (Power)",
               "Censored volumes marked; the line is the scrubbing threshold."),
        Figure(reg, "BOLD registration", "BOLD reference in T1w space with the T1w brain mask outline (fMRIPrep "
               "input: the BOLD mean on the template frame)."),
        Figure(s.fig("connectome", "bold", task=True), "Connectivity matrix",
               "Correlation of the denoised region time series, ordered by network.",
               reason="no matrix: the run was excluded or has no valid region"),
    )
    if "bold" in skipped:
        return Section("func", "Resting-state fMRI", "no input", skipped["bold"]), meta
    table = _tsv(path)
    if table is None:
        return Section("func", "Resting-state fMRI", "not run",
                       f"no run summary ({path.name}); run the func stage", items=figs), meta
    row = table.iloc[0].to_dict()
    keys = ("repetition_time_s", "n_dummy_removed", "n_volumes", "mean_fd_mm", "max_fd_mm",
            "n_censored", "censored_pct", "n_kept", "minutes_kept", "strategy", "dof", "atlas",
            "n_regions", "n_regions_valid", "excluded", "exclusion_reason")
    items: list[Any] = [KeyValues(tuple((k, row[k]) for k in keys if k in row), "Run summary")]
    excluded = bool(meta.get("Excluded")) or str(row.get("excluded")) in ("1", "1.0", "True")
    reason = str(meta.get("ExclusionReason") or row.get("exclusion_reason") or "")
    if excluded:
        items.append(Note(f"run EXCLUDED from connectivity analysis: {reason}", "error"))
    items += list(figs)
    for w in (meta.get("Parameters") or {}).get("input_warnings") or []:
        items.append(Note(str(w), "warning"))
    return Section("func", "Resting-state fMRI", "excluded" if excluded else "ok",
                   reason if excluded else "", items=tuple(items)), meta


def session_report(
    out: str | os.PathLike[str], subject: str, session: str, *, task: str = "rest"
) -> Report:
    """The report of one subject-session, from the files its stages wrote.

    Raises
    ------
    InputError
        When ``out`` is not a derivatives dataset, or has no folder for the
        subject-session.
    """
    out = Path(out)
    desc = check_derivatives(out)
    s = _Session(out, subject, session, task)
    if not s.dir.is_dir():
        raise InputError(s.dir, f"no outputs for sub-{subject} ses-{session} in {out}; run the "
                         "participant stages for this subject-session first")
    summary, skipped, inv_meta = _inventory_section(s)
    anat, anat_meta = _anat_section(s, skipped)
    dwi, dwi_meta = _dwi_section(s, skipped)
    tract, tract_meta = _tract_section(s, skipped)
    func, func_meta = _func_section(s, skipped)
    stages = (anat, dwi, tract, func)
    status_rows = [("inventory", summary.status if summary.status != "ok" else "done")]
    for sec in stages:
        label = {"ok": "done"}.get(sec.status, sec.status)
        status_rows.append((sec.title, f"{label}: {sec.reason}" if sec.reason else label))
    summary = Section(summary.id, summary.title, summary.status, summary.reason,
                      items=(KeyValues((("subject", subject), ("session", session),
                                        *status_rows), "Stages"), *summary.items))
    missing = [sec for sec in stages if sec.status != "ok"]
    missing_items = tuple(
        Note(f"{sec.title}: {sec.status}" + (f" ({sec.reason})" if sec.reason else ""),
             "error" if sec.status in ("excluded", "failed") else "warning")
        for sec in missing
    ) or (Note("every stage ran for this session", "ok"),)
    missing_sec = Section("missing", "Stages not run or excluded",
                          "ok" if not missing else "partial", items=missing_items)
    found = {k: m for k, m in (("anat", anat_meta), ("dwi", dwi_meta), ("tract", tract_meta),
                               ("func", func_meta)) if m}
    gen = (desc.get("GeneratedBy") or [{}])[0]
    methods = methods_boilerplate(found, software=_software([inv_meta, *found.values()]),
                                  version=str(gen.get("Version", "")))
    dates = sorted({str(m.get("DateGenerated")) for m in found.values() if m.get("DateGenerated")})
    flag = read_plausibility(out, subject, session)
    banners = ()
    if flag and flag["flagged"]:
        banners = (Note(f"Structural results flagged as implausible ({', '.join(flag['failed'])}): "
                        f"{flag['reason']}. Every later stage stands on them; the group statistics "
                        "leave this session out unless group.include_flagged is true.", "error"),)
    ex = read_dwi_exclusions(out, subject, session)
    if ex and ex["flagged"]:
        banners += (Note(f"DWI flagged: {ex['reason']}. The group statistics of the diffusion "
                         "metrics leave this session out unless group.include_flagged is true.",
                         "error"),)
    elif ex and ex["warning"]:
        banners += (Note(f"DWI: {ex['warning']}; see the confounds table for the reasons.",
                         "warning"),)
    for func_side in sorted((out / f"sub-{subject}" / f"ses-{session}" / "func").glob(
            "sub-*_desc-summary_bold.json")):
        side = read_json_object(func_side)
        if side.get("Flagged"):
            banners += (Note(f"BOLD flagged: {side.get('Reason', '')}. The NBS leaves this "
                             "session out unless group.include_flagged is true.", "error"),)
    return Report(
        banners=banners,
        title=f"sub-{subject} ses-{session}",
        subtitle=f"msmri {gen.get('Version', '')} QC report · derivatives {out} · generated "
        + (", ".join(dates) or "n/a"),
        sections=(summary, anat, dwi, tract, func, missing_sec),
        methods=methods,
        footer="Figures are the SVG files of each stage (figures/ folder); tables are the "
        "stage TSV files. Relative links: keep this page inside the derivatives folder.",
    )


def write_session_report(
    out: str | os.PathLike[str], subject: str, session: str, *, task: str = "rest",
    embed: bool = False,
) -> Path:
    """Build and atomically write ``OUTPUT_DIR/sub-<subject>_ses-<session>.html``."""
    path = session_report_path(out, subject, session)
    report = session_report(out, subject, session, task=task)
    atomic_write_text(path, render_report(report, location=path, embed=embed))
    log.info("sub-%s ses-%s report -> %s", subject, session, path)
    return path


# --------------------------------------------------------------------------- group report


def _group_figs(paths: Sequence[Path], caption: str = "") -> tuple[Figure, ...]:
    return tuple(Figure(p, p.name.split("desc-", 1)[-1].rsplit("_", 1)[0], caption) for p in paths)


def _stats_block(g: Path, suffix: str, label: str) -> tuple[list[Any], dict[str, Any]]:
    tests_path = g / f"desc-tests_{suffix}.tsv"
    meta = _json(_sidecar(tests_path))
    tests = _tsv(tests_path)
    items: list[Any] = []
    if tests is None:
        return items, meta
    if meta.get("Summary"):
        items.append(Note(str(meta["Summary"]), pre=True))
    params = meta.get("Parameters") or {}
    if params.get("fdr_statement"):
        items.append(Note(f"multiple comparisons: {params['fdr_statement']}"))
    if "can_reach_alpha" in tests.columns:
        flag = tests["can_reach_alpha"].astype(str).str.lower().isin(["false", "0"])
        cannot = tests[flag & tests["min_p"].notna()]
        for (test, contrast), part in cannot.groupby(["test", "contrast"], sort=False):
            items.append(Note(f"{test} [{contrast}]: cannot reach p < 0.05 with this design "
                              f"(smallest attainable p = {part['min_p'].min():.4g}, "
                              f"n = {int(part['n_subjects'].max())})", "warning"))
    cols = ["roi", "bundle", "metric", "profile", "test", "contrast", "n_subjects", "statistic",
            "p", "p_fdr", "significant", "exact", "min_p", "can_reach_alpha", "estimate_name",
            "estimate", "mean_pct_change", "method", "reason"]
    items.append(Table(_cols(tests, cols), f"{label}: tests",
                       "Bold: significant after FDR; orange: the test cannot reach p < 0.05 "
                       "with this many subjects (min_p = smallest attainable p)."))
    sessions = _tsv(g / f"desc-sessions_{suffix}.tsv")
    if sessions is not None:
        items.append(Table(sessions, f"{label}: values by session (median, quartiles)"))
    return items, meta


def _nbs_stem(g: Path) -> str | None:
    comps = sorted(g.glob("*_desc-components_nbs.tsv"))
    return str(comps[0].name)[: -len("_desc-components_nbs.tsv")] if comps else None


def group_report(out: str | os.PathLike[str]) -> Report:
    """The group report from ``OUTPUT_DIR/group`` (and links to the session reports).

    Raises
    ------
    InputError
        When ``out`` is not a derivatives dataset or has no ``group`` folder.
    """
    out = Path(out)
    desc = check_derivatives(out)
    g = out / "group"
    if not g.is_dir():
        raise InputError(g, "no group outputs; run `msmri BIDS_DIR OUTPUT_DIR group` first")
    sections: list[Section] = []
    stage_meta: dict[str, dict[str, Any]] = {}
    exclusions: list[Any] = []

    # summary
    reports = sorted(out.glob("sub-*_ses-*.html"))
    inv = _tsv(g / "inventory.tsv")
    items: list[Any] = []
    if inv is not None:
        items.append(Table(inv, "Inputs of every subject-session (group inventory)"))
    if reports:
        items.append(Note(f"{len(reports)} subject-session reports (links above)."))
    sections.append(Section("summary", "Summary", "ok", items=tuple(items)))

    # DTI
    items, meta = _stats_block(g, "dwistats", "DTI ROI medians")
    if items:
        stage_meta["dwi_stats"] = meta
        items.append(_group_figs(sorted(g.glob("desc-spaghetti*_dwistats.svg")),
                                 "one line per subject"))
        items.append(_group_figs(sorted(g.glob("desc-box*_dwistats.svg"))))
        sections.append(Section("dwi", "DTI (ROIs)", "ok", items=tuple(items)))
    else:
        sections.append(Section("dwi", "DTI (ROIs)", "not run",
                                "no desc-tests_dwistats.tsv; run the group dwi_stats stage"))
    # tracts
    items, meta = _stats_block(g, "tractstats", "Tract means")
    if items:
        stage_meta["tract_stats"] = meta
        ranges = _tsv(g / "desc-plainRanges_tractprofiletests.tsv")
        if ranges is not None:
            items.append(Table(ranges, "Tract profile: node ranges with FWE-corrected change"))
        items.append(_group_figs(sorted(g.glob("desc-*_tractprofiletests.svg")),
                                 "paired t along the profile; shaded: FWE-significant nodes"))
        sections.append(Section("tract", "Tracts", "ok", items=tuple(items)))
    else:
        sections.append(Section("tract", "Tracts", "not run",
                                "no desc-tests_tractstats.tsv; run the tract stage and the group "
                                "tract_stats stage"))
    # clinical
    items, meta = _stats_block(g, "clinicalstats", "Clinical variables")
    if items:
        assoc = _tsv(g / "desc-association_clinicalstats.tsv")
        if assoc is not None:
            items.append(Table(assoc, "Association of imaging change with clinical change"))
        items.append(_group_figs(sorted(g.glob("desc-spaghetti*_clinicalstats.svg"))))
        reason = (meta.get("Parameters") or {}).get("reason", "")
        sections.append(Section("clinical", "Clinical", "not run" if reason else "ok",
                                str(reason), items=tuple(items)))
    # NBS
    stem = _nbs_stem(g)
    if stem is not None:
        meta = _json(g / f"{stem}_desc-components_nbs.json")
        stage_meta["nbs"] = meta
        p = meta.get("Parameters") or {}
        alpha = (p.get("nbs") or {}).get("alpha", 0.05)
        exact = (f"EXACT: all {p.get('n_permutations')} distinct relabellings enumerated"
                 if p.get("exact") else f"{p.get('n_permutations')} random relabellings "
                 f"(of {p.get('n_distinct_available')} distinct)")
        min_p = p.get("min_attainable_p")
        items = [Note(f"{p.get('design', '')}; subjects {', '.join(map(str, p.get('subjects', [])))}. "
                      f"Inference {exact}; smallest attainable FWE p = {min_p}.",
                      "info")]
        if min_p is not None and float(min_p) > float(alpha):
            items.append(Note(f"cannot reach p < {alpha} with this design (smallest attainable "
                              f"p = {min_p}): no component can be significant; collect more "
                              "data.", "warning"))
        cfg_nbs = p.get("nbs") or {}
        side = {"greater": "one-sided, follow-up > baseline", "less": "one-sided, follow-up < "
                "baseline", "two-sided": "two-sided (both signs, FWE across them)",
                "both-one-sided": "both one-sided contrasts as separate tests"}.get(
                    cfg_nbs.get("alternative"), str(cfg_nbs.get("alternative")))
        if cfg_nbs.get("hypothesis"):
            items.append(Note(f"Pre-specified hypothesis (nbs.hypothesis): "
                              f"{cfg_nbs['hypothesis']}; tested {side}.", "info"))
        else:
            items.append(Note(f"No pre-specified hypothesis (nbs.hypothesis is empty): the "
                              f"NBS ({side}) is exploratory.", "info"))
        items.append(Note("Sign-flip inference assumes that each subject's change is "
                          "symmetric about zero under the null (exchangeable signs); a skewed "
                          "null distribution of changes (e.g. a drift that affects some subjects "
                          "strongly) inflates false positives.", "info"))
        if p.get("degenerate_edges"):
            items.append(Note(f"{len(p['degenerate_edges'])} edge(s) without residual variance "
                              "(the same change in every subject) were left out of the test.",
                              "warning"))
        if meta.get("Summary"):
            items.append(Note(str(meta["Summary"]), pre=True))
        comps = _tsv(g / f"{stem}_desc-components_nbs.tsv")
        items.append(Table(comps, "Components"))
        items.append(_group_figs([g / f"{stem}_desc-{k}_nbs.svg"
                                  for k in ("adjacency", "circle", "glassbrain")]))
        power = _tsv(g / f"{stem}_desc-power_nbs.tsv")
        pstat = p.get("power") or {}
        if power is None and pstat.get("run") is False and "is 0" not in str(pstat.get("reason")):
            items.append(Note(f"NBS power analysis not run: {pstat.get('reason')}", "warning"))
        if power is not None:
            pmeta = _json(g / f"{stem}_desc-power_nbs.json")
            items.append(Note(str(pmeta.get("Description", "NBS power analysis")), "info"))
            items.append(Table(power, "NBS power analysis (simulated)"))
            items.append(_group_figs([g / f"{stem}_desc-power_nbs.svg"]))
        sections.append(Section("nbs", "Network-based statistic", "ok", items=tuple(items)))
        excl = _tsv(g / f"{stem}_desc-exclusions_nbs.tsv")
        if excl is not None:
            exclusions.append(Table(excl, "NBS: runs left out"))
    else:
        sections.append(Section("nbs", "Network-based statistic", "not run",
                                "no *_desc-components_nbs.tsv; run the group nbs stage"))
    # QC-FC
    qcfc = sorted(g.glob("*_desc-qcfc_bold.tsv"))
    if qcfc:
        qstem = qcfc[0].name[: -len("_desc-qcfc_bold.tsv")]
        meta = _json(g / f"{qstem}_desc-qcfc_bold.json")
        stage_meta["qcfc"] = meta
        items = [Note(str(meta.get("Summary", "")))] if meta.get("Summary") else []
        summ = (meta.get("Parameters") or {}).get("summary") or {}
        if summ:
            import pandas as pd

            items.append(Table(pd.DataFrame(summ).T.reset_index(names="series"),
                               "QC-FC with and without denoising"))
        items.append(Figure(g / f"{qstem}_desc-qcfc_bold.svg", "QC-FC distribution and distance "
                            "dependence"))
        runs = _tsv(g / f"{qstem}_desc-qcfcruns_bold.tsv")
        if runs is not None:
            items.append(Table(runs, "Runs (mean FD; used or why not)"))
            unused = runs[~runs["used"].astype(str).str.lower().isin(["true", "1"])]
            if len(unused):
                exclusions.append(Table(unused, "QC-FC: runs not used"))
        sections.append(Section("qcfc", "QC-FC (residual motion)", "ok", items=tuple(items)))
    else:
        sections.append(Section("qcfc", "QC-FC (residual motion)", "not run",
                                "no *_desc-qcfc_bold.tsv; run the group qcfc stage"))
    # exclusions
    for name, label in (("desc-exclusions_dwistats.tsv", "DTI tests"),
                        ("desc-exclusions_tractstats.tsv", "Tract tests"),
                        ("desc-plainExclusions_tractprofiletests.tsv", "Tract profiles"),
                        ("desc-exclusions_clinicalstats.tsv", "Clinical tests")):
        t = _tsv(g / name)
        if t is not None:
            exclusions.insert(len(exclusions), Table(t, f"{label}: exclusions"))
    runs = []
    for p in sorted(out.glob("sub-*/ses-*/func/*_desc-summary_bold.json")):
        m = _json(p)
        if m.get("Excluded"):
            runs.append({"run": p.name.replace("_desc-summary_bold.json", ""),
                         "reason": m.get("ExclusionReason")})
    if runs:
        import pandas as pd

        exclusions.insert(0, Table(pd.DataFrame(runs), "Resting-state runs excluded at the "
                                   "participant level"))
    sections.append(Section("exclusions", "Exclusions and their reasons", "ok",
                            items=tuple(exclusions) or (Note("no exclusions", "ok"),)))
    gen = (desc.get("GeneratedBy") or [{}])[0]
    methods = methods_boilerplate(stage_meta, software=_software(list(stage_meta.values())),
                                  version=str(gen.get("Version", "")))
    return Report(
        title="msmri group report",
        subtitle=f"msmri {gen.get('Version', '')} · derivatives {out}",
        sections=tuple(sections),
        methods=methods,
        links=tuple((r.stem, r) for r in reports),
        footer="Tables are the group TSV files; figures the group SVG files.",
    )


def write_group_report(out: str | os.PathLike[str], *, embed: bool = False) -> Path:
    """Build and atomically write ``OUTPUT_DIR/group.html``."""
    path = group_report_path(out)
    atomic_write_text(path, render_report(group_report(out), location=path, embed=embed))
    log.info("group report -> %s", path)
    return path
