"""Benchmark the network-based statistic against bctpy and MRtrix3 connectomestats.

Same synthetic paired data for all three (default 132 nodes, 30 pairs, one
planted positive component, one-sided test ``t > 3``):

* ours: :class:`pipeline.stats.nbs.NetworkBasedStatistic` with 5000 sign flips;
* bctpy ``nbs_bct(..., tail="right", paired=True)``: run with a reduced number
  of permutations (``--bct-perms``, default 20) and extrapolated per
  permutation (its cost is linear in the number of permutations; the observed
  statistic costs one more pass, so per-permutation = wall / (k + 1));
* MRtrix3 ``connectomestats nbs`` (one-sample design on the differences,
  ``-errors ise``, threshold converted to its Z scale): run with
  ``--mrtrix-shuffles`` (default 500) and extrapolated linearly to 5000.

Prints times, ratios (targets: >= 100x vs connectomestats, >= 1000x vs bctpy,
5000 permutations in <= ~3 s) and whether the observed components are
identical, then the time for 300 nodes x 200 pairs x 10000 permutations.

Usage::

    python benchmarks/bench_nbs.py [--nodes 132] [--pairs 30] [--permutations 5000]
        [--bct-perms 20] [--mrtrix-shuffles 500] [--threads 2] [--skip-bct]
        [--skip-mrtrix] [--skip-large]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import stats

from pipeline.stats.nbs import NetworkBasedStatistic


def make_data(n_nodes: int, n_pairs: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Paired symmetric matrices with a planted positive 10-node component."""
    rng = np.random.default_rng(seed)

    def sym(a: np.ndarray) -> np.ndarray:
        s = (a + np.swapaxes(a, 1, 2)) / 2
        s[:, np.arange(n_nodes), np.arange(n_nodes)] = 0.0
        return s

    base = sym(rng.standard_normal((n_pairs, n_nodes, n_nodes)))
    fu = base + sym(rng.standard_normal((n_pairs, n_nodes, n_nodes)))
    nodes = np.arange(10)
    block = np.ix_(np.arange(n_pairs), nodes, nodes)
    fu[block] += 0.8 * (1 - np.eye(10))
    return base, fu


def edge_sets(pairs: list[tuple[np.ndarray, np.ndarray]]) -> set[tuple[tuple[int, int], ...]]:
    return {tuple(sorted(zip(i.tolist(), j.tolist(), strict=True))) for i, j in pairs}


def run_ours(base: np.ndarray, fu: np.ndarray, n_perm: int, thr: float):
    nbs = NetworkBasedStatistic(thr, alternative="greater", n_permutations=n_perm, random_state=0)
    t0 = time.perf_counter()
    res = nbs.fit_paired(base, fu)
    return time.perf_counter() - t0, res


def run_bct(base: np.ndarray, fu: np.ndarray, k: int, thr: float):
    import bct

    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        _, adj, _ = bct.nbs_bct(
            np.moveaxis(fu, 0, -1),
            np.moveaxis(base, 0, -1),
            thr,
            k=k,
            tail="right",
            paired=True,
            seed=0,
        )
    wall = time.perf_counter() - t0
    comps = []
    for label in range(1, int(adj.max()) + 1):
        i, j = np.nonzero(np.triu(adj == label, 1))
        if i.size:
            comps.append((i, j))
    return wall, comps


def run_mrtrix(base: np.ndarray, fu: np.ndarray, shuffles: int, thr: float, threads: int):
    exe = shutil.which("connectomestats")
    if exe is None:
        return None
    n_pairs, n_nodes, _ = base.shape
    with tempfile.TemporaryDirectory(prefix="msmri-bench-nbs-") as tmp:
        root = Path(tmp)
        names = []
        for s, d in enumerate(fu - base):
            names.append(f"sub{s:03d}.csv")
            np.savetxt(root / names[-1], d, delimiter=",", fmt="%.10f")
        (root / "files.txt").write_text("\n".join(names) + "\n")
        np.savetxt(root / "design.txt", np.ones((n_pairs, 1)), fmt="%d")
        np.savetxt(root / "contrast.txt", np.ones((1, 1)), fmt="%d")
        z_thr = float(stats.norm.isf(stats.t.sf(thr, n_pairs - 1)))
        (root / "out").mkdir()
        cmd = [exe, "files.txt", "nbs", "design.txt", "contrast.txt", "out/nbs_", "-threshold", f"{z_thr:.12f}",
               "-errors", "ise", "-nshuffles", str(shuffles), "-nthreads", str(threads), "-quiet", "-force"]
        t0 = time.perf_counter()
        subprocess.run(cmd, cwd=root, check=True, capture_output=True)
        wall = time.perf_counter() - t0
        enhanced = np.loadtxt(root / "out" / "nbs_enhanced.csv", delimiter=",", comments="#")
    # components = connected sets of supra-threshold edges (enhanced > 0)
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    i, j = np.nonzero(np.triu(enhanced > 0, 1))
    comps = []
    if i.size:
        _, lab = connected_components(
            coo_matrix((np.ones(i.size), (i, j)), shape=(n_nodes, n_nodes)), directed=False
        )
        for c in np.unique(lab[i]):
            sel = lab[i] == c
            comps.append((i[sel], j[sel]))
    return wall, comps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=132)
    ap.add_argument("--pairs", type=int, default=30)
    ap.add_argument("--permutations", type=int, default=5000)
    ap.add_argument("--threshold", type=float, default=3.0)
    ap.add_argument("--bct-perms", type=int, default=20)
    ap.add_argument("--mrtrix-shuffles", type=int, default=500)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-bct", action="store_true")
    ap.add_argument("--skip-mrtrix", action="store_true")
    ap.add_argument("--skip-large", action="store_true")
    args = ap.parse_args()
    n_perm, thr = args.permutations, args.threshold

    base, fu = make_data(args.nodes, args.pairs)
    run_ours(base[:, :20, :20], fu[:, :20, :20], 50, thr)  # warm-up (imports, BLAS)
    t_ours, res = run_ours(base, fu, n_perm, thr)
    ours_sets = edge_sets([(c.i, c.j) for c in res.components])
    print(
        f"data: {args.nodes} nodes ({args.nodes * (args.nodes - 1) // 2} edges), {args.pairs} pairs, t > {thr}, one-sided"
    )
    print(f"ours   : {n_perm} permutations in {t_ours:.2f} s ({1e3 * t_ours / n_perm:.3f} ms/permutation); "
          f"{len(res.components)} components, largest {max((c.size for c in res.components), default=0):g} edges, "
          f"exact={res.exact}, min attainable p={res.min_attainable_p:.2g}")

    if not args.skip_bct:
        try:
            wall, comps = run_bct(base, fu, args.bct_perms, thr)
        except ImportError:
            print("bctpy  : not installed (pip install bctpy)")
        else:
            per = wall / (args.bct_perms + 1)
            est = per * (n_perm + 1)
            same = edge_sets(comps) == ours_sets
            print(f"bctpy  : {args.bct_perms} permutations in {wall:.2f} s -> {1e3 * per:.1f} ms/permutation, "
                  f"EXTRAPOLATED {est:.0f} s for {n_perm}; ratio {est / t_ours:.0f}x (target >= 1000x); "
                  f"observed components identical: {same}")

    if not args.skip_mrtrix:
        out = run_mrtrix(base, fu, args.mrtrix_shuffles, thr, args.threads)
        if out is None:
            print("MRtrix3: connectomestats not found")
        else:
            wall, comps = out
            est = wall * n_perm / args.mrtrix_shuffles
            same = edge_sets(comps) == ours_sets
            kind = "measured" if args.mrtrix_shuffles == n_perm else "EXTRAPOLATED linearly"
            print(f"MRtrix3: {args.mrtrix_shuffles} shuffles in {wall:.1f} s with {args.threads} threads -> "
                  f"{kind} {est:.0f} s for {n_perm}; ratio {est / t_ours:.0f}x (target >= 100x); "
                  f"observed components identical: {same}")

    if not args.skip_large:
        base, fu = make_data(300, 200, seed=1)
        t_big, res = run_ours(base, fu, 10000, thr)
        print(f"large  : 300 nodes x 200 pairs x 10000 permutations in {t_big:.1f} s "
              f"({len(res.components)} components, exact={res.exact})")


if __name__ == "__main__":
    main()
