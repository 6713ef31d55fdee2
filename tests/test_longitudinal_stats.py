"""Longitudinal ROI / tract-profile / clinical tests: values, planted effects, calibration."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from pipeline.stats.longitudinal import (
    LongitudinalTests,
    bh_fdr,
    box_plot_by_session,
    change_scores,
    clinical_association,
    clinical_to_long,
    profile_plot,
    profile_tests,
    session_summary,
    spaghetti_plot,
    wilcoxon_signed_rank,
)

SESSIONS = ["baseline", "m03", "m06"]
MONTHS = [0.0, 3.0, 6.0]
ROIS = ["NAWM_L", "NAWM_R", "WM", "lesion", "perilesion"]  # NAWM is derived: (L + R) / 2
METRICS = {"fa": 0.45, "md": 0.80, "ad": 1.20, "rd": 0.60}


def simulate(
    rng: np.random.Generator,
    n_subjects: int = 5,
    rd_change: tuple[float, ...] = (0.0, -0.03, -0.06),
    subject_sd: float = 0.05,
    noise_sd: float = 0.005,
    metrics: dict[str, float] | None = None,
) -> pd.DataFrame:
    """Long table like the phantom's: multiplicative subject effects and small noise.

    Only NAWM_L rd changes (``rd_change`` per session); NAWM is the average of
    NAWM_L and NAWM_R so it carries the change at half size.
    """
    metrics = METRICS if metrics is None else metrics
    rows = []
    for s in range(n_subjects):
        sub = f"{s + 1:02d}"
        for metric, base in metrics.items():
            level = {roi: base * (1 + subject_sd * rng.standard_normal()) for roi in ROIS}
            for k, ses in enumerate(SESSIONS):
                vals = {}
                for roi in ROIS:
                    v = level[roi] * (1 + noise_sd * rng.standard_normal())
                    if roi == "NAWM_L" and metric == "rd":
                        v *= 1 + rd_change[k]
                    vals[roi] = v
                vals["NAWM"] = 0.5 * (vals["NAWM_L"] + vals["NAWM_R"])
                for roi, v in vals.items():
                    rows.append(
                        {"subject": sub, "session": ses, "roi": roi, "metric": metric,
                         "median": v, "mean": v, "n_voxels": 1000}
                    )
    return pd.DataFrame(rows)


def _row(table: pd.DataFrame, roi: str, metric: str, test: str) -> pd.Series:
    r = table[(table.roi == roi) & (table.metric == metric) & (table.test == test)]
    assert len(r) == 1
    return r.iloc[0]


# --------------------------------------------------------------------------- values


def test_paired_and_friedman_values_equal_direct_scipy_calls():
    a = np.array([1.00, 1.20, 0.90, 1.10, 1.05])
    b = np.array([1.10, 1.19, 0.99, 1.30, 1.06])
    c = np.array([1.30, 1.25, 1.00, 1.20, 1.02])
    df = pd.concat(
        [pd.DataFrame({"subject": range(5), "session": s, "roi": "R", "metric": "fa", "median": v})
         for s, v in zip(SESSIONS, (a, b, c), strict=True)]
    )
    res = LongitudinalTests(SESSIONS, MONTHS, compare=("baseline", "m06")).fit(df)
    t = res.table
    w = _row(t, "R", "fa", "wilcoxon")
    ref = stats.wilcoxon(c, a, method="exact")
    assert w.statistic == ref.statistic and w.p == pytest.approx(ref.pvalue, rel=1e-12)
    assert w.exact and w.min_p == pytest.approx(2 / 2**5)
    assert w.estimate == pytest.approx(np.median(c - a))
    pt = _row(t, "R", "fa", "paired_t")
    ref = stats.ttest_rel(c, a)
    assert pt.statistic == pytest.approx(ref.statistic) and pt.p == pytest.approx(ref.pvalue)
    assert pt.mean_pct_change == pytest.approx(np.mean(100 * (c - a) / a))
    fr = _row(t, "R", "fa", "friedman")
    ref = stats.friedmanchisquare(a, b, c)
    assert fr.statistic == pytest.approx(ref.statistic)
    # exact Friedman p == brute force over all (3!)^5 within-subject permutations
    data = np.column_stack([a, b, c])
    perms = list(itertools.permutations(range(3)))
    s_obs = ref.statistic
    hits = 0
    for combo in itertools.product(perms, repeat=5):
        d = np.array([data[i, list(p)] for i, p in enumerate(combo)])
        hits += stats.friedmanchisquare(*d.T).statistic >= s_obs - 1e-9
    assert fr.exact and fr.p == pytest.approx(hits / 6**5, rel=1e-12)
    assert fr.min_p == pytest.approx(6 / 6**5)  # all subjects in the same order
    # asymptotic mode is scipy's chi-square p
    res2 = LongitudinalTests(SESSIONS, MONTHS, exact_limit=10).fit(df)
    fr2 = _row(res2.table, "R", "fa", "friedman")
    assert not fr2.exact and fr2.p == pytest.approx(ref.pvalue, rel=1e-12)


def _wilcoxon_brute_force(d: np.ndarray) -> float:
    """Two-sided exact conditional p by listing all 2^m sign patterns of the mid-ranks
    (zeros dropped): the fraction of patterns with |W+ - E| >= the observed one."""
    nz = d[d != 0]
    ranks = stats.rankdata(np.abs(nz))
    centre = ranks.sum() / 2
    obs = abs(ranks[nz > 0].sum() - centre)
    hits = sum(abs(sum(r for r, s in zip(ranks, signs, strict=True) if s) - centre) >= obs - 1e-9
               for signs in itertools.product((0, 1), repeat=nz.size))
    return hits / 2**nz.size


@pytest.mark.parametrize(
    "d",
    [
        [0.5, 0.5, 0.5, 1.0, 0.5],  # EDSS-like steps, all tied but one
        [0.5, 0.5, 0.5, 1.0, 0.0],  # one zero
        [0.5, 0.5, 1.0, -0.2, 0.7, 0.9],
        [1.0, -1.0, 0.5, 0.5, -0.5, 0.0, 0.0, 1.5, 2.0],
        [0.3, -0.1, 0.2, 0.4, 0.5, -0.6, 0.7, 0.8, 0.9, 1.0, -1.1, 1.2],  # no ties
        [-0.5, -0.5, -1.0, -1.0, -1.0, -0.5, 0.5, -1.5],
    ],
)
def test_wilcoxon_exact_with_ties_and_zeros_equals_enumeration(d):
    d = np.asarray(d)
    res = wilcoxon_signed_rank(d)
    assert res["exact"] and res["p"] == pytest.approx(_wilcoxon_brute_force(d), abs=1e-12)
    m = int((d != 0).sum())
    assert res["min_p"] == pytest.approx(min(1.0, 2 / 2**m)) and res["p"] >= res["min_p"]
    if not res["ties"] and not res["n_zero"]:  # scipy's exact method where it applies
        assert res["p"] == pytest.approx(stats.wilcoxon(d, method="exact").pvalue, rel=1e-12)


def test_wilcoxon_edss_ties_cannot_be_significant_at_n5():
    """EDSS changes +0.5, +0.5, +0.5, +1, +0.5: exact p = 2/32 = 0.0625, not 0.0477
    (normal approximation); one zero: 2/16 = 0.125, not 0.089. The flags agree."""
    x = np.array([3.0, 4.0, 4.5, 6.0, 5.5])
    for change, p_exact in (([0.5, 0.5, 0.5, 1.0, 0.5], 2 / 32), ([0.5, 0.5, 0.5, 1.0, 0.0], 2 / 16)):
        y = x + np.array(change)
        df = pd.concat(
            [pd.DataFrame({"subject": range(5), "session": s, "roi": "clinical",
                           "metric": "edss", "median": v})
             for s, v in (("baseline", x), ("m06", y))]
        )
        w = _row(LongitudinalTests(["baseline", "m06"]).fit(df).table, "clinical", "edss",
                 "wilcoxon")
        assert w.exact and w.p == pytest.approx(p_exact) and w.min_p == pytest.approx(p_exact)
        assert not w.significant and not w.can_reach_alpha
        assert "exact conditional" in w.method and "mid-ranks" in w.method


def test_wilcoxon_above_the_exact_limit_is_the_tie_corrected_normal_approximation():
    rng = np.random.default_rng(4)
    d = np.round(rng.normal(0.3, 1.0, 60), 1)  # ties and zeros
    res = wilcoxon_signed_rank(d, exact_max_n=50)
    ref = stats.wilcoxon(d, method="approx", correction=False)  # scipy's tie-corrected z
    assert not res["exact"] and res["p"] == pytest.approx(ref.pvalue, rel=1e-9)
    exact = wilcoxon_signed_rank(d, exact_max_n=100)
    assert exact["exact"] and abs(exact["p"] - res["p"]) < 0.01  # n = 60: close


def test_bh_equals_hand_computation():
    p = np.array([0.01, 0.04, 0.03, 0.005, np.nan])
    # sorted 0.005, 0.01, 0.03, 0.04 (m = 4): 0.02, 0.02, 0.04, 0.04 after the step-up minimum
    expected = np.array([0.02, 0.04, 0.04, 0.02, np.nan])
    np.testing.assert_allclose(bh_fdr(p), expected, rtol=1e-12)


def test_lmm_equals_statsmodels_and_within_subject_regression_when_balanced():
    import statsmodels.formula.api as smf

    df = simulate(np.random.default_rng(3))
    res = LongitudinalTests(SESSIONS, MONTHS).fit(df)
    g = df[(df.roi == "WM") & (df.metric == "md")].copy()
    g["time"] = g.session.map(dict(zip(SESSIONS, MONTHS, strict=True)))
    ref = smf.mixedlm("median ~ time", g, groups=g["subject"]).fit(reml=True)
    row = _row(res.table, "WM", "md", "lmm")
    assert row.estimate == pytest.approx(ref.params["time"], rel=1e-5)
    assert row.statistic == pytest.approx(ref.tvalues["time"], rel=1e-4)
    # balanced, complete design: the REML slope test is the within-subject regression t test
    yc = g["median"] - g.groupby("subject")["median"].transform("mean")
    tc = g["time"] - g.groupby("subject")["time"].transform("mean")
    slope = float((yc * tc).sum() / (tc**2).sum())
    df_w = len(g) - g.subject.nunique() - 1
    se = math.sqrt(float(((yc - slope * tc) ** 2).sum()) / df_w / float((tc**2).sum()))
    assert row.estimate == pytest.approx(slope, rel=1e-5)
    assert row.p == pytest.approx(2 * stats.t.sf(abs(slope / se), df_w), rel=1e-3)


def _lmm_row(y, t, subjects):
    df = pd.DataFrame({"subject": subjects, "session": [SESSIONS[MONTHS.index(x)] for x in t],
                       "roi": "R", "metric": "m", "median": y})
    res = LongitudinalTests(SESSIONS, MONTHS, friedman=False, wilcoxon=False,
                            paired_t=False).fit(df)
    return _row(res.table, "R", "m", "lmm")


def test_lmm_on_the_boundary_falls_back_to_the_within_subject_test():
    """No between-subject variance (a REML boundary fit): the slope is tested by the
    within-subject least-squares test, equal to OLS with one intercept per subject."""
    import statsmodels.formula.api as smf

    rng = np.random.default_rng(11)
    subjects = np.repeat([f"{i:02d}" for i in range(5)], 3)
    t = np.tile(MONTHS, 5)
    y = 1.0 - 0.004 * t + 0.01 * rng.standard_normal(15)  # same intercept for every subject
    row = _lmm_row(y, t, subjects)
    ref = smf.ols("y ~ t + C(s)", pd.DataFrame({"y": y, "t": t, "s": subjects})).fit()
    assert "within-subject least squares" in row.method and "boundary" in row.reason
    assert row.estimate == pytest.approx(ref.params["t"], rel=1e-9)
    assert row.p == pytest.approx(ref.pvalues["t"], rel=1e-6) and np.isfinite(row.p_fdr)


def test_lmm_fit_failure_falls_back_and_stays_in_the_fdr_family(monkeypatch):
    from statsmodels.regression.mixed_linear_model import MixedLM

    def broken(self, *a, **k):
        raise np.linalg.LinAlgError("Singular matrix")

    monkeypatch.setattr(MixedLM, "fit", broken)
    df = simulate(np.random.default_rng(5))
    t = LongitudinalTests(SESSIONS, MONTHS, compare=("baseline", "m06")).fit(df).table
    lmm = t[t.test == "lmm"]
    assert lmm.p.notna().all() and lmm.p_fdr.notna().all()
    assert lmm.method.str.contains("within-subject").all()
    assert lmm.reason.str.contains("Singular matrix").all()
    assert _row(t, "NAWM_L", "rd", "lmm").p_fdr < 0.05  # the planted effect is still found


def test_lmm_null_with_small_subject_variance_has_no_nan_and_keeps_its_level():
    """5 x 3 null data with a subject SD of a tenth of the noise: before the fallback 7.5-13 %
    of the fits gave NaN p and left the FDR family; now none, at the nominal level."""
    rng = np.random.default_rng(2026)
    subjects = np.repeat([f"{i:02d}" for i in range(5)], 3)
    t = np.tile(MONTHS, 5)
    ps, fallbacks = [], 0
    for _ in range(300):
        y = np.repeat(0.1 * rng.standard_normal(5), 3) + rng.standard_normal(15)
        row = _lmm_row(y, t, subjects)
        ps.append(row.p)
        fallbacks += "within-subject" in row.method
    ps = np.array(ps)
    print(f"null: {fallbacks} of 300 fits fell back, rejection rate {np.mean(ps < 0.05):.3f}")
    assert np.all(np.isfinite(ps)) and fallbacks > 0
    assert abs(np.mean(ps < 0.05) - 0.05) <= 3 * math.sqrt(0.05 * 0.95 / ps.size)


# --------------------------------------------------------------------------- planted effect


def test_planted_left_nawm_rd_decrease_is_the_finding():
    """5 subjects x 3 sessions, NAWM_L rd -3 % at m03 and -6 % at m06.

    Expected: baseline-vs-m06 Wilcoxon of NAWM_L rd reaches the smallest
    attainable p (2/2**5 = 0.0625), which CANNOT be significant at 0.05 (the
    output says so); the exact Friedman test reaches its floor 1/6**4; the LMM
    slopes of NAWM_L rd and of NAWM rd (= mean of L and R, so half the effect)
    are the only LMM results with p_FDR < 0.05; nothing else is significant.
    """
    df = simulate(np.random.default_rng(2024))
    res = LongitudinalTests(SESSIONS, MONTHS, compare=("baseline", "m06")).fit(df)
    t = res.table
    w = _row(t, "NAWM_L", "rd", "wilcoxon")
    assert w.exact and w.p == pytest.approx(2 / 32) == w.min_p
    assert not w.can_reach_alpha and "cannot reach p < 0.05" in w.reason
    assert w.mean_pct_change == pytest.approx(-6.0, abs=1.0)
    assert not t[t.test == "wilcoxon"].significant.any()
    assert "WARNING: cannot reach p < 0.05" in res.summary()
    fr = _row(t, "NAWM_L", "rd", "friedman")
    assert fr.p == pytest.approx(1 / 6**4) == fr.min_p
    lmm = t[t.test == "lmm"]
    hits = set(zip(lmm[lmm.p_fdr < 0.05].roi, lmm[lmm.p_fdr < 0.05].metric, strict=True))
    assert ("NAWM_L", "rd") in hits and hits <= {("NAWM_L", "rd"), ("NAWM", "rd")}
    left = _row(t, "NAWM_L", "rd", "lmm")
    assert left.p == lmm.p.min() and left.mean_pct_change == pytest.approx(-6.0, abs=1.0)
    assert _row(t, "NAWM", "rd", "lmm").mean_pct_change == pytest.approx(-3.0, abs=1.0)
    sig = t[t.significant]
    assert set(zip(sig.roi, sig.metric, strict=True)) <= {("NAWM_L", "rd"), ("NAWM", "rd")}
    assert "Benjamini-Hochberg" in res.parameters["fdr_statement"]
    assert (t[t.test == "lmm"].fdr_family.str.contains("across 24")).all()


def test_null_lmm_fdr_is_calibrated():
    """No effect, 200 datasets x 3 ROI LMM slopes: any-rejection rate of BH <= alpha + MC error."""
    rng = np.random.default_rng(7)
    est = LongitudinalTests(SESSIONS, MONTHS, friedman=False, wilcoxon=False, paired_t=False)
    n_sets, any_hit, ps = 200, 0, []
    for _ in range(n_sets):
        df = simulate(rng, rd_change=(0.0, 0.0, 0.0), metrics={"rd": 0.6})
        df = df[df.roi.isin(["NAWM_L", "NAWM_R", "WM"])]
        t = est.fit(df).table
        any_hit += bool((t.p_fdr < 0.05).any())
        ps.extend(t.p.tolist())
    ps = np.asarray(ps)
    assert np.isfinite(ps).all()
    mc = 3 * math.sqrt(0.05 * 0.95 / n_sets)
    assert any_hit / n_sets <= 0.05 + mc
    per_test = np.mean(ps < 0.05)  # per-test level of the between-within t reference
    assert abs(per_test - 0.05) <= 3 * math.sqrt(0.05 * 0.95 / ps.size)
    print(f"null: any-rejection {any_hit / n_sets:.3f}, per-test {per_test:.4f}")


def test_missing_session_excluded_from_paired_tests_but_kept_in_lmm():
    df = simulate(np.random.default_rng(1))
    df = df[~((df.subject == "05") & (df.session == "m06"))]
    res = LongitudinalTests(SESSIONS, MONTHS, compare=("baseline", "m06")).fit(df)
    t = res.table
    w = _row(t, "NAWM_L", "rd", "wilcoxon")
    assert w.n_subjects == 4 and w.min_p == pytest.approx(2 / 16)
    fr = _row(t, "NAWM_L", "rd", "friedman")
    assert fr.n_subjects == 4
    lmm = _row(t, "NAWM_L", "rd", "lmm")
    assert lmm.n_subjects == 5 and lmm.n_obs == 14 and lmm.p < 0.05
    ex = res.exclusions
    e = ex[(ex.roi == "NAWM_L") & (ex.metric == "rd") & (ex.test == "wilcoxon")]
    assert e.subject.tolist() == ["05"] and "m06" in e.reason.iloc[0]
    assert not ((ex.test == "lmm").any())
    summ = res.summary_table
    n06 = summ[(summ.roi == "NAWM_L") & (summ.metric == "rd") & (summ.session == "m06")].n
    assert n06.item() == 4


def test_session_summary_equals_numpy_quartiles():
    df = simulate(np.random.default_rng(5))
    s = session_summary(df, sessions=SESSIONS)
    v = df[(df.roi == "WM") & (df.metric == "fa") & (df.session == "m03")]["median"].to_numpy()
    r = s[(s.roi == "WM") & (s.metric == "fa") & (s.session == "m03")].iloc[0]
    assert r.n == 5 and r["median"] == pytest.approx(np.median(v))
    assert (r.q1, r.q3) == pytest.approx(tuple(np.percentile(v, [25, 75])))


def test_json_record_states_the_correction():
    res = LongitudinalTests(SESSIONS, MONTHS).fit(simulate(np.random.default_rng(0)))
    js = json.loads(json.dumps(res.to_json_dict()))
    assert {r["test"] for r in js["tests"]} == {"friedman", "wilcoxon", "paired_t", "lmm"}
    assert len(js["tests"]) == len(res.table)
    assert "Benjamini-Hochberg" in js["parameters"]["fdr_statement"]


# --------------------------------------------------------------------------- profiles


def _profiles(rng, n_sub=6, n_nodes=40, effect=None, missing=None):
    rows = []
    effect = np.zeros(n_nodes) if effect is None else effect
    for s in range(n_sub):
        shape = 0.5 + 0.1 * np.sin(np.linspace(0, 3, n_nodes)) + 0.02 * rng.standard_normal()
        for ses, eff in (("baseline", 0.0), ("m06", 1.0)):
            if missing == (s, ses):
                continue
            v = shape + eff * effect + 0.005 * rng.standard_normal(n_nodes)
            rows += [
                {"subject": f"{s:02d}", "session": ses, "bundle": "CST_L", "node": j,
                 "metric": "fa", "value": float(v[j])}
                for j in range(n_nodes)
            ]
    return pd.DataFrame(rows)


def test_max_t_equals_brute_force_enumeration():
    rng = np.random.default_rng(11)
    prof = _profiles(rng, n_sub=4, n_nodes=5, effect=np.array([0, 0.01, 0.02, 0, 0]))
    res = profile_tests(prof, ("baseline", "m06"), n_permutations=1000, random_state=0)
    w = prof.pivot_table(index=["subject", "node"], columns="session", values="value")
    d = (w["m06"] - w["baseline"]).unstack("node").to_numpy()
    t_obs = stats.ttest_1samp(d, 0.0).statistic
    null = [
        np.abs(stats.ttest_1samp(d * np.array(sg)[:, None], 0.0).statistic).max()
        for sg in itertools.product([1, -1], repeat=4)
    ]
    expected = [np.mean(np.array(null) >= abs(t) - 1e-12) for t in t_obs]
    np.testing.assert_allclose(res.table.t, t_obs, rtol=1e-10)
    np.testing.assert_allclose(res.table.p_fwe, expected, rtol=1e-12)
    g = res.parameters["groups"]["CST_L/fa"]
    assert (
        g["exact"] and g["n_permutations"] == 16 and g["min_attainable_p"] == pytest.approx(2 / 16)
    )


@pytest.mark.parametrize("method", ["max-t", "cluster"])
def test_profile_planted_segment_found_and_only_there(method):
    effect = np.zeros(40)
    effect[15:25] = -0.03
    prof = _profiles(np.random.default_rng(4), n_sub=8, effect=effect, missing=(7, "m06"))
    res = profile_tests(
        prof, ("baseline", "m06"), n_permutations=2000, random_state=1, method=method
    )
    assert res.exclusions.subject.tolist() == ["07"]
    assert res.parameters["groups"]["CST_L/fa"]["exact"]  # 2**7 = 128 <= 2000
    sig = res.table[res.table.significant].node.to_numpy()
    assert set(sig) <= set(range(14, 26)) and len(sig) >= 8
    assert len(res.ranges) >= 1 and (res.ranges.sign == -1).all()
    null = profile_tests(_profiles(np.random.default_rng(5), n_sub=8), ("baseline", "m06"),
                         n_permutations=2000, random_state=1, method=method)
    assert (null.table.p_fwe >= 0.05).mean() > 0.9


# --------------------------------------------------------------------------- clinical


def test_clinical_variables_and_association():
    rng = np.random.default_rng(9)
    df = simulate(rng, n_subjects=6)
    ch_img = change_scores(df, ("baseline", "m06"), relative=True)
    # EDSS rises most in the subjects whose NAWM_L rd fell most (monotone, so rho = -1)
    rd = ch_img[(ch_img.roi == "NAWM_L") & (ch_img.metric == "rd")].set_index("subject").change
    order = rd.rank(ascending=False).to_numpy()
    sessions = pd.DataFrame(
        [{"participant_id": f"sub-{s}", "session_id": f"ses-{ses}",
          "EDSS": 2.0 + (0.5 * order[i] if ses == "m06" else 0.0)}
         for i, s in enumerate(rd.index) for ses in SESSIONS]
    )
    clin = clinical_to_long(sessions, ["EDSS"])
    assert set(clin.columns) >= {"subject", "session", "roi", "metric", "median"}
    cres = LongitudinalTests(SESSIONS, MONTHS).fit(clin)
    assert set(cres.table.test) == {"friedman", "wilcoxon", "paired_t", "lmm"}
    ch_cli = change_scores(clin, ("baseline", "m06"))
    assoc = clinical_association(ch_img, ch_cli)
    r = assoc[(assoc.imaging == "NAWM_L/rd") & (assoc.clinical == "clinical/EDSS")].iloc[0]
    assert r.r == pytest.approx(-1.0) and r.exact and r.p == pytest.approx(2 / math.factorial(6))
    # exact Spearman p equals brute force on another pair
    x = ch_img[(ch_img.roi == "WM") & (ch_img.metric == "fa")].set_index("subject").change
    y = ch_cli.set_index("subject").change.reindex(x.index)
    rho = stats.spearmanr(x, y).statistic
    brute = np.mean(
        [abs(stats.spearmanr(x.to_numpy(), y.to_numpy()[list(p)]).statistic) >= abs(rho) - 1e-12
         for p in itertools.permutations(range(6))]
    )
    r2 = assoc[(assoc.imaging == "WM/fa") & (assoc.clinical == "clinical/EDSS")].iloc[0]
    assert r2.r == pytest.approx(rho) and r2.p == pytest.approx(brute)
    assert "all 24" in assoc.fdr_family.iloc[0]


# --------------------------------------------------------------------------- figures


def test_figures_return_figures():
    from matplotlib.figure import Figure

    df = simulate(np.random.default_rng(0))
    sel = {"roi": "NAWM_L", "metric": "rd"}
    f1 = spaghetti_plot(df, SESSIONS, sel, times=MONTHS)
    assert isinstance(f1, Figure) and len(f1.axes[0].lines) == 5 + 1
    f2 = box_plot_by_session(df, SESSIONS, sel)
    assert isinstance(f2, Figure)
    effect = np.zeros(40)
    effect[15:25] = -0.03
    prof = _profiles(np.random.default_rng(4), n_sub=8, effect=effect)
    res = profile_tests(prof, ("baseline", "m06"), n_permutations=500, random_state=0)
    f3 = profile_plot(prof, ["baseline", "m06"], {"bundle": "CST_L", "metric": "fa"}, result=res)
    assert isinstance(f3, Figure) and len(f3.axes[0].patches) >= 1


def test_paired_t_with_the_same_change_up_to_float_noise_is_not_a_test():
    x = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    y = x + 0.1  # 0.1 added in float: differences equal up to rounding
    assert np.ptp(y - x) > 0  # not exactly equal
    df = pd.concat(
        [pd.DataFrame({"subject": range(5), "session": s, "roi": "R", "metric": "m", "median": v})
         for s, v in (("baseline", x), ("m06", y))]
    )
    row = _row(LongitudinalTests(["baseline", "m06"]).fit(df).table, "R", "m", "paired_t")
    assert np.isnan(row.p) and "no variance" in row.reason
