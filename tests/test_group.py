"""Group stage: longitudinal tests of the participant ROI tables through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from workflows.cli import main

SESSIONS = {"baseline": 0.0, "m03": 3.0, "m06": 6.0}
ROIS = ("NAWM", "NAWM_L", "NAWM_R", "WM", "lesion", "perilesion")
BASE = {"fa": 0.55, "md": 0.80, "ad": 1.38, "rd": 0.52}


def _write_roi_tables(out, rng, n_subjects=5, missing=()):
    """ROI tables as the dwi stage writes them; left-NAWM RD falls 3 % at m03, 6 % at m06."""
    for s in range(1, n_subjects + 1):
        sub = f"{s:02d}"
        subject_effect = {m: rng.normal(0, 0.03) for m in BASE}
        for ses, months in SESSIONS.items():
            if (sub, ses) in missing:
                continue
            rows = []
            for roi in ROIS:
                for metric, value in BASE.items():
                    v = value * (1 + subject_effect[metric]) * (1 + rng.normal(0, 0.002))
                    if metric == "rd" and roi in ("NAWM_L", "NAWM"):
                        v *= 1 - (0.01 if roi == "NAWM_L" else 0.005) * months
                    rows.append({"subject": sub, "session": ses, "roi": roi, "metric": metric,
                                 "units": "um^2/ms", "n_voxels": 500, "mean": v, "median": v,
                                 "sd": 0.1, "lesion_loss_fraction": np.nan})
            folder = out / f"sub-{sub}/ses-{ses}/dwi"
            folder.mkdir(parents=True)
            pd.DataFrame(rows).to_csv(folder / f"sub-{sub}_ses-{ses}_space-dwi_model-tensor_roistats.tsv",
                                      sep="\t", index=False, na_rep="n/a")


def test_group_dwi_stats_finds_the_planted_change_and_states_its_limits(tiny_bids, tmp_path):
    out = tmp_path / "out"
    _write_roi_tables(out, np.random.default_rng(4), missing={("05", "m06")})
    assert main([str(tiny_bids), str(out), "group", "--stages", "dwi_stats"]) == 0
    tests = pd.read_csv(out / "group/desc-tests_dwistats.tsv", sep="\t")
    lmm = tests[tests["test"] == "lmm"]
    hits = lmm[lmm["p_fdr"] < 0.05]
    assert {"NAWM_L/rd"} <= set(hits["roi"] + "/" + hits["metric"]) <= {"NAWM_L/rd", "NAWM/rd"}
    wil = tests[
        (tests["test"] == "wilcoxon") & (tests["roi"] == "NAWM_L") & (tests["metric"] == "rd")
    ]
    # four complete pairs: exact Wilcoxon cannot go below 2/16 two-sided, and the table says so
    assert (
        wil["min_p"].item() == 0.125
        and wil["p"].item() == 0.125
        and not wil["can_reach_alpha"].item()
    )
    excl = pd.read_csv(out / "group/desc-exclusions_dwistats.tsv", sep="\t", dtype={"subject": str})
    assert "05" in set(excl["subject"])
    meta = json.loads((out / "group/desc-tests_dwistats.json").read_text())
    assert "Benjamini-Hochberg" in meta["Parameters"]["fdr_statement"]
    assert len(meta["Sources"]) == 14
    assert (out / "group/desc-spaghettiNAWMLrd_dwistats.svg").exists()


def test_group_dwi_stats_without_tables_is_a_warning_not_a_crash(tiny_bids, tmp_path, caplog):
    assert main([str(tiny_bids), str(tmp_path / "out"), "group", "--stages", "dwi_stats"]) == 0
    assert "no ROI tables" in caplog.text


BUNDLE_BASE = {"fa": 0.60, "md": 0.80, "ad": 1.40, "rd": 0.50}


def _write_tract_tables(out, rng, n_subjects=6, lost=()):
    """Tract tables as the tract stage writes them; CST_L RD falls 8 % at nodes 40-60 by m06."""
    nodes = np.arange(1, 101)
    shape = 1 + 0.1 * np.sin(nodes / 100 * np.pi)
    for s in range(1, n_subjects + 1):
        sub = f"{s:02d}"
        offset = {m: rng.normal(0, 0.03) for m in BUNDLE_BASE}
        for ses, months in SESSIONS.items():
            prof_rows, summ_rows = [], []
            for bundle in ("CST_L", "CST_R", "CC"):
                found = (sub, ses, bundle) not in lost
                summ = {"subject": sub, "session": ses, "bundle": bundle,
                        "status": "ok" if found else "not_found",
                        "reason": "" if found else "no streamline matched the bundle's ROIs",
                        "n_recognised": 100 * found, "n_streamlines": 90 * found,
                        "lesion_node_fraction": 0.0 if found else np.nan}
                for metric, base in BUNDLE_BASE.items():
                    prof = base * shape * (1 + offset[metric]) * (1 + rng.normal(0, 0.004, 100))
                    if bundle == "CST_L" and metric == "rd":
                        prof = prof * np.where(
                            (nodes >= 40) & (nodes <= 60), 1 - 0.08 * months / 6, 1
                        )
                    if not found:
                        prof = np.full(100, np.nan)
                    for masked in (False, True):
                        prof_rows += [{"subject": sub, "session": ses, "bundle": bundle, "node": n,
                                       "metric": metric, "value": v, "lesion_masked": masked}
                                      for n, v in zip(nodes, prof, strict=True)]
                        summ[f"mean_{metric}" + ("_lesion_masked" if masked else "")] = np.mean(
                            prof
                        )
                summ_rows.append(summ)
            folder = out / f"sub-{sub}/ses-{ses}/dwi"
            folder.mkdir(parents=True, exist_ok=True)
            stem = folder / f"sub-{sub}_ses-{ses}_space-dwi_model-tensor"
            pd.DataFrame(prof_rows).to_csv(
                f"{stem}_tractprofiles.tsv", sep="\t", index=False, na_rep="n/a"
            )
            pd.DataFrame(summ_rows).to_csv(
                f"{stem}_tractstats.tsv", sep="\t", index=False, na_rep="n/a"
            )


def test_group_tract_stats_localises_the_planted_profile_change(tiny_bids, tmp_path):
    out = tmp_path / "out"
    _write_tract_tables(out, np.random.default_rng(7), lost={("03", "m06", "CC")})
    assert main([str(tiny_bids), str(out), "group", "--stages", "tract_stats"]) == 0
    nodes = pd.read_csv(out / "group/desc-plainNodes_tractprofiletests.tsv", sep="\t")
    hit = nodes[nodes["significant"].astype(bool)]
    # only CST_L RD, only inside the planted range (max-t FWE along the tract)
    assert set(zip(hit["bundle"], hit["metric"], strict=True)) == {("CST_L", "rd")}
    assert hit["node"].between(40, 60).all() and len(hit) >= 15
    assert (hit["mean_difference"] < 0).all()
    ranges = pd.read_csv(out / "group/desc-plainRanges_tractprofiletests.tsv", sep="\t")
    assert (
        len(ranges) == 1 and ranges["start_node"].item() >= 40 and ranges["stop_node"].item() <= 60
    )
    # 6 subjects: 64 sign patterns, enumerated exactly; the missing CC is an exclusion with its reason
    meta = json.loads((out / "group/desc-plainNodes_tractprofiletests.json").read_text())
    assert "64" in json.dumps(meta["Parameters"])
    excl = pd.read_csv(
        out / "group/desc-plainExclusions_tractprofiletests.tsv", sep="\t", dtype={"subject": str}
    )
    assert set(excl.loc[excl["bundle"] == "CC", "subject"]) == {"03"}
    tests = pd.read_csv(out / "group/desc-tests_tractstats.tsv", sep="\t")
    lmm = tests[(tests["test"] == "lmm") & (tests["profile"] == "plain")]
    cst_rd = lmm[(lmm["bundle"] == "CST_L") & (lmm["metric"] == "rd")]
    assert cst_rd["p"].item() < 0.05 and cst_rd["estimate"].item() < 0
    assert (out / "group/desc-CSTLrd_tractprofiletests.svg").exists()


def test_group_tract_stats_without_tables_is_a_warning_not_a_crash(tiny_bids, tmp_path):
    assert main([str(tiny_bids), str(tmp_path / "out"), "group", "--stages", "tract_stats"]) == 0
    assert not (tmp_path / "out/group/desc-tests_tractstats.tsv").exists()


def _write_func_outputs(out, rng, n_subjects=6, planted=6, n_regions=20, excluded=(), rename=None):
    """Fisher-z matrices and region tables as the func stage writes them (default atlas name).

    All edges among the first ``planted`` regions rise by 0.5 at m06; ``excluded``
    subjects have their m06 run excluded (summary only, no matrix).
    """
    from workflows.func import seg_name

    seg = seg_name("seitzman", None)
    names = [f"R{k:02d}" for k in range(n_regions)]
    table = pd.DataFrame({"index": range(1, n_regions + 1), "name": names,
                          "x": rng.uniform(-60, 60, n_regions), "y": rng.uniform(-90, 60, n_regions),
                          "z": rng.uniform(-30, 70, n_regions), "network": ["DMN"] * 10 + ["SMN"] * 10,
                          "coverage": 1.0, "valid": 1})
    for s in range(1, n_subjects + 1):
        sub = f"{s:02d}"
        base = rng.normal(0.3, 0.1, (n_regions, n_regions))
        for ses in ("baseline", "m06"):
            folder = out / f"sub-{sub}/ses-{ses}/func"
            folder.mkdir(parents=True, exist_ok=True)
            stem = folder / f"sub-{sub}_ses-{ses}_task-rest"
            skip = ses == "m06" and sub in excluded
            pd.DataFrame([{"subject": sub, "session": ses, "excluded": int(skip),
                           "exclusion_reason": "only 150 s left after censoring (< 240 s)" if skip else ""}]
                         ).to_csv(f"{stem}_desc-summary_bold.tsv", sep="\t", index=False)
            if skip:
                continue
            m = base + rng.normal(0, 0.1, base.shape)
            if ses == "m06":
                m[:planted, :planted] += 0.5
            m = (m + m.T) / 2
            np.fill_diagonal(m, 0.0)
            t = table.copy()
            if rename is not None and (sub, ses) == rename:
                t.loc[3, "name"] = "renamed"
            t.to_csv(f"{stem}_seg-{seg}_dseg.tsv", sep="\t", index=False)
            pd.DataFrame(m, index=t["name"], columns=t["name"]).to_csv(
                f"{stem}_seg-{seg}_stat-fisherz_relmat.tsv", sep="\t"
            )
    return seg


def test_group_nbs_finds_the_planted_component_and_states_exactness(tiny_bids, tmp_path):
    out = tmp_path / "out"
    seg = _write_func_outputs(out, np.random.default_rng(3), n_subjects=7, excluded={"07"})
    assert main([str(tiny_bids), str(out), "group", "--stages", "nbs"]) == 0
    stem = out / f"group/task-rest_seg-{seg}_stat-fisherz"
    edges = pd.read_csv(f"{stem}_desc-edges_nbs.tsv", sep="\t")
    sig = edges[edges["significant"]]
    found = {frozenset((i, j)) for i, j in zip(sig["i"], sig["j"], strict=True)}
    planted = {frozenset((i, j)) for i in range(6) for j in range(i + 1, 6)}
    precision, recall = (
        len(found & planted) / max(len(found), 1),
        len(found & planted) / len(planted),
    )
    print(f"NBS precision {precision:.2f} recall {recall:.2f}")
    assert precision >= 0.8 and recall >= 0.8
    assert (sig["statistic"] > 0).all() and {"label_i", "x_i", "z_j"} <= set(edges.columns)
    comps = pd.read_csv(f"{stem}_desc-components_nbs.tsv", sep="\t")
    assert comps["significant"].sum() == 1
    meta = json.loads(Path(f"{stem}_desc-edges_nbs.json").read_text())["Parameters"]
    # 6 usable subjects: 64 sign patterns, all enumerated; two-sided min p = 2/64
    assert meta["exact"] and meta["n_distinct_available"] == 64
    assert meta["min_attainable_p"] == pytest.approx(2 / 64)
    from pipeline.config import load_config

    assert meta["seed"] == load_config([]).seed
    assert meta["subjects"] == ["01", "02", "03", "04", "05", "06"]
    excl = pd.read_csv(f"{stem}_desc-exclusions_nbs.tsv", sep="\t", dtype={"subject": str})
    assert excl["subject"].tolist() == ["07"] and "150 s" in excl["reason"].item()
    null = pd.read_csv(f"{stem}_desc-null_nbs.tsv", sep="\t")
    assert len(null) == 64 and null["identity"].iloc[0]
    import networkx as nx

    graphs = sorted(out.glob("group/*_desc-component*_nbs.graphml"))
    g = nx.read_graphml(graphs[0])
    assert g.number_of_edges() >= 1 and "x" in next(iter(g.nodes(data=True)))[1]
    for fig in ("adjacency", "circle", "glassbrain"):
        assert Path(f"{stem}_desc-{fig}_nbs.svg").exists(), fig


def test_group_nbs_leaves_out_an_all_nan_subject_and_names_nan_nodes(tiny_bids, tmp_path):
    """sub-03's m06 matrix is NaN everywhere (it would remove every node): sub-03 is
    excluded with the reason; a region NaN in sub-02 only is excluded and the subject
    named."""
    out = tmp_path / "out"
    seg = _write_func_outputs(out, np.random.default_rng(3), n_subjects=6)
    for sub, nan_nodes in (("03", slice(None)), ("02", [4])):
        rel = out / f"sub-{sub}/ses-m06/func/sub-{sub}_ses-m06_task-rest_seg-{seg}_stat-fisherz_relmat.tsv"
        m = pd.read_csv(rel, sep="\t", index_col=0)
        m.iloc[nan_nodes, :] = np.nan
        m.iloc[:, nan_nodes] = np.nan
        m.to_csv(rel, sep="\t", na_rep="n/a")  # as the func stage writes NaN
    assert main([str(tiny_bids), str(out), "group", "--stages", "nbs"]) == 0
    stem = out / f"group/task-rest_seg-{seg}_stat-fisherz"
    excl = pd.read_csv(f"{stem}_desc-exclusions_nbs.tsv", sep="\t", dtype={"subject": str})
    assert excl["subject"].tolist() == ["03"] and "NaN everywhere" in excl["reason"].item()
    meta = json.loads(Path(f"{stem}_desc-edges_nbs.json").read_text())["Parameters"]
    assert meta["subjects"] == ["01", "02", "04", "05", "06"]
    assert [n["name"] for n in meta["excluded_nodes"]] == ["R04"]
    assert "sub-02 ses-m06" in meta["excluded_nodes"][0]["reason"]


def test_group_nbs_refuses_matrices_with_different_region_tables(tiny_bids, tmp_path, capsys):
    out = tmp_path / "out"
    seg = _write_func_outputs(out, np.random.default_rng(3), n_subjects=3, rename=("02", "m06"))
    assert main([str(tiny_bids), str(out), "group", "--stages", "nbs"]) == 2
    err = capsys.readouterr().err
    assert f"sub-02_ses-m06_task-rest_seg-{seg}_dseg.tsv" in err and "differs" in err, err
    assert not list(out.glob("group/*_nbs.tsv"))


def test_group_clinical_stats_tests_edss_and_its_association_with_imaging_change(tmp_path):
    """EDSS rises in proportion to the left-NAWM RD decrease in 8 subjects; nothing else moves."""
    rng = np.random.default_rng(11)
    bids, out = tmp_path / "bids", tmp_path / "out"
    bids.mkdir()
    (bids / "dataset_description.json").write_text('{"Name": "t", "BIDSVersion": "1.8.0"}')
    for s in range(1, 9):
        sub = f"{s:02d}"
        drop = 0.02 * s  # RD decrease (fraction) at m06; EDSS worsens by the same ranking
        rows = []
        for ses, months in SESSIONS.items():
            edss = 6.0 + (0.25 * s * months / 6 if ses != "baseline" else 0.0)
            rows.append({"session_id": f"ses-{ses}", "time_months": months, "edss": edss,
                         "grip_kg": 30 + rng.normal(0, 1)})
            table = []
            for roi in ("NAWM", "NAWM_L", "NAWM_R"):
                for metric, base in BASE.items():
                    v = base * (1 + rng.normal(0, 0.002))
                    if roi == "NAWM_L" and metric == "rd":
                        v *= 1 - drop * months / 6
                    table.append({"subject": sub, "session": ses, "roi": roi, "metric": metric,
                                  "median": v, "mean": v})
            folder = out / f"sub-{sub}/ses-{ses}/dwi"
            folder.mkdir(parents=True)
            pd.DataFrame(table).to_csv(folder / f"sub-{sub}_ses-{ses}_space-dwi_model-tensor_roistats.tsv",
                                       sep="\t", index=False)
        (bids / f"sub-{sub}").mkdir()
        pd.DataFrame(rows).to_csv(bids / f"sub-{sub}/sub-{sub}_sessions.tsv", sep="\t", index=False)
    assert main([str(bids), str(out), "group", "--stages", "clinical_stats"]) == 0
    tests = pd.read_csv(out / "group/desc-tests_clinicalstats.tsv", sep="\t")
    assert set(tests["metric"]) == {"edss", "grip_kg"}  # the time column is not a variable
    lmm = tests[tests["test"] == "lmm"].set_index("metric")
    assert lmm.loc["edss", "p"] < 0.01 and lmm.loc["grip_kg", "p"] > 0.01
    assoc = pd.read_csv(out / "group/desc-association_clinicalstats.tsv", sep="\t")
    hit = assoc[assoc["significant"].astype(bool)]
    # RD change is negative and ranks inversely with the EDSS change: rho = -1, exact p = 2/8!
    assert list(zip(hit["imaging"], hit["clinical"], strict=True)) == [("roi NAWM_L rd", "edss")]
    row = hit.iloc[0]
    assert row["r"] == pytest.approx(-1.0) and row["exact"] and row["p"] == pytest.approx(2 / 40320)


def test_group_qcfc_shows_motion_coupling_only_without_denoising(tiny_bids, tmp_path):
    """Raw region series carry a motion signal whose weight grows with the run's mean FD."""
    from workflows.func import seg_name

    out, rng = tmp_path / "out", np.random.default_rng(5)
    seg, n_regions, n_vol = seg_name("seitzman", None), 20, 150
    names = [f"R{k:02d}" for k in range(n_regions)]
    table = pd.DataFrame({"index": range(1, n_regions + 1), "name": names,
                          "x": rng.uniform(-60, 60, n_regions), "y": rng.uniform(-90, 60, n_regions),
                          "z": rng.uniform(-30, 70, n_regions), "coverage": 1.0, "valid": 1})
    fds = {}
    for s in range(1, 8):
        for ses in ("baseline", "m06"):
            sub = f"{s:02d}"
            folder = out / f"sub-{sub}/ses-{ses}/func"
            folder.mkdir(parents=True, exist_ok=True)
            stem = folder / f"sub-{sub}_ses-{ses}_task-rest"
            skip = (sub, ses) == ("07", "m06")
            fd = fds[sub, ses] = float(rng.uniform(0.05, 0.6))
            pd.DataFrame([{"subject": sub, "session": ses, "mean_fd_mm": fd, "excluded": int(skip),
                           "exclusion_reason": "only 150 s left after censoring (< 240 s)" if skip else ""}]
                         ).to_csv(f"{stem}_desc-summary_bold.tsv", sep="\t", index=False)
            if skip:
                continue
            clean = rng.normal(size=(n_vol, n_regions))
            motion = rng.normal(size=(n_vol, 1)) * 2.0 * fd
            pd.DataFrame(800 + clean + motion, columns=names).to_csv(
                f"{stem}_seg-{seg}_desc-raw_timeseries.tsv", sep="\t", index=False
            )
            z = np.arctanh(np.corrcoef(clean.T) - np.eye(n_regions))
            pd.DataFrame(z, index=names, columns=names).to_csv(
                f"{stem}_seg-{seg}_stat-fisherz_relmat.tsv", sep="\t"
            )
            table.to_csv(f"{stem}_seg-{seg}_dseg.tsv", sep="\t", index=False)
    assert main([str(tiny_bids), str(out), "group", "--stages", "qcfc"]) == 0
    stem = out / f"group/task-rest_seg-{seg}_stat-fisherz"
    edges = pd.read_csv(f"{stem}_desc-qcfc_bold.tsv", sep="\t")
    assert len(edges) == n_regions * (n_regions - 1) // 2 and (edges["n_runs"] == 13).all()
    # independent check of one edge: the raw correlation's r with mean FD over the 13 runs
    runs = pd.read_csv(f"{stem}_desc-qcfcruns_bold.tsv", sep="\t", dtype={"subject": str})
    used = runs[runs["used"]]
    assert len(used) == 13 and runs.loc[~runs["used"], "reason"].str.contains("150 s").all()
    assert np.allclose(
        used["mean_fd_mm"],
        [fds[s, t] for s, t in zip(used["subject"], used["session"], strict=True)],
    )
    meta = json.loads(Path(f"{stem}_desc-qcfc_bold.json").read_text())["Parameters"]["summary"]
    print(meta)
    assert meta["no_denoising"]["fraction_fdr_below_alpha"] > 0.9  # every edge tracks FD
    assert meta["denoised"]["fraction_p_below_alpha"] < 0.15
    assert meta["denoised"]["median_abs_qcfc"] < meta["no_denoising"]["median_abs_qcfc"] - 0.3
    assert Path(f"{stem}_desc-qcfc_bold.svg").exists()


def _flag(out, sub, ses, flagged=True):
    """A structural plausibility record as the anat stage writes it."""
    folder = out / f"sub-{sub}/ses-{ses}/anat"
    folder.mkdir(parents=True, exist_ok=True)
    meta = {"Flagged": flagged, "FailedChecks": ["icv_l"] if flagged else [],
            "Reason": "intracranial volume (brain mask) = 2.9 l (plausible: 1-2.1)" if flagged else ""}
    (folder / f"sub-{sub}_ses-{ses}_desc-plausibility_checks.json").write_text(json.dumps(meta))


def test_flagged_sessions_leave_the_group_statistics_with_their_reason(tiny_bids, tmp_path):
    out = tmp_path / "out"
    _write_roi_tables(out, np.random.default_rng(4))
    seg = _write_func_outputs(out, np.random.default_rng(3), n_subjects=7)
    _flag(out, "03", "m06")
    _flag(out, "02", "baseline", flagged=False)
    assert main([str(tiny_bids), str(out), "group", "--stages", "dwi_stats", "nbs"]) == 0
    excl = pd.read_csv(out / "group/desc-exclusions_dwistats.tsv", sep="\t", dtype={"subject": str})
    row = excl[(excl["subject"] == "03") & (excl["roi"] == "all")]
    assert len(row) == 1 and "structural results flagged (icv_l)" in row["reason"].item()
    # the paired tests then miss its m06 and say so; the unflagged subject 02 is untouched
    assert (excl.loc[excl["subject"] == "03", "reason"].str.contains("missing session")).any()
    assert "02" not in set(excl["subject"])
    sessions = pd.read_csv(out / "group/desc-sessions_dwistats.tsv", sep="\t")
    assert sessions.loc[sessions["session"] == "m06", "n"].max() == 4  # 5 subjects, one left out
    nbs = pd.read_csv(out / f"group/task-rest_seg-{seg}_stat-fisherz_desc-exclusions_nbs.tsv",
                      sep="\t", dtype={"subject": str})
    assert nbs["subject"].tolist() == ["03"] and "flagged" in nbs["reason"].item()
    # the user may keep them: nothing is left out, and the warning says so
    cfg = tmp_path / "keep.yaml"
    cfg.write_text("group:\n  include_flagged: true\n")
    assert main([str(tiny_bids), str(out), "group", "--stages", "dwi_stats", "--config", str(cfg)]) == 0
    excl = pd.read_csv(out / "group/desc-exclusions_dwistats.tsv", sep="\t", dtype={"subject": str})
    assert excl.empty


def test_dwi_and_bold_flags_leave_only_their_own_statistics(tiny_bids, tmp_path):
    """A DWI session with too many excluded volumes leaves the DTI statistics, a BOLD run
    whose registration to the T1w failed leaves the NBS; each with its reason, and
    neither affects the other modality."""
    from workflows.dwi import _exclusion_meta
    from workflows.func import _registration_flag

    out = tmp_path / "out"
    _write_roi_tables(out, np.random.default_rng(4))
    seg = _write_func_outputs(out, np.random.default_rng(3), n_subjects=7)
    summary = {"excluded": [3, 7, 9, 12, 20, 21, 30], "excluded_fraction": 7 / 32,
               "warning": "7 of 32 ...", "flagged": True,
               "reason": "7 of 32 diffusion-weighted volumes (22 %) excluded: more than "
                         "dwi.max_excluded_fraction = 0.2"}
    dwi_meta = _exclusion_meta({"exclusions": summary}, {"nmi_sharpness": 0.5, "threshold": 0.2,
                                                         "passed": True})
    folder = out / "sub-04/ses-m06/dwi"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sub-04_ses-m06_desc-confounds_timeseries.json").write_text(json.dumps(dwi_meta))
    bold_meta = _registration_flag({"nmi_sharpness": 0.05, "threshold": 0.2, "passed": False})
    func = out / "sub-05/ses-baseline/func"
    side = func / "sub-05_ses-baseline_task-rest_desc-summary_bold.json"
    side.write_text(json.dumps({**json.loads(side.read_text()), **bold_meta})
                    if side.exists() else json.dumps(bold_meta))
    assert main([str(tiny_bids), str(out), "group", "--stages", "dwi_stats", "nbs"]) == 0
    excl = pd.read_csv(out / "group/desc-exclusions_dwistats.tsv", sep="\t", dtype={"subject": str})
    row = excl[(excl["subject"] == "04") & (excl["roi"] == "all")]
    assert len(row) == 1 and "DWI flagged" in row["reason"].item()
    assert "max_excluded_fraction" in row["reason"].item()
    assert "05" not in set(excl["subject"])
    nbs = pd.read_csv(out / f"group/task-rest_seg-{seg}_stat-fisherz_desc-exclusions_nbs.tsv",
                      sep="\t", dtype={"subject": str})
    assert nbs["subject"].tolist() == ["05"]
    assert "BOLD -> T1w registration failed" in nbs["reason"].item()


def test_group_nbs_power_analysis_writes_table_figure_and_report(tiny_bids, tmp_path):
    """nbs.power_repetitions > 0: the power table (grid of n x effect), its sidecar with
    the seed and noise model, the figure and the report section; detection grows with
    n and effect, and the null cell (effect 0) keeps the family-wise error rate."""
    from pipeline.config import load_config

    out = tmp_path / "out"
    seg = _write_func_outputs(out, np.random.default_rng(3), n_subjects=6)
    cfg = tmp_path / "power.yaml"
    cfg.write_text("nbs:\n  power_repetitions: 30\n  power_n_subjects: [4, 10]\n"
                   "  power_effects: [0.0, 2.0]\n  power_regions: 6\n  power_edges: 8\n"
                   "  power_permutations: 200\n")
    assert main([str(tiny_bids), str(out), "group", "--stages", "nbs", "report",
                 "--config", str(cfg)]) == 0
    stem = out / f"group/task-rest_seg-{seg}_stat-fisherz"
    power = pd.read_csv(f"{stem}_desc-power_nbs.tsv", sep="\t")
    assert len(power) == 4 and set(power["n_subjects"]) == {4, 10}
    cell = power.set_index(["n_subjects", "effect"])
    # 4 subjects: 16 sign patterns, one-sided min p 1/16 > 0.05 (two-sided default: 2/16)
    assert cell.loc[(4, 2.0), "detection"] == 0.0 and bool(cell.loc[(4, 2.0), "exact"])
    assert cell.loc[(10, 2.0), "detection"] > 0.5
    assert cell.loc[(10, 0.0), "detection"] == 0.0
    assert cell.loc[(10, 0.0), "false_positive"] <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / 30)
    meta = json.loads(Path(f"{stem}_desc-power_nbs.json").read_text())
    params = meta["Parameters"]
    assert params["noise_model"] == "wishart" and params["noise_estimated_from_subjects"] == 6
    assert params["seed"] == meta["RandomSeed"] == load_config([]).seed
    assert Path(f"{stem}_desc-power_nbs.svg").exists()
    nbs_meta = json.loads(Path(f"{stem}_desc-edges_nbs.json").read_text())["Parameters"]
    assert nbs_meta["power"]["run"] is True
    from workflows.report import group_report_path

    html = group_report_path(out).read_text()
    assert "NBS power analysis" in html and "desc-power_nbs.svg" in html
