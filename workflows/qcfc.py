"""Group stage ``qcfc``: QC-FC of the resting-state connectomes, before and after denoising.

Reads every kept run (any session) of the configured parcellation: its mean
framewise displacement (run summary), its denoised matrix (``nbs.measure``) and
its raw region time series (``desc-raw_timeseries``: the regional means before
any confound regression, filtering or censoring), whose Pearson correlation
(Fisher z, or plain r for measure correlation) stands for "no denoising".
:func:`pipeline.func.qcfc.qc_fc` then gives, for both, the per-edge correlation
of edge strength with mean FD across runs (Power et al. 2012; Ciric et al. 2017).

Outputs under ``OUTPUT_DIR/group/`` (entities ``task``, ``seg``, ``stat``):
``desc-qcfc_bold.tsv`` (one row per edge: labels, distance, QC-FC r / p / FDR-p
after denoising and without), ``desc-qcfcruns_bold.tsv`` (the runs used and their
mean FD, plus the left-out runs with their reason), a JSON sidecar with both
summaries (median |QC-FC|, fraction of edges with p < 0.05 uncorrected and after
FDR, distance dependence), and a figure of the two QC-FC distributions and of
QC-FC against distance.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from pipeline.config import Config
from workflows.derivatives import DerivativesWriter, build_path
from workflows.nbs import read_table

__all__ = ["collect_qcfc_inputs", "write_qcfc"]

log = logging.getLogger("msmri.group")

#: Fewest runs for a QC-FC correlation (below this the stage writes only the run table).
MIN_RUNS = 5


def collect_qcfc_inputs(out: Path, config: Config) -> dict:
    """Mean FD, denoised and raw matrices of every kept run, and the runs left out.

    Raises :class:`~pipeline.errors.InputError` naming a region table that differs
    from the first one, or a time-series file whose columns are not the regions.
    """
    from pipeline.errors import InputError
    from workflows.outputs import MEASURE_STATS, seg_name

    out = Path(out)
    seg = seg_name(config.func.atlas, config.func.atlas_labels)
    stat = MEASURE_STATS[config.nbs.measure][1]
    task = config.bids.bold_task
    fisher = config.nbs.measure != "correlation"
    runs, skipped, fd, den, raw, sources = [], [], [], [], [], []
    regions = ref_path = None
    for summ in sorted(out.glob(f"sub-*/ses-*/func/sub-*_ses-*_task-{task}_desc-summary_bold.tsv")):
        sub, ses = summ.parts[-4][4:], summ.parts[-3][4:]

        def path(sub=sub, ses=ses, **ent):
            return build_path(out, datatype="func", sub=sub, ses=ses, task=task, **ent)

        row = read_table(summ).iloc[0]
        if int(row["excluded"]):
            skipped.append(
                {
                    "subject": sub,
                    "session": ses,
                    "reason": f"run excluded: {row['exclusion_reason']}",
                }
            )
            continue
        rel = path(seg=seg, stat=stat, suffix="relmat", extension=".tsv")
        ts = path(seg=seg, desc="raw", suffix="timeseries", extension=".tsv")
        table_path = path(seg=seg, suffix="dseg", extension=".tsv")
        missing = [p.name for p in (rel, ts, table_path) if not p.exists()]
        if missing:
            skipped.append(
                {"subject": sub, "session": ses, "reason": f"missing {', '.join(missing)}"}
            )
            continue
        table = read_table(table_path)
        names = table["name"].astype(str).tolist()
        if regions is None:
            regions, ref_path = table, table_path
        elif names != regions["name"].astype(str).tolist():
            raise InputError(table_path, f"region table differs from {ref_path} (QC-FC needs "
                             "one parcellation for every run)")
        series = read_table(ts)
        if [str(c) for c in series.columns] != names:
            raise InputError(ts, f"columns are not the regions of {table_path.name}")
        x = series.to_numpy(dtype=float)
        with np.errstate(invalid="ignore", divide="ignore"):
            r = np.corrcoef(x.T)
        r[~np.isfinite(r)] = np.nan
        np.fill_diagonal(r, np.nan)
        raw.append(np.arctanh(np.clip(r, -0.999999, 0.999999)) if fisher else r)
        den.append(read_table(rel, index_col=0).to_numpy(dtype=float))
        fd.append(float(row["mean_fd_mm"]))
        runs.append({"subject": sub, "session": ses, "mean_fd_mm": fd[-1]})
        sources += [str(summ), str(rel), str(ts), str(table_path)]
    return {"fd": np.array(fd), "denoised": np.array(den), "raw": np.array(raw), "runs": runs,
            "skipped": skipped, "regions": regions, "sources": sources, "seg": seg, "stat": stat,
            "task": task}


def write_qcfc(writer: DerivativesWriter, config: Config) -> list[Path]:
    """QC-FC before and after denoising; returns the written files (run table last)."""
    import pandas as pd

    from pipeline.func.qcfc import qc_fc

    data = collect_qcfc_inputs(writer.root, config)
    ent = {"datatype": "group", "task": data["task"], "seg": data["seg"], "stat": data["stat"]}
    run_table = pd.DataFrame(
        [{**r, "used": True, "reason": "n/a"} for r in data["runs"]]
        + [{**s, "mean_fd_mm": np.nan, "used": False} for s in data["skipped"]],
        columns=["subject", "session", "mean_fd_mm", "used", "reason"],
    )
    n = len(data["runs"])
    params = {"measure": config.nbs.measure, "n_runs": n, "min_runs": MIN_RUNS,
              "no_denoising": "Pearson correlation of the raw region time series (desc-raw_timeseries), "
                              "all volumes, no confounds, filtering or censoring",
              "denoised": f"the stage's matrices (strategy {config.func.strategy}, "
                          f"scrubbing {config.func.scrubbing})"}
    if n < MIN_RUNS:
        log.warning("group qcfc: %d kept run(s); QC-FC needs at least %d", n, MIN_RUNS)
        meta = writer.provenance(sources=data["sources"], parameters={**params, "tested": False})
        return [writer.write_tsv(run_table, meta=meta, desc="qcfcruns", suffix="bold", **ent)]
    regions = data["regions"]
    names = regions["name"].astype(str).to_numpy()
    coords = regions[["x", "y", "z"]].to_numpy(float) if {"x", "y", "z"} <= set(regions) else None
    res = {k: qc_fc(data["fd"], data[k], coordinates=coords, min_runs=MIN_RUNS)
           for k in ("denoised", "raw")}
    den, raw = res["denoised"], res["raw"]
    edges = pd.DataFrame({"i": den.i, "j": den.j, "name_i": names[den.i], "name_j": names[den.j],
                          "distance_mm": den.distance_mm if coords is not None else np.nan,
                          "n_runs": den.n_runs, "qcfc_r": den.r, "qcfc_p": den.p,
                          "qcfc_p_fdr": den.p_fdr, "raw_qcfc_r": raw.r, "raw_qcfc_p": raw.p,
                          "raw_qcfc_p_fdr": raw.p_fdr})
    summary = {"denoised": den.summary(), "no_denoising": raw.summary()}
    text = (f"QC-FC over {n} runs: median |r| {den.median_abs_r:.3f} after denoising vs "
            f"{raw.median_abs_r:.3f} without; edges with p < 0.05 {100 * den.fraction_significant:.1f} % "
            f"vs {100 * raw.fraction_significant:.1f} % (FDR: {100 * den.fraction_significant_fdr:.1f} % "
            f"vs {100 * raw.fraction_significant_fdr:.1f} %)")
    log.info("group qcfc: %s", text)
    meta = writer.provenance(sources=data["sources"], parameters={**params, "summary": summary},
                             extra={"Description": "QC-FC: correlation across runs of mean FD "
                                    "with edge strength", "Summary": text})
    written = [writer.write_tsv(edges, meta=meta, desc="qcfc", suffix="bold", **ent),
               _figure(writer, den, raw, text, ent)]
    # written last: the Snakemake job's output
    written.append(writer.write_tsv(run_table, meta=meta, desc="qcfcruns", suffix="bold", **ent))
    return written


def _figure(writer, den, raw, title: str, ent) -> Path:
    """QC-FC histograms (denoised vs none) and QC-FC against region distance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    bins = np.linspace(-1, 1, 41)
    for res, label, colour in ((raw, "no denoising", "0.6"), (den, "denoised", "tab:blue")):
        ok = res.testable
        axes[0].hist(res.r[ok], bins=bins, alpha=0.6, color=colour,
                     label=f"{label}: median |r| {res.median_abs_r:.2f}")
        if res.distance_mm is not None:
            step = max(1, int(ok.sum()) // 4000)
            axes[1].scatter(res.distance_mm[ok][::step], res.r[ok][::step], s=2, alpha=0.4,
                            color=colour, label=f"{label}: rho {res.distance_dependence:.2f}")
    axes[0].set_xlabel("QC-FC (r of mean FD with edge strength)")
    axes[0].set_ylabel("edges")
    axes[0].legend(fontsize=7)
    axes[1].set_xlabel("distance between regions (mm)")
    axes[1].set_ylabel("QC-FC r")
    axes[1].axhline(0, color="k", lw=0.5)
    axes[1].legend(fontsize=7, markerscale=4)
    fig.suptitle(title, fontsize=8)
    path = writer.write_figure(fig, desc="qcfc", suffix="bold", **ent)
    plt.close(fig)
    return path
