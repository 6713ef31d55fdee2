"""NBS power on the synthetic trial: the power analysis against direct simulation.

The trial preset plants the seed study's 6-month subnetwork (113 regions, 143 edges)
at the largest effect its resting-state model allows. This script

1. estimates the change noise from ONE synthetic trial of ``--pilot`` subjects (what a
   user has: the study's own connectomes; reduced, region-level simulation
   :func:`pipeline.phantom.trial.simulate_region_connectomes`),
2. predicts detection / recall / precision of the planted subnetwork with
   :func:`pipeline.stats.nbs_power.nbs_power` over a grid of subject counts and
   one-sided p thresholds (the phantom's planted Fisher-z change per edge), plus the
   standardised effects of ``--effects`` on random subnetworks of the same size,
3. measures the same cells by direct simulation of ``--direct`` synthetic trials (the
   reference), and the null variant's family-wise error rate (trial-null preset),

and prints both with Monte Carlo standard errors and the time of each.

    python benchmarks/bench_nbs_power.py --reps 50 --direct 50
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pilot", type=int, default=5, help="subjects of the noise-source study")
    ap.add_argument("--n", default="5,10,15,20,30", help="subject counts")
    ap.add_argument("--thresholds", default="0.001,0.0001", help="one-sided p thresholds")
    ap.add_argument(
        "--effects", default="1.0,1.5", help="standardised effects (random subnetworks)"
    )
    ap.add_argument("--reps", type=int, default=50, help="simulated studies per cell (prediction)")
    ap.add_argument("--direct", type=int, default=50, help="direct synthetic trials per cell")
    ap.add_argument("--null-seeds", type=int, default=200, help="trial-null trials (n = 5)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from pipeline.phantom.bold import population_correlation
    from pipeline.phantom.trial import PRESETS, bold_design, simulate_region_connectomes
    from pipeline.stats.nbs import NetworkBasedStatistic
    from pipeline.stats.nbs_power import ChangeNoise, nbs_power

    spec = PRESETS["trial"]
    last = len(spec.sessions) - 1
    design = bold_design(spec)
    ns = [int(v) for v in args.n.split(",")]
    thresholds = [float(v) for v in args.thresholds.split(",")]
    effects = [float(v) for v in args.effects.split(",")]
    base = simulate_region_connectomes(spec, args.pilot, 0, seed=10_000 + args.seed)
    follow = simulate_region_connectomes(spec, args.pilot, last, seed=10_000 + args.seed)
    noise = ChangeNoise.from_paired(base, follow, measure="fisher_z")
    r0 = population_correlation(design.loadings, design.edges, 0.0)
    r1 = population_correlation(
        design.loadings, design.edges, spec.bold_effect[last] * design.max_effect
    )
    dz = np.array([np.arctanh(r1[i, j]) - np.arctanh(r0[i, j]) for i, j in design.edges])
    print(f"trial preset: {design.atlas.n_regions} regions, planted {len(design.edges)} edges on "
          f"{len({i for e in design.edges for i in e})} regions, {spec.bold_volumes} volumes, "
          f"planted Fisher-z change {dz.mean():.3f} (mean)")
    print(f"noise from a {args.pilot}-subject synthetic trial: {noise.summary()}; "
          f"standardised planted effect ~ {dz.mean() / math.sqrt(2 / (noise.n_effective - 3)):.2f}")

    t0 = time.perf_counter()
    pred = nbs_power(noise, n_subjects=ns, effects=[1.0], thresholds=thresholds, threshold_type="p",
                     edges=design.edges, effect_type="raw", edge_effects=dz, n_repetitions=args.reps,
                     random_state=args.seed).table
    t_pred = time.perf_counter() - t0
    rand = nbs_power(noise, n_subjects=ns, effects=effects, thresholds=thresholds, threshold_type="p",
                     n_regions=113, n_edges=143, n_repetitions=args.reps,
                     random_state=args.seed).table

    # direct simulation (reference)
    planted = np.zeros((design.atlas.n_regions,) * 2, dtype=bool)
    for i, j in design.edges:
        planted[i, j] = planted[j, i] = True
    iu = np.triu_indices(design.atlas.n_regions, 1)
    t0 = time.perf_counter()
    direct = {}
    for n in ns:
        rows = {thr: [] for thr in thresholds}
        for seed in range(args.direct):
            b = simulate_region_connectomes(spec, n, 0, seed=seed)
            f = simulate_region_connectomes(spec, n, last, seed=seed)
            for thr in thresholds:
                res = NetworkBasedStatistic(thr, threshold_type="p", alternative="greater",
                                            n_permutations=1000, random_state=seed).fit_paired(b, f)
                found, truth = res.edge_mask(0.05)[iu], planted[iu]
                tp = int((found & truth).sum())
                rows[thr].append(
                    (tp > 0, tp / truth.sum(), tp / found.sum() if found.sum() else np.nan)
                )
        for thr in thresholds:
            a = np.array(rows[thr], dtype=float)
            direct[n, thr] = (a[:, 0].mean(), a[:, 0].std(ddof=1) / math.sqrt(len(a)),
                              a[:, 1].mean(), np.nanmean(a[:, 2]) if np.isfinite(a[:, 2]).any() else np.nan)
    t_direct = time.perf_counter() - t0

    print(f"\nplanted subnetwork of the trial, one-sided NBS (alternative greater), alpha 0.05;"
          f" predicted ({args.reps} studies per cell) vs direct ({args.direct} synthetic trials)")
    print(f"{'n':>3} {'p thr':>7} {'t thr':>6} | {'detect pred':>14} {'direct':>14} | "
          f"{'recall pred':>11} {'direct':>7} | {'prec pred':>9} {'direct':>7}")
    for _, row in pred.iterrows():
        d = direct[int(row["n_subjects"]), float(row["threshold"])]
        print(f"{int(row['n_subjects']):>3} {row['threshold']:>7g} {row['threshold_t']:>6.2f} | "
              f"{row['detection']:>6.2f} +- {row['detection_se']:.2f} {d[0]:>6.2f} +- {d[1]:.2f} | "
              f"{row['recall']:>11.3f} {d[2]:>7.3f} | {row['precision']:>9.3f} {d[3]:>7.3f}")
    print("\nrandom 113-region / 143-edge subnetworks, standardised effects (predicted)")
    print(rand[["n_subjects", "threshold", "effect", "detection", "recall", "precision",
                "false_positive"]].to_string(index=False))

    t0 = time.perf_counter()
    null = PRESETS["trial-null"]
    hits = 0
    for seed in range(args.null_seeds):
        b = simulate_region_connectomes(null, 5, 0, seed=seed)
        f = simulate_region_connectomes(null, 5, len(null.sessions) - 1, seed=seed)
        res = NetworkBasedStatistic(3.0, alternative="greater").fit_paired(b, f)
        hits += bool(res.significant(0.05))
    fwer = hits / args.null_seeds
    print(f"\ntrial-null, 5 subjects, one-sided t > 3 (the demo's pre-specified NBS): FWER "
          f"{fwer:.3f} +- {math.sqrt(max(fwer * (1 - fwer), 1e-12) / args.null_seeds):.3f} over "
          f"{args.null_seeds} synthetic trials ({time.perf_counter() - t0:.0f} s)")
    cells = len(ns) * len(thresholds)
    print(f"\ntime: power analysis {t_pred:.0f} s for {cells} cells x {args.reps} studies; direct "
          f"simulation {t_direct:.0f} s for {cells} cells x {args.direct} trials; ratio per study "
          f"{(t_direct / args.direct) / (t_pred / args.reps):.2f} (direct / predicted)")


if __name__ == "__main__":
    main()
