"""Benchmark the AFQ node-wise Mahalanobis distances: ours vs DIPY's gaussian_weights.

The tract stage computes these distances once per cleaning pass (up to 5) and
once more for the profile weights of every bundle. Profiling the tract job of the
trial preset (sub-02 ses-m03, 8 bundles, 200-5500 streamlines each) showed
DIPY's per-streamline, per-node Python loop taking 250 s of the 280 s job.

On one synthetic bundle (``--streamlines`` noisy streamlines of 40-120 points,
float32 as read from a .trk file, resampled to ``--nodes`` nodes) this prints
the wall time of ``dipy.stats.analysis.gaussian_weights(...,
return_mahalnobis=True)`` (the reference) and of
:func:`pipeline.tract.weights.gaussian_weights`, their ratio, and the largest
relative difference of the distances (DIPY averages in float32, we in float64).

Usage::

    python benchmarks/bench_tract_weights.py [--streamlines 2000] [--nodes 100] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--streamlines", type=int, default=2000)
    ap.add_argument("--nodes", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3, help="runs of ours (the best is kept)")
    args = ap.parse_args()

    from dipy.stats.analysis import gaussian_weights as dipy_weights
    from dipy.tracking.streamline import Streamlines

    from pipeline.tract.weights import gaussian_weights

    rng = np.random.default_rng(0)
    lines = []
    for _ in range(args.streamlines):
        k = int(rng.integers(40, 120))
        x = np.linspace(-60, 60, k) + rng.normal(0, 0.5, k)
        yz = rng.normal(0, 3, 2) + np.cumsum(rng.normal(0, 0.3, (k, 2)), axis=0)
        lines.append(np.column_stack([x, yz]).astype(np.float32))
    bundle = Streamlines(lines)

    t0 = time.perf_counter()
    with np.errstate(all="ignore"):
        ref = np.asarray(dipy_weights(bundle, n_points=args.nodes, return_mahalnobis=True))
    t_dipy = time.perf_counter() - t0
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        ours = gaussian_weights(bundle, n_points=args.nodes, return_mahalanobis=True)
        times.append(time.perf_counter() - t0)
    t_ours = min(times)
    rel = np.nanmax(np.abs(ours - ref) / np.abs(ref))
    print(f"bundle: {args.streamlines} streamlines x {args.nodes} nodes (float32)")
    print(f"DIPY gaussian_weights (reference): {t_dipy:8.3f} s")
    print(f"pipeline.tract.weights:            {t_ours:8.3f} s (best of {args.repeats})")
    print(f"speed-up: {t_dipy / t_ours:.0f}x; largest relative difference {rel:.1e}")


if __name__ == "__main__":
    main()
