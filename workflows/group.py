"""Group stage: longitudinal tests of the participant outputs.

``tract_stats`` does the same for the tract stage: the longitudinal tests of
every bundle's mean FA / MD / AD / RD (plain and lesion-masked), and node-wise
paired tests along the profiles (``group.compare`` sessions, sign-flip
permutations with max-t FWE control along each tract), written under
``OUTPUT_DIR/group/`` with the same layout.

``clinical_stats`` runs the same longitudinal tests on the clinical variables of
the BIDS ``sub-<label>_sessions.tsv`` files (every numeric column except the time
column ``sessions.tsv_time_column``, e.g. EDSS), and correlates the change of
each clinical variable between the ``group.compare`` sessions with the percent
change of the imaging measures (NAWM ROI medians, tract means): Spearman, exact
permutation p for up to 8 subjects, BH-FDR across the whole table.

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
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipeline.config import Config
from workflows.derivatives import DerivativesWriter, flagged_sessions

__all__ = [
    "collect_roi_tables", "collect_tract_tables", "read_clinical", "write_clinical_stats",
    "write_dwi_stats", "write_tract_stats",
]

log = logging.getLogger("msmri.group")

#: ROIs and metric shown in the group figures.
FIGURE_ROIS = ("NAWM_L", "NAWM_R")
FIGURE_METRICS = ("fa", "md", "ad", "rd")


def drop_flagged(df, out: Path, config: Config, stage: str,
                 modalities: Sequence[str] = ("anat", "dwi")):
    """Leave out the rows of sessions whose structural results are flagged as implausible
    or whose DWI lost too many volumes (``modalities``, see
    :func:`workflows.derivatives.flagged_sessions`).

    Unless ``group.include_flagged`` is true, rows of flagged sessions (see
    :mod:`pipeline.anat.plausibility`) are removed and returned as exclusions
    ``(subject, session, reason)``, with a warning; with it, they are kept and the
    warning says so.
    """
    import pandas as pd

    flagged = flagged_sessions(out, modalities)
    cols = ["subject", "session", "reason"]
    if df is None or not flagged:
        return df, pd.DataFrame(columns=cols)
    keys = list(zip(df["subject"].astype(str), df["session"].astype(str), strict=True))
    hit = np.array([k in flagged for k in keys], dtype=bool)
    rows = [(sub, ses, reason) for (sub, ses), reason in flagged.items()
            if (sub, ses) in set(keys)]
    for sub, ses, reason in rows:
        if config.group.include_flagged:
            log.warning("group %s: sub-%s %s; kept (group.include_flagged is true)", stage, sub, reason)
        else:
            log.warning("group %s: sub-%s ses-%s excluded: %s", stage, sub, ses, reason)
    if config.group.include_flagged:
        return df, pd.DataFrame(columns=cols)
    return df.loc[~hit].reset_index(drop=True), pd.DataFrame(rows, columns=cols)


def _with_flagged(exclusions, flagged, by: Sequence[str]):
    """The statistics' exclusion table with one row per flagged session left out."""
    import pandas as pd

    if flagged is None or flagged.empty:
        return exclusions
    extra = pd.DataFrame({**{k: "all" for k in by}, "test": "all", "contrast": "all",
                          "subject": flagged["subject"], "reason": flagged["reason"]},
                         index=flagged.index)
    return pd.concat([exclusions, extra[exclusions.columns]], ignore_index=True)


def collect_roi_tables(out: Path):
    """All participant ROI tables of a derivatives folder in one long DataFrame."""
    import pandas as pd

    from workflows.outputs import participant_output

    paths = sorted(Path(out).glob(participant_output("dwi", "*", "*")))
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
    df, flagged = drop_flagged(df, writer.root, config, "dwi_stats")
    order = [s for s in config.sessions.order if s in set(df["session"])]
    unknown = sorted(set(df["session"]) - set(order))
    if unknown:
        log.warning("sessions %s are not in sessions.order and are left out", unknown)
        df = df[df["session"].isin(order)]
    if len(order) < 2:
        log.warning("group dwi_stats: fewer than two sessions of sessions.order in the ROI tables "
                    "(found %s); no longitudinal tests", order)
        return []
    months = [float(config.sessions.months[s]) for s in order]
    compare = tuple(config.group.compare)
    tests = LongitudinalTests(
        order, months, compare=compare if set(compare) <= set(order) else None
    )
    result = tests.fit(df, value="median", by=("roi", "metric"))
    meta = writer.provenance(
        sources=sources,
        parameters=result.parameters,
        seed=config.seed,
        extra={"Description": "longitudinal tests of DTI metrics per ROI (medians of each "
               "subject-session); diffusivities in um^2/ms", "Summary": result.summary()},
    )
    written = [
        writer.write_tsv(result.table, meta=meta, datatype="group", suffix="dwistats", desc="tests"),
        writer.write_tsv(result.summary_table, meta=meta, datatype="group", suffix="dwistats",
                         desc="sessions"),
        writer.write_tsv(_with_flagged(result.exclusions, flagged, ("roi", "metric")), meta=meta,
                         datatype="group", suffix="dwistats", desc="exclusions"),
    ]
    for metric in FIGURE_METRICS:
        for roi in FIGURE_ROIS:
            where = {"roi": roi, "metric": metric}
            for kind, plot in (("spaghetti", spaghetti_plot), ("box", box_plot_by_session)):
                fig = (
                    plot(df, order, where)
                    if kind == "box"
                    else plot(df, order, where, times=months)
                )
                written.append(writer.write_figure(
                    fig, datatype="group", suffix="dwistats",
                    desc=f"{kind}{roi.replace('_', '')}{metric}", extension=".svg"))
                plt.close(fig)
    log.info("group dwi_stats: %d ROI x metric families, %d subjects\n%s",
             df.groupby(["roi", "metric"]).ngroups, df["subject"].nunique(), result.summary())
    return written


#: Sign patterns of the node-wise profile tests (all of them when there are fewer).
PROFILE_PERMUTATIONS = 10_000


def collect_tract_tables(out: Path):
    """All participant tract summaries and profiles: (summary, profiles, source paths)."""
    import pandas as pd

    out = Path(out)
    found = {}
    for suffix in ("tractstats", "tractprofiles"):
        paths = sorted(out.glob(f"sub-*/ses-*/dwi/sub-*_ses-*_space-dwi_model-tensor_{suffix}.tsv"))
        tables = [pd.read_csv(p, sep="\t", dtype={"subject": str, "session": str},
                              keep_default_na=False, na_values="n/a") for p in paths]
        found[suffix] = (pd.concat(tables, ignore_index=True) if tables else None, paths)
    (summary, s_paths), (profiles, p_paths) = found["tractstats"], found["tractprofiles"]
    return summary, profiles, [*s_paths, *p_paths]


def _tract_means_long(summary):
    """One row per (subject, session, bundle, metric, profile) with the tract mean."""
    import pandas as pd

    rows = []
    kurtosis = [m for m in ("mk", "ak", "rk", "kfa") if f"mean_{m}" in summary.columns]
    for metric in (*FIGURE_METRICS, *kurtosis):
        for profile, column in (("plain", f"mean_{metric}"),
                                ("lesion_masked", f"mean_{metric}_lesion_masked")):
            part = summary[["subject", "session", "bundle", column]].rename(
                columns={column: "value"}
            )
            rows.append(part.assign(metric=metric, profile=profile))
    return pd.concat(rows, ignore_index=True)


def write_tract_stats(writer: DerivativesWriter, config: Config) -> list[Path]:
    """Longitudinal tests of tract means and node-wise profile tests; returns the written files."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    from pipeline.stats.longitudinal import LongitudinalTests, profile_plot, profile_tests

    summary, profiles, sources = collect_tract_tables(writer.root)
    if summary is None or profiles is None:
        log.warning("group tract_stats: no tract tables under %s; run the tract stage first",
                    writer.root)
        return []
    summary, flagged = drop_flagged(summary, writer.root, config, "tract_stats")
    profiles, _ = drop_flagged(profiles, writer.root, config, "tract_stats")
    order = [s for s in config.sessions.order if s in set(summary["session"])]
    if len(order) < 2:
        log.warning("group tract_stats: fewer than two sessions of sessions.order in the tract "
                    "tables (found %s); no longitudinal tests", order)
        return []
    months = [float(config.sessions.months[s]) for s in order]
    compare = tuple(config.group.compare)
    means = _tract_means_long(summary)
    tests = LongitudinalTests(
        order, months, compare=compare if set(compare) <= set(order) else None
    )
    result = tests.fit(means, value="value", by=("bundle", "metric", "profile"))
    written: list[Path] = []
    meta = writer.provenance(sources=sources, parameters=result.parameters, seed=config.seed,
                             extra={"Description": "longitudinal tests of tract means (mean of the "
                                    "100-node profile); diffusivities in um^2/ms; bundles that "
                                    "were not found are excluded with their reason",
                                    "Summary": result.summary()})
    exclusions = _with_flagged(result.exclusions, flagged, ("bundle", "metric", "profile"))
    for desc, table in (("tests", result.table), ("sessions", result.summary_table),
                        ("exclusions", exclusions)):
        written.append(writer.write_tsv(table, meta=meta, datatype="group", suffix="tractstats",
                                        desc=desc))
    if not set(compare) <= set(order):
        log.warning("group tract_stats: sessions %s not both present; no profile tests", compare)
        return written
    masked = profiles["lesion_masked"].astype(str).str.lower() == "true"
    for profile, part in (("plain", profiles[~masked]), ("lesionmasked", profiles[masked])):
        res = profile_tests(part, compare, n_permutations=PROFILE_PERMUTATIONS,
                            random_state=config.seed, method="max-t")
        pmeta = writer.provenance(sources=sources, parameters=res.parameters, seed=config.seed,
                                  extra={"Description": f"node-wise paired t of {compare[1]} - "
                                         f"{compare[0]} along each tract profile ({profile}); "
                                         "p_fwe from sign-flip permutations (max-t over nodes)"})
        for desc, table in (("nodes", res.table), ("ranges", res.ranges),
                            ("exclusions", res.exclusions)):
            written.append(writer.write_tsv(table, meta=pmeta, datatype="group",
                                            suffix="tractprofiletests",
                                            desc=f"{profile}{desc.capitalize()}"))
        if profile != "plain":
            continue
        for bundle in sorted(part["bundle"].unique()):
            for metric in FIGURE_METRICS:
                where = {"bundle": bundle, "metric": metric}
                if (
                    part.loc[(part["bundle"] == bundle) & (part["metric"] == metric), "value"]
                    .isna()
                    .all()
                ):
                    continue
                fig = profile_plot(part, list(compare), where, result=res)
                written.append(writer.write_figure(
                    fig, datatype="group", suffix="tractprofiletests",
                    desc=f"{bundle.replace('_', '')}{metric}", extension=".svg"))
                plt.close(fig)
    n_sub = pd.Series(summary["subject"]).nunique()
    log.info("group tract_stats: %d bundles, %d subjects\n%s", summary["bundle"].nunique(), n_sub,
             result.summary())
    return written


#: ROIs whose change is correlated with clinical change (the trial's NAWM endpoints).
ASSOCIATION_ROIS = ("NAWM", "NAWM_L", "NAWM_R")


def read_clinical(bids_dir: Path, time_column: str):
    """Clinical variables of every ``sub-*/sub-*_sessions.tsv`` in the long ROI format.

    Returns ``(long_table, variables, sources)``; ``(None, [], [])`` when there is
    no sessions table or no numeric column besides the time column.
    """
    import pandas as pd

    from pipeline.stats.longitudinal import clinical_to_long

    paths = sorted(Path(bids_dir).glob("sub-*/sub-*_sessions.tsv"))
    tables = []
    for p in paths:
        t = pd.read_csv(p, sep="\t", keep_default_na=False, na_values=["n/a"])
        t.insert(0, "participant_id", p.name.split("_")[0])
        tables.append(t)
    if not tables:
        return None, [], []
    table = pd.concat(tables, ignore_index=True)
    reserved = {time_column, "participant_id", "session_id"}
    variables = [c for c in table.select_dtypes("number").columns if c not in reserved]
    if not variables:
        return None, [], paths
    return clinical_to_long(table, variables), variables, paths


def write_clinical_stats(writer: DerivativesWriter, config: Config, bids_dir: Path) -> list[Path]:
    """Longitudinal tests of the clinical variables and their association with imaging change."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    from pipeline.stats.longitudinal import (
        LongitudinalTests,
        change_scores,
        clinical_association,
        spaghetti_plot,
    )

    clinical, variables, sources = read_clinical(bids_dir, config.sessions.tsv_time_column)
    order = [] if clinical is None else [s for s in config.sessions.order
                                         if s in set(clinical["session"])]
    if clinical is None or len(order) < 2:  # an empty table that says why (the job's output)
        reason = (f"no numeric clinical column in the sessions.tsv files of {bids_dir} (besides "
                  f"{config.sessions.tsv_time_column})" if clinical is None else
                  f"fewer than two sessions of sessions.order {list(config.sessions.order)} "
                  "in the sessions.tsv files")
        log.warning("group clinical_stats: %s", reason)
        meta = writer.provenance(sources=[str(p) for p in sources], seed=config.seed,
                                 parameters={"tested": False, "reason": reason})
        return [writer.write_tsv(pd.DataFrame(columns=["roi", "metric", "test", "p"]), meta=meta,
                                 datatype="group", suffix="clinicalstats", desc="tests")]
    months = [float(config.sessions.months[s]) for s in order]
    compare = tuple(config.group.compare)
    pair = compare if set(compare) <= set(order) else None
    result = LongitudinalTests(order, months, compare=pair).fit(clinical, value="median")
    meta = writer.provenance(sources=[str(p) for p in sources], parameters=result.parameters,
                             seed=config.seed,
                             extra={"Description": f"longitudinal tests of the clinical variables "
                                    f"{variables} (sessions.tsv)", "Summary": result.summary()})
    written = [writer.write_tsv(t, meta=meta, datatype="group", suffix="clinicalstats", desc=d)
               for d, t in (("tests", result.table), ("sessions", result.summary_table),
                            ("exclusions", result.exclusions))]
    for var in variables:
        fig = spaghetti_plot(clinical, order, {"roi": "clinical", "metric": var}, times=months)
        written.append(writer.write_figure(fig, datatype="group", suffix="clinicalstats",
                                           desc="spaghetti" + "".join(c for c in var if c.isalnum()),
                                           extension=".svg"))
        plt.close(fig)
    if pair is None:
        return written
    imaging = []
    rois, roi_sources = collect_roi_tables(writer.root)
    rois, _ = drop_flagged(rois, writer.root, config, "clinical_stats")
    if rois is not None:
        sel = rois[rois["roi"].isin(ASSOCIATION_ROIS)]
        imaging.append(change_scores(sel, pair, value="median", relative=True).assign(
            measure=lambda d: "roi " + d["roi"] + " " + d["metric"]))
    summary, _, tract_sources = collect_tract_tables(writer.root)
    summary, _ = drop_flagged(summary, writer.root, config, "clinical_stats")
    if summary is not None:
        means = _tract_means_long(summary)
        means = means[means["profile"] == "plain"]
        imaging.append(change_scores(means, pair, value="value", by=("bundle", "metric"),
                                     relative=True).assign(
            measure=lambda d: "tract " + d["bundle"] + " " + d["metric"]))
    if not imaging:
        log.warning("group clinical_stats: no ROI or tract tables; no imaging association")
        return written
    img = pd.concat(imaging, ignore_index=True)[["subject", "measure", "change"]]
    cli = change_scores(clinical, pair, value="median")[["subject", "metric", "change"]]
    assoc = clinical_association(img, cli)
    ameta = writer.provenance(
        sources=[*map(str, sources), *map(str, roi_sources), *map(str, tract_sources)],
        parameters={"compare": list(pair), "imaging_change": "percent change ses-b vs ses-a",
                    "clinical_change": "difference ses-b - ses-a", "method": "spearman",
                    "exact": "all n! orderings when n <= 8", "fdr": "Benjamini-Hochberg over "
                    "every (imaging, clinical) pair of the table"},
        seed=config.seed,
        extra={"Description": "correlation of imaging change with clinical change across subjects"},
    )
    written.append(writer.write_tsv(assoc, meta=ameta, datatype="group", suffix="clinicalstats",
                                    desc="association"))
    return written
