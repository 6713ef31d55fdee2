"""Benchmark the whole workflow end to end: synthetic trial -> Snakemake (local profile).

Generates the synthetic trial (``msmri synth --preset``; skipped with ``--bids``), then
runs the default Snakemake target with ``configs/profiles/local`` and ``--cores`` cores,
and prints:

* the total wall time of the Snakemake run, against the target (<= 30 min for the trial
  preset on 2 cores), and the generation time separately;
* per rule: job count, mean and slowest job wall time, largest peak memory, read from the
  ``benchmark:`` record every rule writes (``OUTPUT_DIR/logs/benchmarks/``);
* the reference, in the same run: the sum of all job times, i.e. the same jobs run one
  after another; the ratio wall / sum says how much the scheduling overlapped them.

Usage::

    python benchmarks/bench_e2e.py [--preset trial] [--cores 2] [--keep DIR] [--bids DIR]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TARGET_S = 30 * 60


def job_records(out: Path) -> pd.DataFrame:
    """One row per job from the Snakemake ``benchmark:`` files: rule, job, seconds, MB."""
    rows = []
    for tsv in sorted((out / "logs/benchmarks").rglob("*.tsv")):
        rec = pd.read_csv(tsv, sep="\t").iloc[-1]  # the last attempt of that job
        rows.append({"rule": tsv.parent.name, "job": tsv.stem, "s": float(rec["s"]),
                     "max_rss_mb": float(rec["max_rss"])})
    return pd.DataFrame(rows, columns=["rule", "job", "s", "max_rss_mb"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--preset", default="trial", choices=["tiny", "trial"])
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--keep", type=Path, help="work in this folder and keep it (default: a temporary one)")
    ap.add_argument("--bids", type=Path, help="an existing BIDS dataset instead of generating one")
    args = ap.parse_args(argv)

    work = args.keep or Path(tempfile.mkdtemp(prefix="msmri-e2e-"))
    work.mkdir(parents=True, exist_ok=True)
    synth_s = 0.0
    bids = args.bids
    if bids is None:
        bids = work / "bids"
        if not (bids / "dataset_description.json").exists():
            t0 = time.perf_counter()
            subprocess.run([str(BIN / "msmri"), "synth", str(work), "--preset", args.preset], check=True)
            synth_s = time.perf_counter() - t0
    out = work / "derivatives"
    cmd = [str(BIN / "snakemake"), "-s", str(ROOT / "Snakefile"), "--profile",
           str(ROOT / "configs/profiles/local"), "--cores", str(args.cores),
           "--config", f"bids_dir={bids}", f"output_dir={out}"]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, cwd=work, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    (work / "snakemake.log").write_text(res.stdout + res.stderr)

    jobs = job_records(out)
    print(f"data: {bids} ({args.preset if args.bids is None else 'given'}), {args.cores} cores")
    if synth_s:
        print(f"generation (msmri synth): {synth_s / 60:.1f} min")
    print(f"snakemake exit status {res.returncode}; log {work / 'snakemake.log'}")
    if jobs.empty:
        print("no benchmark records: nothing ran")
        return 1
    per_rule = jobs.groupby("rule").agg(jobs=("s", "size"), mean_s=("s", "mean"), max_s=("s", "max"),
                                        max_rss_mb=("max_rss_mb", "max"))
    print(per_rule.sort_values("max_s", ascending=False).round(1).to_string())
    slowest = jobs.loc[jobs["s"].idxmax()]
    serial = jobs["s"].sum()
    print(f"slowest job: {slowest['rule']} {slowest['job']} {slowest['s']:.0f} s")
    verdict = "the run FAILED" if res.returncode else "met" if wall <= TARGET_S else "NOT met"
    print(f"end to end (snakemake wall): {wall / 60:.1f} min for {len(jobs)} jobs; "
          f"target {TARGET_S / 60:.0f} min: {verdict}")
    print(f"reference, the same jobs one after another: {serial / 60:.1f} min; "
          f"wall / serial = {wall / serial:.2f}")
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if res.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
