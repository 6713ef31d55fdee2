"""Group stage ``nbs``: network-based statistic on the resting-state matrices.

Reads every subject's matrices of the configured measure (``nbs.measure``) and
parcellation (``func.atlas``) for the two sessions of ``group.compare``, checks
that all of them come with the same region table, and fits
:class:`pipeline.stats.nbs.NetworkBasedStatistic` (paired design: follow-up
minus baseline, sign flips). A subject without a usable matrix in one of the two
sessions (run excluded, stage not run) is excluded with its reason; regions that
are NaN in any input are excluded from every subject and reported.

Outputs under ``OUTPUT_DIR/group/`` (entities ``task``, ``seg``, ``stat``):
``desc-edges_nbs.tsv`` (every component edge with labels, MNI coordinates and t),
``desc-components_nbs.tsv`` (size, FWE p, significance), ``desc-null_nbs.tsv``
(largest component per relabelling, identity first), ``desc-exclusions_nbs.tsv``,
one GraphML per component (networkx), a JSON sidecar with every parameter, the
number of relabellings, exactness, seed and smallest attainable p, and figures of
the shown component (adjacency matrix, circular plot, glass-brain connectome).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import Config
from workflows.derivatives import DerivativesWriter, build_path, flagged_sessions

__all__ = ["collect_nbs_inputs", "read_table", "write_nbs"]

log = logging.getLogger("msmri.group")

#: Column descriptions of ``desc-power_nbs.tsv``.
POWER_COLUMNS = {
    "n_subjects": {"Description": "simulated subjects with both sessions"},
    "threshold": {"Description": "primary threshold as configured (t, or one-sided p)"},
    "threshold_t": {"Description": "t threshold applied at this number of subjects"},
    "effect": {"Description": "planted change per planted edge, standardised (mean change / "
                              "SD of the change, Cohen's d_z)"},
    "n_repetitions": {"Description": "simulated studies"},
    "detection": {"Description": "proportion of simulated studies with a significant component "
                                 "containing a planted edge"},
    "recall": {"Description": "mean fraction of planted edges inside significant components"},
    "precision": {"Description": "mean fraction of significant-component edges that are planted "
                                 "(studies with a significant component)"},
    "false_positive": {"Description": "proportion of studies with a significant component "
                                      "containing no planted edge (effect 0: family-wise error "
                                      "rate)"},
    "n_permutations": {"Description": "relabellings per simulated NBS"},
    "exact": {"Description": "all distinct sign patterns enumerated"},
}
for _name in ("detection", "recall", "precision", "false_positive"):
    POWER_COLUMNS[f"{_name}_se"] = {"Description": f"Monte Carlo standard error of {_name}"}

#: Components written as GraphML (largest first); the rest are in the edge table.
MAX_GRAPHML = 20


def read_table(path: Path, **kw):
    """A derivatives TSV with ``n/a`` as the only missing-value marker."""
    import pandas as pd

    return pd.read_csv(path, sep="\t", keep_default_na=False, na_values=["n/a"], **kw)


def collect_nbs_inputs(out: Path, config: Config) -> dict[str, Any]:
    """Matrices of both compared sessions, the region table and the exclusions.

    Returns a dict with ``baseline`` / ``followup`` ``(n, R, R)`` arrays, ``subjects``,
    ``regions`` (DataFrame), ``sources`` (paths), ``exclusions`` (list of dicts),
    ``seg`` and ``stat``. Raises :class:`~pipeline.errors.InputError` naming the
    file whose region table differs from the first one's.
    """
    from pipeline.errors import InputError
    from workflows.outputs import MEASURE_STATS, seg_name

    out = Path(out)
    a, b = config.group.compare
    seg = seg_name(config.func.atlas, config.func.atlas_labels)
    stat = MEASURE_STATS[config.nbs.measure][1]
    task = config.bids.bold_task

    def path(sub, ses, **ent):
        return build_path(out, datatype="func", sub=sub, ses=ses, task=task, **ent)

    subjects = sorted({p.parent.parent.name[4:] for ses in (a, b)
                       for p in out.glob(f"sub-*/ses-{ses}/func")})
    regions = ref_path = None
    mats: dict[str, list[np.ndarray]] = {a: [], b: []}
    used, sources, exclusions = [], [], []
    nan_by_node: dict[int, list[str]] = {}
    flagged = {} if config.group.include_flagged else flagged_sessions(out, ("anat", "func"))
    for sub in subjects:
        found, reason = {}, None
        for ses in (a, b):
            if (sub, ses) in flagged:
                reason = flagged[(sub, ses)]
                break
            rel = path(sub, ses, seg=seg, stat=stat, suffix="relmat", extension=".tsv")
            if rel.exists():
                found[ses] = rel
                continue
            summ = path(sub, ses, desc="summary", suffix="bold", extension=".tsv")
            row = read_table(summ).iloc[0] if summ.exists() else None
            if row is not None and int(row["excluded"]):
                reason = f"ses-{ses} run excluded: {row['exclusion_reason']}"
            else:
                reason = (f"no {stat} matrix for ses-{ses} ({rel.name} missing: the func stage "
                          "did not run or failed, or func.measures does not include "
                          f"{config.nbs.measure})")
            break
        if reason:
            exclusions.append({"subject": sub, "reason": reason})
            log.warning("group nbs: sub-%s excluded: %s", sub, reason)
            continue
        loaded = {}
        for ses, rel in found.items():
            table_path = path(sub, ses, seg=seg, suffix="dseg", extension=".tsv")
            if not table_path.exists():
                raise InputError(table_path, f"region table of {rel.name} is missing")
            table = read_table(table_path)
            names = table["name"].astype(str).tolist()
            if regions is None:
                regions, ref_path = table, table_path
            elif names != regions["name"].astype(str).tolist():
                raise InputError(table_path, f"region table differs from {ref_path} (the matrices "
                                 "of all subjects and sessions must share one parcellation)")
            m = read_table(rel, index_col=0)
            if [str(c) for c in m.columns] != names or [str(i) for i in m.index] != names:
                raise InputError(
                    rel, f"row / column labels do not match the region table {table_path.name}"
                )
            loaded[ses] = (m.to_numpy(dtype=float), rel, table_path)
        empty = [ses for ses, (arr, _, _) in loaded.items()
                 if np.isnan(arr[~np.eye(arr.shape[0], dtype=bool)]).all()]
        if empty:  # would remove every node for every subject: leave the subject out
            reason = (f"ses-{empty[0]} matrix {loaded[empty[0]][1].name} is NaN everywhere "
                      "(no valid region: check that run's coverage / func stage)")
            exclusions.append({"subject": sub, "reason": reason})
            log.warning("group nbs: sub-%s excluded: %s", sub, reason)
            continue
        for ses, (arr, rel, table_path) in loaded.items():
            mats[ses].append(arr)
            sources += [str(rel), str(table_path)]
            for k in np.flatnonzero(np.isnan(arr).any(axis=1)):
                nan_by_node.setdefault(int(k), []).append(f"sub-{sub} ses-{ses}")
        used.append(sub)
    return {"baseline": np.array(mats[a]), "followup": np.array(mats[b]), "subjects": used,
            "regions": regions, "sources": sources, "exclusions": exclusions, "seg": seg,
            "stat": stat, "task": task, "nan_by_node": nan_by_node}


def write_nbs(writer: DerivativesWriter, config: Config) -> list[Path]:
    """Fit the NBS on ``group.compare`` and write its tables, graphs and figures."""
    import pandas as pd

    from pipeline.stats.nbs import NetworkBasedStatistic

    data = collect_nbs_inputs(writer.root, config)
    a, b = config.group.compare
    n = len(data["subjects"])
    ent = {"datatype": "group", "task": data["task"], "seg": data["seg"], "stat": data["stat"]}
    excl = pd.DataFrame(data["exclusions"], columns=["subject", "reason"])
    if n < 2:  # the exclusion table is still written: it is the job's output and says why
        log.warning("group nbs: %d subject(s) with matrices for both %s and %s; nothing to test",
                    n, a, b)
        meta = writer.provenance(sources=data["sources"], seed=config.seed, parameters={
            "compare": [a, b], "n_subjects": n, "tested": False,
            "reason": f"fewer than 2 subjects with matrices for both ses-{a} and ses-{b}"})
        return [writer.write_tsv(excl, meta=meta, desc="exclusions", suffix="nbs", **ent)]
    c = config.nbs
    nbs = NetworkBasedStatistic(c.threshold, threshold_type=c.threshold_type, size=c.size,
                                alternative=c.alternative, n_permutations=c.n_permutations,
                                random_state=config.seed)
    regions = data["regions"]
    names = regions["name"].astype(str).tolist()
    res = nbs.fit_paired(data["baseline"], data["followup"], node_labels=names)
    log.info("group nbs, %s - %s, %d subjects\n%s", b, a, n, res.summary(c.alpha))
    coords = regions[["x", "y", "z"]].to_numpy(float) if {"x", "y", "z"} <= set(regions) else None

    edges = res.to_frame()
    if coords is not None and len(edges):
        for end in ("i", "j"):
            for k, axis in enumerate("xyz"):
                edges[f"{axis}_{end}"] = coords[edges[end].to_numpy(), k]
    edges["significant"] = edges["p_fwe"] < c.alpha
    comps = pd.DataFrame([{"component": k, "contrast": comp.contrast,
                           "sign": "follow-up > baseline" if comp.sign > 0 else "follow-up < baseline",
                           "n_edges": comp.n_edges, "n_nodes": int(comp.nodes.size),
                           "size": comp.size, "p_fwe": comp.p_fwe, "significant": comp.p_fwe < c.alpha}
                          for k, comp in enumerate(res.components)],
                         columns=["component", "contrast", "sign", "n_edges", "n_nodes", "size",
                                  "p_fwe", "significant"])
    null = pd.DataFrame({"relabelling": np.arange(res.n_permutations),
                         "identity": np.arange(res.n_permutations) == 0,
                         "max_component_size": res.null_distribution})
    params = {
        "nbs": c.model_dump(mode="json"), "compare": [a, b], "design": "paired, "
        f"ses-{b} minus ses-{a}, sign flips", "subjects": data["subjects"],
        "n_permutations": res.n_permutations, "n_distinct_available": res.n_distinct_available,
        "exact": res.exact, "min_attainable_p": res.min_attainable_p, "seed": res.seed,
        "threshold_t": res.threshold_t, "df": res.df,
        "excluded_nodes": [{"index": int(k), "name": names[k],
                            "reason": "NaN in the matrices of "
                            + ", ".join(data["nan_by_node"].get(int(k), ["an input"]))}
                           for k in res.excluded_nodes],
        "degenerate_edges": [{"node_1": names[i], "node_2": names[j],
                              "reason": "no residual variance (the same change in every subject)"}
                             for i, j in res.degenerate_edges],
        "exclusions": data["exclusions"],
    }
    power, params["power"] = _power(data, config, n_used_nodes=len(names) - len(res.excluded_nodes))
    meta = writer.provenance(sources=data["sources"], parameters=params, seed=config.seed,
                             extra={"Description": f"network-based statistic, ses-{b} vs ses-{a}",
                                    "Summary": res.summary(c.alpha)})
    written = [writer.write_tsv(t, meta=meta, desc=d, suffix="nbs", **ent)
               for d, t in (("edges", edges), ("components", comps), ("null", null))]
    order = sorted(range(len(res.components)), key=lambda k: -res.components[k].size)
    for k in order[:MAX_GRAPHML]:
        graph = res.component_graph(k)
        if coords is not None:
            for node in graph.nodes:
                graph.nodes[node].update(x=float(coords[node, 0]), y=float(coords[node, 1]),
                                         z=float(coords[node, 2]))
        written.append(writer.write_with(lambda p, g=graph: _graphml(g, p), meta=meta,
                                         desc=f"component{k}", suffix="nbs", extension=".graphml",
                                         **ent))
    if order:
        written += _figures(writer, res, order[0], names, coords, regions, ent, c.alpha)
    if power is not None:
        written += _write_power(writer, power, data, config, ent)
    # written last: the Snakemake job's output, present only when everything else is
    written.append(writer.write_tsv(excl, meta=meta, desc="exclusions", suffix="nbs", **ent))
    return written


def _power(data: dict[str, Any], config: Config, n_used_nodes: int):
    """Run the NBS power analysis on the study's own change noise (``nbs.power_*``).

    Returns ``(PowerResult or None, status dict for the NBS sidecar)``.
    """
    from pipeline.stats.nbs_power import ChangeNoise, nbs_power

    c = config.nbs
    if c.power_repetitions == 0:
        return None, {"run": False, "reason": "nbs.power_repetitions is 0"}
    n = len(data["subjects"])
    if n < 3:
        reason = f"the change noise needs >= 3 subjects with both sessions, {n} available"
        log.warning("group nbs: power analysis not run: %s", reason)
        return None, {"run": False, "reason": reason}
    regions, edges, notes = c.power_regions, c.power_edges, []
    if regions > n_used_nodes:
        regions = n_used_nodes
        edges = min(max(edges, regions - 1), regions * (regions - 1) // 2)
        notes.append(f"nbs.power_regions {c.power_regions} exceeds the {n_used_nodes} usable "
                     f"regions: subnetwork of {regions} regions and {edges} edges simulated")
        log.warning("group nbs: power analysis: %s", notes[-1])
    measure = c.measure if c.measure in ("correlation", "fisher_z") else None
    noise = ChangeNoise.from_paired(data["baseline"], data["followup"], measure=measure)
    power = nbs_power(
        noise, n_subjects=c.power_n_subjects, effects=c.power_effects,
        thresholds=c.power_thresholds or (c.threshold,), threshold_type=c.threshold_type,
        n_regions=regions, n_edges=edges, alternative=c.alternative, size=c.size,
        noise_model=c.power_noise, n_repetitions=c.power_repetitions,
        n_permutations=c.power_permutations, alpha=c.alpha, random_state=config.seed,
    )
    power.parameters["notes"] = notes
    log.info("group nbs: power analysis (%s noise, %d simulated studies per cell, %.0f s)\n%s",
             c.power_noise, c.power_repetitions, power.parameters["elapsed_s"],
             power.table.to_string(index=False))
    return power, {"run": True, "elapsed_s": power.parameters["elapsed_s"], "notes": notes}


def _write_power(writer: DerivativesWriter, power, data, config: Config, ent) -> list[Path]:
    """``desc-power_nbs.tsv`` with its sidecar and the power figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pipeline.report.figures import plot_nbs_power

    p = power.parameters
    sub = p["subnetwork"]
    text = (f"NBS power by simulation: a random connected subnetwork of {sub['n_regions']} regions "
            f"and {sub['n_edges']} edges planted in this study's change noise ({p['noise_model']} "
            f"model, estimated from {p['noise_estimated_from_subjects']} subjects), "
            f"{p['n_repetitions']} simulated studies per cell; detection = a significant component "
            f"(FWE p < {p['alpha']}) contains a planted edge; recall / precision of the planted "
            "edges in significant components; false_positive = a significant component without "
            "planted edges (at effect 0 the family-wise error rate)")
    meta = writer.provenance(sources=data["sources"], parameters=p, seed=config.seed,
                             extra={"Description": text})
    out = [writer.write_tsv(power.table, meta=meta, columns=POWER_COLUMNS, desc="power",
                            suffix="nbs", **ent)]
    title = (f"NBS power: {sub['n_regions']}-region / {sub['n_edges']}-edge subnetwork, "
             f"{p['alternative']}, {p['noise_model']} noise; bars: 95 % Monte Carlo interval")
    fig = plot_nbs_power(power.table, threshold_type=p["threshold_type"], title=title)
    out.append(writer.write_figure(fig, desc="power", suffix="nbs", **ent))
    plt.close(fig)
    return out


def _graphml(graph, path: Path) -> list[Path]:
    import networkx as nx

    nx.write_graphml(graph, path)
    return [Path(path)]


def _figures(writer, res, k: int, names, coords, regions, ent, alpha) -> list[Path]:
    """Adjacency matrix, circular plot and glass brain of component ``k``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    comp = res.components[k]
    nodes = comp.nodes
    sub = np.zeros((nodes.size, nodes.size))
    pos = {int(n): i for i, n in enumerate(nodes)}
    for i, j, t in zip(comp.i, comp.j, comp.statistic, strict=True):
        sub[pos[int(i)], pos[int(j)]] = sub[pos[int(j)], pos[int(i)]] = t
    label = [names[n] for n in nodes]
    title = (f"NBS component {k}: {comp.n_edges} edges, p_FWE = {comp.p_fwe:.3g}"
             f"{' (significant)' if comp.p_fwe < alpha else ''}; "
             f"{'exact' if res.exact else 'Monte Carlo'}, min attainable p {res.min_attainable_p:.3g}")
    out = []
    lim = float(np.abs(sub).max()) or 1.0
    fig, ax = plt.subplots(figsize=(6, 5))
    im = ax.imshow(sub, cmap="RdBu_r", vmin=-lim, vmax=lim)
    ax.set_xticks(range(nodes.size), label, rotation=90, fontsize=6)
    ax.set_yticks(range(nodes.size), label, fontsize=6)
    fig.colorbar(im, ax=ax, label="t")
    ax.set_title(title, fontsize=8)
    out.append(writer.write_figure(fig, desc="adjacency", suffix="nbs", **ent))
    plt.close(fig)
    # circular plot: nodes ordered by network (if known) then index, edges coloured by t
    network = (regions["network"].astype(str).to_numpy()[nodes] if "network" in regions
               else np.array([""] * nodes.size))
    ordr = np.lexsort((nodes, network))
    ang = np.linspace(0, 2 * np.pi, nodes.size, endpoint=False)
    xy = {int(nodes[o]): (np.cos(a), np.sin(a)) for o, a in zip(ordr, ang, strict=True)}
    fig, ax = plt.subplots(figsize=(6, 6))
    cmap = plt.get_cmap("RdBu_r")
    for i, j, t in zip(comp.i, comp.j, comp.statistic, strict=True):
        (x0, y0), (x1, y1) = xy[int(i)], xy[int(j)]
        ax.plot([x0, x1], [y0, y1], color=cmap(0.5 + 0.5 * t / lim), lw=1.5)
    for o in ordr:
        x, y = xy[int(nodes[o])]
        ax.scatter(x, y, s=30, color="k", zorder=3)
        ax.text(1.08 * x, 1.08 * y, f"{label[o]}" + (f" ({network[o]})" if network[o] else ""),
                fontsize=6, ha="left" if x >= 0 else "right", va="center")
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title(title, fontsize=8)
    out.append(writer.write_figure(fig, desc="circle", suffix="nbs", **ent))
    plt.close(fig)
    if coords is not None:
        from nilearn import plotting

        fig = plt.figure(figsize=(9, 3))
        display = plotting.plot_connectome(sub, coords[nodes], figure=fig, display_mode="lzr",
                                           edge_cmap="RdBu_r", edge_vmin=-lim, edge_vmax=lim,
                                           node_size=12, title=title[:80])
        out.append(writer.write_figure(fig, desc="glassbrain", suffix="nbs", **ent))
        display.close()
        plt.close(fig)
    return out
