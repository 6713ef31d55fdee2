"""Group stage: longitudinal tests of the participant outputs.

``dwi_stats`` gathers every subject-session's ROI table
(``..._space-dwi_model-tensor_roistats.tsv``), runs
:class:`pipeline.stats.longitudinal.LongitudinalTests` over the configured
sessions and writes, under ``OUTPUT_DIR/group/dwi/``: the test table, the
per-session medians and IQR (the table clinicians read), the exclusions with
their reasons, a JSON record of every parameter and the FDR statement, and
figures (spaghetti and box plots of the ROI medians by session).
"""

from __future__ import annotations

import logging
from pathlib import Path

from pipeline.config import Config
from workflows.derivatives import DerivativesWriter

__all__ = ["collect_roi_tables", "write_dwi_stats"]

log = logging.getLogger("msmri.group")

#: ROIs and metric shown in the group figures.
FIGURE_ROIS = ("NAWM_L", "NAWM_R")
FIGURE_METRICS = ("fa", "md", "ad", "rd")


def collect_roi_tables(out: Path):
    """All participant ROI tables of a derivatives folder in one long DataFrame."""
    import pandas as pd

    paths = sorted(Path(out).glob("sub-*/ses-*/dwi/sub-*_ses-*_space-dwi_model-tensor_roistats.tsv"))
    if not paths:
        return None, []
    tables = [pd.read_csv(p, sep="\t", dtype={"subject": str, "session": str}) for p in paths]
    return pd.concat(tables, ignore_index=True), paths


def write_dwi_stats(writer: DerivativesWriter, config: Config) -> list[Path]:
    """Longitudinal tests of the DTI ROI metrics; returns the written files."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pipeline.stats.longitudinal import (
        LongitudinalTests,
        box_plot_by_session,
        spaghetti_plot,
    )

    df, sources = collect_roi_tables(writer.root)
    if df is None:
        log.warning("group dwi_stats: no ROI tables under %s; run the dwi stage first", writer.root)
        return []
    order = [s for s in config.sessions.order if s in set(df["session"])]
    unknown = sorted(set(df["session"]) - set(order))
    if unknown:
        log.warning("sessions %s are not in sessions.order and are left out", unknown)
        df = df[df["session"].isin(order)]
    months = [float(config.sessions.months[s]) for s in order]
    compare = tuple(config.group.compare)
    tests = LongitudinalTests(order, months, compare=compare if set(compare) <= set(order) else None)
    result = tests.fit(df, value="median", by=("roi", "metric"))
    meta = writer.provenance(
        sources=sources,
        parameters=result.parameters,
        seed=config.seed,
        extra={"Description": "longitudinal tests of DTI metrics per ROI (medians of each "
               "subject-session); diffusivities in um^2/ms", "Summary": result.summary()},
    )  # fmt: skip
    written = [
        writer.write_tsv(result.table, meta=meta, datatype="group", suffix="dwistats", desc="tests"),
        writer.write_tsv(result.summary_table, meta=meta, datatype="group", suffix="dwistats",
                         desc="sessions"),
        writer.write_tsv(result.exclusions, meta=meta, datatype="group", suffix="dwistats",
                         desc="exclusions"),
    ]  # fmt: skip
    for metric in FIGURE_METRICS:
        for roi in FIGURE_ROIS:
            where = {"roi": roi, "metric": metric}
            for kind, plot in (("spaghetti", spaghetti_plot), ("box", box_plot_by_session)):
                fig = plot(df, order, where) if kind == "box" else plot(df, order, where, times=months)
                written.append(writer.write_figure(
                    fig, datatype="group", suffix="dwistats",
                    desc=f"{kind}{roi.replace('_', '')}{metric}", extension=".svg"))  # fmt: skip
                plt.close(fig)
    log.info("group dwi_stats: %d ROI x metric families, %d subjects\n%s",
             df.groupby(["roi", "metric"]).ngroups, df["subject"].nunique(), result.summary())  # fmt: skip
    return written
