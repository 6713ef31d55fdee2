"""Group stage: longitudinal tests of the participant ROI tables through the CLI."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

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
                                 "sd": 0.1, "lesion_loss_fraction": np.nan})  # fmt: skip
            folder = out / f"sub-{sub}/ses-{ses}/dwi"
            folder.mkdir(parents=True)
            pd.DataFrame(rows).to_csv(folder / f"sub-{sub}_ses-{ses}_space-dwi_model-tensor_roistats.tsv",
                                      sep="\t", index=False, na_rep="n/a")  # fmt: skip


def test_group_dwi_stats_finds_the_planted_change_and_states_its_limits(tiny_bids, tmp_path):
    out = tmp_path / "out"
    _write_roi_tables(out, np.random.default_rng(4), missing={("05", "m06")})
    assert main([str(tiny_bids), str(out), "group", "--stages", "dwi_stats"]) == 0
    tests = pd.read_csv(out / "group/desc-tests_dwistats.tsv", sep="\t")
    lmm = tests[tests["test"] == "lmm"]
    hits = lmm[lmm["p_fdr"] < 0.05]
    assert {"NAWM_L/rd"} <= set(hits["roi"] + "/" + hits["metric"]) <= {"NAWM_L/rd", "NAWM/rd"}
    wil = tests[(tests["test"] == "wilcoxon") & (tests["roi"] == "NAWM_L") & (tests["metric"] == "rd")]
    # four complete pairs: exact Wilcoxon cannot go below 2/16 two-sided, and the table says so
    assert wil["min_p"].item() == 0.125 and wil["p"].item() == 0.125 and not wil["can_reach_alpha"].item()
    excl = pd.read_csv(out / "group/desc-exclusions_dwistats.tsv", sep="\t", dtype={"subject": str})
    assert "05" in set(excl["subject"])
    meta = json.loads((out / "group/desc-tests_dwistats.json").read_text())
    assert "Benjamini-Hochberg" in meta["Parameters"]["fdr_statement"]
    assert len(meta["Sources"]) == 14
    assert (out / "group/desc-spaghettiNAWMLrd_dwistats.svg").exists()


def test_group_dwi_stats_without_tables_is_a_warning_not_a_crash(tiny_bids, tmp_path, caplog):
    assert main([str(tiny_bids), str(tmp_path / "out"), "group", "--stages", "dwi_stats"]) == 0
    assert "no ROI tables" in caplog.text
