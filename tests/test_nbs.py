"""Scientific tests of the network-based statistic (pipeline.stats.nbs).

The brute-force references below are written independently of the library:
explicit loops over every sign flip / permutation, scipy t-tests or a
least-squares GLM fitted per relabelling, and networkx connected components.
"""

from __future__ import annotations

import itertools
import logging

import networkx as nx
import numpy as np
import pytest
from scipy import stats

from pipeline.stats.nbs import NBSResult, NetworkBasedStatistic
from pipeline.stats.permutation import make_relabelling_set, sign_flip_set

# --------------------------------------------------------------------------- helpers


def sym(a: np.ndarray) -> np.ndarray:
    """Symmetrise a stack of matrices and zero the diagonal."""
    s = (a + np.swapaxes(a, -1, -2)) / 2
    idx = np.arange(s.shape[-1])
    s[..., idx, idx] = 0.0
    return s


def plant(stack: np.ndarray, nodes: list[int], value: float | np.ndarray) -> None:
    """Add ``value`` (scalar or per-observation) to all edges among ``nodes`` in place."""
    v = np.broadcast_to(np.asarray(value, dtype=float), (stack.shape[0],))
    for a, b in itertools.combinations(nodes, 2):
        stack[:, a, b] += v
        stack[:, b, a] += v


def clique_edges(nodes: list[int]) -> set[tuple[int, int]]:
    return {(min(a, b), max(a, b)) for a, b in itertools.combinations(nodes, 2)}


def max_component(tmap: np.ndarray, thr: float, size: str) -> tuple[float, list[tuple[set, float]]]:
    """networkx components of the graph of edges with tmap > thr (tmap: dict-like n x n)."""
    n = tmap.shape[0]
    g = nx.Graph()
    for i in range(n):
        for j in range(i + 1, n):
            if tmap[i, j] > thr:
                g.add_edge(i, j, w=tmap[i, j] - thr)
    comps = []
    for nodes in nx.connected_components(g):
        sub = g.subgraph(nodes)
        edges = {(min(a, b), max(a, b)) for a, b in sub.edges()}
        sz = (
            float(len(edges))
            if size == "extent"
            else float(sum(d["w"] for _, _, d in sub.edges(data=True)))
        )
        comps.append((edges, sz))
    return max([c[1] for c in comps], default=0.0), comps


def brute_force(tmaps: list[list[np.ndarray]], thr: float, size: str):
    """tmaps[k] = list of one-sided t maps (one per test) for relabelling k; k=0 observed."""
    null = np.array([max(max_component(t, thr, size)[0] for t in maps) for maps in tmaps])
    observed = []
    for r, t in enumerate(tmaps[0]):
        for edges, sz in max_component(t, thr, size)[1]:
            observed.append((r, edges, sz, np.mean(null >= sz - 1e-9)))
    return null, observed


def paired_tmap(d: np.ndarray) -> np.ndarray:
    """Edge-wise one-sample t map of differences d (n_obs, n, n) with scipy."""
    n = d.shape[1]
    t = np.zeros((n, n))
    for i in range(n):
        for j in range(i + 1, n):
            t[i, j] = stats.ttest_1samp(d[:, i, j], 0.0).statistic
    return t


def glm_tmap(y: np.ndarray, x: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Edge-wise GLM t of contrast c, one least-squares fit per edge."""
    n = y.shape[1]
    t = np.zeros((n, n))
    dof = x.shape[0] - np.linalg.matrix_rank(x)
    xtx = np.linalg.pinv(x.T @ x)
    for i in range(n):
        for j in range(i + 1, n):
            b, *_ = np.linalg.lstsq(x, y[:, i, j], rcond=None)
            r = y[:, i, j] - x @ b
            t[i, j] = (c @ b) / np.sqrt((r @ r) / dof * (c @ xtx @ c))
    return t


def freedman_lane_maps(y, x, c, z, relabellings, kind):
    """Freedman-Lane t maps for every relabelling: Y* = P R_z Y + H_z Y, full-model fit."""
    n_obs = y.shape[0]
    hz = z @ np.linalg.pinv(z) if z.shape[1] else np.zeros((n_obs, n_obs))
    flat = y.reshape(n_obs, -1)
    fitted = hz @ flat
    resid = flat - fitted
    maps = []
    for rel in relabellings:
        if kind == "sign-flip":
            ystar = np.asarray(rel)[:, None] * resid + fitted
        else:
            ystar = resid[np.asarray(rel)] + fitted
        maps.append(glm_tmap(ystar.reshape(y.shape), x, c))
    return maps


def compare(result: NBSResult, null: np.ndarray, observed: list, tests: list[tuple[int, int]]):
    assert result.exact
    assert result.n_permutations == null.size
    np.testing.assert_allclose(np.sort(result.null_distribution), np.sort(null), atol=1e-8)
    ours = sorted(
        (
            tests.index((c.contrast, c.sign)),
            sorted(zip(c.i.tolist(), c.j.tolist(), strict=True)),
            round(c.size, 8),
            c.p_fwe,
        )
        for c in result.components
    )
    ref = sorted((r, sorted(edges), round(sz, 8), p) for r, edges, sz, p in observed)
    assert len(ours) == len(ref)
    for a, b in zip(ours, ref, strict=True):
        assert a[:3] == b[:3]
        assert a[3] == pytest.approx(b[3], abs=1e-12)


@pytest.fixture
def paired_small():
    rng = np.random.default_rng(7)
    n, m = 8, 6
    base = sym(rng.standard_normal((m, n, n)))
    fu = base + sym(rng.standard_normal((m, n, n)))
    plant(fu, [0, 1, 2, 3], 1.5)
    plant(fu, [5, 6, 7], -1.5)
    return base, fu


# --------------------------------------------------------------------------- exact agreement


@pytest.mark.parametrize("alternative", ["greater", "two-sided"])
@pytest.mark.parametrize("size", ["extent", "intensity"])
def test_paired_matches_brute_force_enumeration(paired_small, alternative, size):
    base, fu = paired_small
    d = fu - base
    thr = 2.0
    t_maps = []
    for signs in itertools.product([1.0, -1.0], repeat=d.shape[0]):
        t = paired_tmap(np.asarray(signs)[:, None, None] * d)
        t_maps.append([t, -t] if alternative == "two-sided" else [t])
    null, observed = brute_force(t_maps, thr, size)
    res = NetworkBasedStatistic(
        thr, alternative=alternative, size=size, n_permutations=5000
    ).fit_paired(base, fu)
    assert res.n_distinct_available == 64
    tests = [(0, 1), (0, -1)] if alternative == "two-sided" else [(0, 1)]
    compare(res, null, observed, tests)
    np.testing.assert_allclose(
        np.triu(res.statistic, 1), np.triu(t_maps[0][0], 1), rtol=1e-10, atol=1e-12
    )


def test_two_sample_matches_brute_force_enumeration():
    rng = np.random.default_rng(3)
    n, na, nb = 7, 4, 4
    a = sym(rng.standard_normal((na, n, n)))
    b = sym(rng.standard_normal((nb, n, n)))
    plant(a, [0, 1, 2, 3], 2.0)
    y = np.concatenate([a, b])
    thr = 2.5
    t_maps = []
    for grp in itertools.combinations(range(na + nb), na):
        in_a = np.zeros(na + nb, dtype=bool)
        in_a[list(grp)] = True
        t = np.zeros((n, n))
        for i in range(n):
            for j in range(i + 1, n):
                t[i, j] = stats.ttest_ind(y[in_a, i, j], y[~in_a, i, j]).statistic
        t_maps.append([t, -t])
    null, observed = brute_force(t_maps, thr, "extent")
    res = NetworkBasedStatistic(thr, n_permutations=1000).fit_two_sample(a, b)
    assert res.n_distinct_available == 70 and res.exact
    compare(res, null, observed, [(0, 1), (0, -1)])
    # swapping the two groups mirrors the identity: two-sided min p = 2/70
    assert res.min_attainable_p == pytest.approx(2 / 70)


def test_freedman_lane_matches_brute_force_glm():
    """Paired design with a nuisance covariate: sign flips of null-model residuals."""
    rng = np.random.default_rng(11)
    n, m = 6, 6
    base = sym(rng.standard_normal((m, n, n)))
    fu = base + sym(rng.standard_normal((m, n, n)))
    cov = rng.normal(size=m)
    plant(fu, [0, 1, 2], 1.0 + 0.8 * cov)
    d = fu - base
    x = np.column_stack([np.ones(m), cov - cov.mean()])
    c = np.array([1.0, 0.0])
    flips = list(itertools.product([1.0, -1.0], repeat=m))
    maps = freedman_lane_maps(d, x, c, x[:, 1:], flips, "sign-flip")
    null, observed = brute_force([[t] for t in maps], 1.8, "extent")
    res = NetworkBasedStatistic(1.8, alternative="greater", n_permutations=100).fit_paired(
        base, fu, covariates=cov
    )
    compare(res, null, observed, [(0, 1)])


def test_repeated_measures_matches_brute_force_within_subject_permutation():
    rng = np.random.default_rng(5)
    n, n_subj, sessions = 6, 4, [0, 1, 2]
    subj = np.repeat(np.arange(n_subj), 3)
    sess = np.tile(sessions, n_subj)
    y = sym(rng.standard_normal((12, n, n))) + sym(rng.standard_normal((n_subj, n, n)))[subj] * 2
    plant(y, [0, 1, 2], 0.9 * sess)
    s_dum = (sess[:, None] == np.arange(3)).astype(float)
    p_dum = (subj[:, None] == np.arange(1, n_subj)).astype(float)
    x = np.column_stack([s_dum, p_dum])
    c = np.r_[-1.0, 0.0, 1.0, np.zeros(n_subj - 1)]
    z = x @ np.array(_null(c))
    perms = []
    for combo in itertools.product(list(itertools.permutations(range(3))), repeat=n_subj):
        perms.append(np.concatenate([3 * s + np.asarray(p) for s, p in enumerate(combo)]))
    maps = freedman_lane_maps(y, x, c, z, perms, "permute")
    null, observed = brute_force([[t, -t] for t in maps], 2.0, "extent")
    res = NetworkBasedStatistic(2.0, n_permutations=2000).fit_repeated(y, subj, sess, {0: -1, 2: 1})
    assert res.n_distinct_available == 6**n_subj
    compare(res, null, observed, [(0, 1), (0, -1)])


def _null(c: np.ndarray) -> np.ndarray:
    from scipy.linalg import null_space

    return null_space(c[None, :])


def test_repeated_two_sessions_equals_paired(paired_small):
    base, fu = paired_small
    m = base.shape[0]
    data = np.concatenate([base, fu])
    subj = np.r_[np.arange(m), np.arange(m)]
    sess = np.r_[np.zeros(m), np.ones(m)]
    nbs = NetworkBasedStatistic(2.0, n_permutations=1000)
    rep = nbs.fit_repeated(data, subj, sess, [-1, 1])
    pair = nbs.fit_paired(base, fu)
    assert rep.exact and rep.n_distinct_available == pair.n_distinct_available == 2**m
    np.testing.assert_allclose(rep.statistic, pair.statistic, rtol=1e-9)
    np.testing.assert_allclose(np.sort(rep.null_distribution), np.sort(pair.null_distribution))
    assert [c.p_fwe for c in rep.components] == [c.p_fwe for c in pair.components]


# --------------------------------------------------------------------------- calibration and power


def test_familywise_error_rate_is_controlled_under_the_null():
    rng = np.random.default_rng(2026)
    n_datasets, n, m = 240, 10, 12
    hits = 0
    for k in range(n_datasets):
        base = sym(rng.standard_normal((m, n, n)))
        fu = sym(rng.standard_normal((m, n, n)))
        res = NetworkBasedStatistic(2.0, n_permutations=200, random_state=k).fit_paired(base, fu)
        hits += any(c.p_fwe < 0.05 for c in res.components)
    fwer = hits / n_datasets
    upper = stats.binom.ppf(0.99, n_datasets, 0.05) / n_datasets
    print(f"FWER = {fwer:.4f} over {n_datasets} null datasets (99% binomial bound {upper:.4f})")
    assert fwer <= upper


def test_planted_component_is_found_with_precision_and_recall():
    rng = np.random.default_rng(42)
    n, m = 30, 20
    base = sym(rng.standard_normal((m, n, n)))
    fu = base + sym(rng.standard_normal((m, n, n)) * np.sqrt(2))
    nodes = list(range(8))
    plant(fu, nodes, 1.0)
    res = NetworkBasedStatistic(3.0, n_permutations=1000, random_state=0).fit_paired(base, fu)
    found = {(int(i), int(j)) for c in res.significant(0.05) for i, j in zip(c.i, c.j, strict=True)}
    truth = clique_edges(nodes)
    precision = len(found & truth) / max(1, len(found))
    recall = len(found & truth) / len(truth)
    print(f"precision = {precision:.3f}, recall = {recall:.3f}")
    assert precision >= 0.8
    assert recall >= 0.6


def test_two_sided_reports_positive_and_negative_components_separately():
    rng = np.random.default_rng(8)
    n, m = 16, 16
    base = sym(rng.standard_normal((m, n, n)))
    fu = base + sym(rng.standard_normal((m, n, n)))
    pos, neg = [0, 1, 2, 3, 4], [4, 5, 6, 7, 8]  # share node 4: must still not merge
    plant(fu, pos, 1.5)
    plant(fu, neg, -1.5)
    res = NetworkBasedStatistic(3.0, n_permutations=2000, random_state=1).fit_paired(base, fu)
    sig = res.significant(0.05)
    assert {c.sign for c in sig} == {1, -1}
    union = nx.Graph()
    for c in sig:
        assert np.all(np.sign(c.statistic) == c.sign)
        edges = set(zip(c.i.tolist(), c.j.tolist(), strict=True))
        own, other = (
            (clique_edges(pos), clique_edges(neg))
            if c.sign > 0
            else (clique_edges(neg), clique_edges(pos))
        )
        assert not edges & other  # never merged with the opposite sign
        assert len(edges & own) >= 0.8 * len(own)
        assert len(edges & own) >= 0.8 * len(edges)
        union.add_edges_from(edges)
    # thresholding |t| would have merged them: they touch at node 4
    assert nx.is_connected(union)
    frame = res.to_frame()
    for _, grp in frame.groupby("component"):
        assert len(set(np.sign(grp["statistic"]))) == 1


# --------------------------------------------------------------------------- exactness reporting


def test_exactness_reporting_with_five_pairs(paired_small):
    base, fu = paired_small
    base, fu = base[:5], fu[:5]
    one = NetworkBasedStatistic(2.0, alternative="greater", n_permutations=5000).fit_paired(
        base, fu
    )
    two = NetworkBasedStatistic(2.0, alternative="two-sided", n_permutations=5000).fit_paired(
        base, fu
    )
    for r in (one, two):
        assert r.exact and r.n_distinct_available == 32 and r.n_permutations == 32
    assert one.min_attainable_p == pytest.approx(1 / 32)
    assert two.min_attainable_p == pytest.approx(2 / 32) == pytest.approx(0.0625)
    assert all(c.p_fwe >= 0.0625 for c in two.components)
    text = two.summary()
    assert (
        "EXACT" in text
        and "32" in text
        and "0.0625" in text
        and "no component can reach p < 0.05" in text
    )


def test_random_mode_includes_identity_and_unique_draws():
    rng = np.random.default_rng(0)
    rel = sign_flip_set(12, 500, rng)
    assert not rel.exact and rel.n == 500 and rel.n_distinct == 4096
    assert np.all(rel.table[0] == 1)
    assert len({row.tobytes() for row in rel.table}) == 500
    design = np.column_stack([np.r_[np.ones(6), np.zeros(6)], np.r_[np.zeros(6), np.ones(6)]])
    rel = make_relabelling_set("permute", design, 300, rng)
    assert rel.n_distinct == 924 and not rel.exact
    np.testing.assert_array_equal(rel.table[0], np.arange(12))
    groups = {design[row, 0].tobytes() for row in rel.table}
    assert len(groups) == 300  # distinct group assignments, not just distinct index vectors
    exact = make_relabelling_set("permute", design[[0, 1, 2, 6, 7, 8]], 100, rng)
    assert exact.exact and exact.n == 20


def test_random_mode_p_values_and_reproducibility(paired_small):
    base, fu = paired_small
    kw = {"threshold": 2.0, "n_permutations": 40, "random_state": 3}
    r1 = NetworkBasedStatistic(**kw).fit_paired(base, fu)
    r2 = NetworkBasedStatistic(**kw, chunk_size=7).fit_paired(base, fu)
    assert not r1.exact and r1.n_permutations == 40
    assert r1.min_attainable_p <= 2 / 40
    np.testing.assert_array_equal(r1.null_distribution, r2.null_distribution)
    for c in r1.components:
        b = np.count_nonzero(r1.null_distribution[1:] >= c.size)
        assert c.p_fwe == pytest.approx((b + 1) / 40)
    assert "Monte Carlo" in r1.summary() and "(b + 1) / (k + 1)" in r1.summary()


# --------------------------------------------------------------------------- Freedman-Lane confounding


def test_freedman_lane_removes_confounded_effect_keeps_true_effect():
    rng = np.random.default_rng(17)
    n, na, nb = 14, 20, 20
    age = np.r_[rng.normal(0.8, 0.6, na), rng.normal(-0.8, 0.6, nb)]
    grp = np.r_[np.ones(na), np.zeros(nb)]
    y = sym(rng.standard_normal((na + nb, n, n)))
    confounded, true_effect = [0, 1, 2, 3, 4], [7, 8, 9, 10, 11]
    plant(y, confounded, 1.5 * age)  # driven by age only
    plant(y, true_effect, 1.6 * grp)  # genuine group difference
    a, b = y[:na], y[na:]
    nbs = NetworkBasedStatistic(3.0, n_permutations=1000, random_state=0)
    without = nbs.fit_two_sample(a, b)
    with_cov = nbs.fit_two_sample(a, b, covariates=age)

    def detected(res, nodes):
        truth = clique_edges(nodes)
        return any(
            c.p_fwe < 0.05 and len(set(zip(c.i.tolist(), c.j.tolist(), strict=True)) & truth) >= 3
            for c in res.components
        )

    assert detected(without, confounded)  # the confound looks like a group effect
    assert not detected(with_cov, confounded)  # ... until age is in the model
    assert detected(with_cov, true_effect)
    assert with_cov.df == na + nb - 3


# --------------------------------------------------------------------------- options and outputs


def test_p_threshold_and_outputs(paired_small):
    base, fu = paired_small
    labels = [f"roi{k}" for k in range(8)]
    res = NetworkBasedStatistic(0.05, threshold_type="p", n_permutations=100).fit_paired(
        base, fu, node_labels=labels
    )
    assert res.threshold_t == pytest.approx(stats.t.isf(0.05, 5))
    frame = res.to_frame()
    assert list(frame.columns) == [
        "component",
        "contrast",
        "sign",
        "i",
        "j",
        "label_i",
        "label_j",
        "statistic",
        "size",
        "p_fwe",
    ]
    assert len(frame) == sum(c.n_edges for c in res.components)
    g = res.component_graph(0)
    assert isinstance(g, nx.Graph) and g.number_of_edges() == res.components[0].n_edges
    assert nx.is_connected(g) and g.graph["p_fwe"] == res.components[0].p_fwe
    assert g.nodes[int(res.components[0].i[0])]["label"].startswith("roi")
    with pytest.raises(AttributeError):
        res.exact = False  # type: ignore[misc]
    with pytest.raises(ValueError):
        res.statistic[0, 1] = 1.0
    assert res.parameters["threshold_type"] == "p" and res.seed is None


def test_progress_is_logged(paired_small, caplog):
    base, fu = paired_small
    with caplog.at_level(logging.INFO, logger="pipeline.stats.nbs"):
        NetworkBasedStatistic(2.0, n_permutations=64, chunk_size=8).fit_paired(base, fu)
    assert any("relabellings" in r.getMessage() for r in caplog.records)


# --------------------------------------------------------------------------- bad input


def test_nan_nodes_are_excluded_consistently_and_reported(paired_small):
    base, fu = paired_small
    base = base.copy()
    fu = fu.copy()
    base[2, 3, :] = np.nan
    base[2, :, 3] = np.nan
    fu[4, 6, 1] = fu[4, 1, 6] = np.nan  # one bad edge: one of its nodes goes
    res = NetworkBasedStatistic(2.0, n_permutations=100).fit_paired(base, fu)
    assert res.excluded_nodes == (1, 3)
    assert np.isnan(res.statistic[3]).all() and np.isnan(res.statistic[:, 1]).all()
    assert all(3 not in c.nodes and 1 not in c.nodes for c in res.components)
    assert "excluded nodes" in res.summary()
    clean = NetworkBasedStatistic(2.0, n_permutations=100).fit_paired(
        np.delete(np.delete(paired_small[0], [1, 3], 1), [1, 3], 2),
        np.delete(np.delete(paired_small[1], [1, 3], 1), [1, 3], 2),
    )
    keep = [0, 2, 4, 5, 6, 7]
    np.testing.assert_allclose(res.statistic[np.ix_(keep, keep)], clean.statistic)


def test_bad_input_raises_clear_errors(paired_small):
    base, fu = paired_small
    nbs = NetworkBasedStatistic(2.0, n_permutations=100)
    with pytest.raises(ValueError, match="same shape"):
        nbs.fit_paired(base, fu[:-1])
    with pytest.raises(ValueError, match="n_nodes"):
        nbs.fit_paired(base[:, :, :-1], fu[:, :, :-1])
    asym = base.copy()
    asym[0, 0, 1] += 1.0
    with pytest.raises(ValueError, match="symmetric"):
        nbs.fit_paired(asym, fu)
    with pytest.raises(ValueError, match="too few"):
        nbs.fit_paired(base[:1], fu[:1])
    with pytest.raises(ValueError, match="too few"):
        nbs.fit_paired(base[:2], fu[:2], covariates=[0.0, 1.0])
    with pytest.raises(ValueError, match="covariates"):
        nbs.fit_paired(base, fu, covariates=np.ones(3))
    with pytest.raises(ValueError, match="sum to zero"):
        nbs.fit_repeated(
            np.concatenate([base, fu]),
            np.r_[np.arange(6), np.arange(6)],
            np.r_[np.zeros(6), np.ones(6)],
            [1, 1],
        )
    with pytest.raises(ValueError, match="threshold"):
        NetworkBasedStatistic(-1.0)
    with pytest.raises(ValueError, match="alternative"):
        NetworkBasedStatistic(alternative="both")  # type: ignore[arg-type]
    inf = base.copy()
    inf[0, 0, 1] = inf[0, 1, 0] = np.inf
    with pytest.raises(ValueError, match="infinite"):
        nbs.fit_paired(inf, fu)


@pytest.mark.parametrize("noise", [0.0, 1e-15])
def test_edge_with_the_same_change_in_every_subject_is_left_out_and_reported(noise, caplog):
    """An edge that changes by exactly (or up to float noise) the same amount in every
    subject has no residual variance: its t would be ~1e6-1e16 and seed a component. It is
    left out (t = 0), listed in ``degenerate_edges``, the summary and a warning; every
    other edge's t is unchanged."""
    rng = np.random.default_rng(8)
    n, nodes = 6, 8
    base = np.stack([sym(rng.normal(size=(nodes, nodes))) for _ in range(n)])
    follow = base + np.stack([sym(rng.normal(size=(nodes, nodes))) for _ in range(n)])
    follow[:, 2, 5] = follow[:, 5, 2] = base[:, 2, 5] + 0.3 + noise * rng.standard_normal(n)
    follow[:, 0, 1] = follow[:, 1, 0] = base[:, 0, 1]  # no change at all
    nbs = NetworkBasedStatistic(threshold=2.0, n_permutations=64, random_state=0)
    with caplog.at_level(logging.WARNING, logger="pipeline.stats.nbs"):
        res = nbs.fit_paired(base, follow)
    assert set(res.degenerate_edges) == {(0, 1), (2, 5)}
    assert res.statistics[0, 2, 5] == 0 and res.statistics[0, 0, 1] == 0
    assert "without residual variance" in caplog.text and "2-5" in caplog.text
    assert "excluded edges without residual variance" in res.summary()
    assert all((2, 5) not in {tuple(sorted(e)) for e in c.edges} for c in res.components)
    d = follow[:, 3, 6] - base[:, 3, 6]  # an ordinary edge: the one-sample t
    assert res.statistics[0, 3, 6] == pytest.approx(stats.ttest_1samp(d, 0).statistic)


@pytest.mark.parametrize("size", ["extent", "intensity"])
def test_both_one_sided_equals_two_separate_one_sided_runs(paired_small, size):
    """NBS-toolbox contrasts: [1] and [-1] as two tests with their own nulls. Each equals
    the single one-sided run (itself checked against brute force above), and the smallest
    attainable p is the one-sided 1/64, not the two-sided 2/64."""
    base, fu = paired_small
    kw = {"size": size, "n_permutations": 5000}
    both = NetworkBasedStatistic(2.0, alternative="both-one-sided", **kw).fit_paired(base, fu)
    runs = {1: NetworkBasedStatistic(2.0, alternative="greater", **kw).fit_paired(base, fu),
            -1: NetworkBasedStatistic(2.0, alternative="less", **kw).fit_paired(base, fu)}
    for sign, single in runs.items():
        mine = sorted((round(c.size, 8), c.p_fwe) for c in both.components if c.sign == sign)
        ref = sorted((round(c.size, 8), c.p_fwe) for c in single.components)
        assert mine == ref and len(ref) > 0
        np.testing.assert_allclose(both.null_by_test[both.tests.index((0, sign))],
                                   single.null_distribution)
    assert both.min_attainable_p == pytest.approx(1 / 64)
    assert "two separate one-sided tests" in both.summary()
