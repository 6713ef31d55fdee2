"""Agreement of pipeline.stats.nbs with bctpy ``nbs_bct`` and MRtrix3 ``connectomestats``.

Conventions of the references (read from their sources / documentation):

* bctpy ``nbs_bct(x, y, thresh, k, tail, paired=True)``: ``x``, ``y`` are
  ``(n, n, subjects)``; the paired t is of ``x - y``; ``tail="right"``
  thresholds ``t > thresh`` (``"both"`` thresholds ``|t|`` and merges signs,
  bctpy issue #102); ``p = #(null >= size) / k`` over ``k`` random sign flips.
* MRtrix3 3.0 ``connectomestats ... nbs``: paired design = one-sample test of
  the differences with a column of ones, ``-errors ise`` for sign flips. Its
  ``-threshold`` applies to the Z statistic converted from t (``Zstat``), only
  the positive contrast is tested, the enhanced value of an edge is its
  component's extent, and ``fwe_1mpvalue = #(null <= size) / N``, i.e. its
  p-value counts null maxima *strictly* greater than the observed size.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from pipeline.stats.nbs import NetworkBasedStatistic

pytestmark = pytest.mark.integration


def _missing(what: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{what} is required in CI")
    pytest.skip(f"{what} not available")


def _sym(a: np.ndarray) -> np.ndarray:
    s = (a + np.swapaxes(a, -1, -2)) / 2
    idx = np.arange(s.shape[-1])
    s[..., idx, idx] = 0.0
    return s


def _data(seed: int, n_nodes: int, n_pairs: int, effect: float, nodes: list[int]):
    rng = np.random.default_rng(seed)
    base = _sym(rng.standard_normal((n_pairs, n_nodes, n_nodes)))
    fu = base + _sym(rng.standard_normal((n_pairs, n_nodes, n_nodes)))
    for a in nodes:
        for b in nodes:
            if a < b:
                fu[:, a, b] += effect
                fu[:, b, a] += effect
    return base, fu


def _binom_interval(p: float, n: int, level: float = 0.999) -> tuple[float, float]:
    lo, hi = stats.binom.interval(level, n, p)
    return lo / n, hi / n


def test_bctpy_same_observed_components_and_consistent_p():
    try:
        import bct
    except ImportError:
        _missing("bctpy")
    base, fu = _data(4, 20, 12, 0.9, [0, 1, 2, 3, 4, 5])
    thr, k = 3.0, 400
    ours = NetworkBasedStatistic(thr, alternative="greater", n_permutations=5000).fit_paired(
        base, fu
    )
    assert ours.exact and ours.n_distinct_available == 4096
    pvals, adj, _ = bct.nbs_bct(
        np.moveaxis(fu, 0, -1),
        np.moveaxis(base, 0, -1),
        thr,
        k=k,
        tail="right",
        paired=True,
        seed=0,
    )
    theirs = {}
    for label in range(1, int(adj.max()) + 1):
        i, j = np.nonzero(np.triu(adj == label, 1))
        theirs[tuple(sorted(zip(i.tolist(), j.tolist(), strict=True)))] = float(pvals[label - 1])
    mine = {
        tuple(sorted(zip(c.i.tolist(), c.j.tolist(), strict=True))): c.p_fwe
        for c in ours.components
    }
    assert set(mine) == set(theirs)
    assert max(len(e) for e in mine) >= 5
    for edges, p in mine.items():  # bctpy's Monte Carlo estimate around our exact value
        print(f"extent {len(edges)}: bctpy p = {theirs[edges]:.4f}, ours (exact) = {p:.4f}")
        lo, hi = _binom_interval(p, k)
        assert lo - 1e-12 <= theirs[edges] <= hi + 1e-12


def _connectomestats() -> str:
    exe = shutil.which("connectomestats")
    if exe is None:
        _missing("MRtrix3 connectomestats")
    return str(exe)


def test_mrtrix_connectomestats_agrees_within_monte_carlo_error(tmp_path: Path):
    exe = _connectomestats()
    n_nodes, n_pairs, n_shuffles, thr = 20, 10, 1000, 2.5
    base, fu = _data(21, n_nodes, n_pairs, 0.55, [0, 1, 2, 3, 4, 5, 6])
    ours = NetworkBasedStatistic(thr, alternative="greater", n_permutations=5000).fit_paired(
        base, fu
    )
    assert ours.exact and ours.n_permutations == 2**n_pairs

    diffs = fu - base
    names = []
    for s, d in enumerate(diffs):
        names.append(f"sub{s:02d}.csv")
        np.savetxt(tmp_path / names[-1], d, delimiter=",", fmt="%.10f")
    (tmp_path / "files.txt").write_text("\n".join(names) + "\n")
    np.savetxt(tmp_path / "design.txt", np.ones((n_pairs, 1)), fmt="%d")
    np.savetxt(tmp_path / "contrast.txt", np.ones((1, 1)), fmt="%d")
    z_thr = float(stats.norm.isf(stats.t.sf(thr, ours.df)))
    out = tmp_path / "out" / "nbs_"
    out.parent.mkdir()
    cmd = [exe, "files.txt", "nbs", "design.txt", "contrast.txt", str(out), "-threshold", f"{z_thr:.12f}",
           "-errors", "ise", "-nshuffles", str(n_shuffles), "-nthreads", "1", "-quiet", "-force"]
    subprocess.run(cmd, cwd=tmp_path, check=True, capture_output=True)

    def load(name: str) -> np.ndarray:
        return np.loadtxt(f"{out}{name}.csv", delimiter=",", comments="#")

    iu = np.triu_indices(n_nodes, 1)
    np.testing.assert_allclose(load("tvalue")[iu], ours.statistic[iu], rtol=1e-6, atol=1e-6)
    enhanced = load("enhanced")
    one_minus_p = load("fwe_1mpvalue")
    ours_size = np.zeros((n_nodes, n_nodes))
    for c in ours.components:
        ours_size[c.i, c.j] = c.size
    np.testing.assert_allclose(
        enhanced[iu], ours_size[iu]
    )  # same supra-threshold edges and extents
    assert ours.components, "test data must produce components"
    null = ours.null_distribution
    for c in ours.components:
        p_mrtrix = 1.0 - one_minus_p[c.i[0], c.j[0]]
        p_strict = float(np.mean(null > c.size))  # exact, MRtrix's convention
        lo, hi = _binom_interval(p_strict, n_shuffles)
        print(
            f"extent {c.size:g}: MRtrix p = {p_mrtrix:.4f}, ours (strict, exact) = {p_strict:.4f}, ours p_FWE = {c.p_fwe:.4f}"
        )
        assert lo - 1e-9 <= p_mrtrix <= hi + 1e-9, (c.size, p_mrtrix, p_strict)
        assert c.p_fwe >= p_strict
