"""Benchmark Snakemake DAG construction (``snakemake -n``) on a large BIDS skeleton.

Writes a BIDS skeleton of ``--subjects`` subjects x 3 sessions (baseline, m03, m06;
T1w, FLAIR, DWI with .bval / .bvec, resting-state BOLD, JSON sidecars; the images are
empty files, which neither pybids nor the DAG reads), then times in child processes:

* ``snakemake -n`` on the project's Snakefile for the default target (every
  participant and group job), against the target (<= 60 s for 500 subjects);
* the reference, in the same run: one ``bids.BIDSLayout`` index of the same
  skeleton (pybids), the floor of any BIDS-aware DAG; the ratio says how many
  such indexings the DAG construction costs.

Usage::

    python benchmarks/bench_dag.py [--subjects 500] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SESSIONS = ("baseline", "m03", "m06")


def write_skeleton(bids: Path, n_subjects: int) -> int:
    """A BIDS dataset of empty images with valid names and sidecars; returns the file count."""
    bids.mkdir(parents=True, exist_ok=True)
    (bids / "dataset_description.json").write_text(
        json.dumps({"Name": "msmri DAG benchmark skeleton", "BIDSVersion": "1.9.0"}))
    n = 1
    for i in range(1, n_subjects + 1):
        sub = f"{i:03d}"
        for ses in SESSIONS:
            stem = f"sub-{sub}_ses-{ses}"
            folder = bids / f"sub-{sub}/ses-{ses}"
            files = {
                f"anat/{stem}_T1w.nii.gz": "", f"anat/{stem}_T1w.json": "{}",
                f"anat/{stem}_FLAIR.nii.gz": "", f"anat/{stem}_FLAIR.json": "{}",
                f"dwi/{stem}_dwi.nii.gz": "", f"dwi/{stem}_dwi.json": "{}",
                f"dwi/{stem}_dwi.bval": "0 1000\n", f"dwi/{stem}_dwi.bvec": "0 1\n0 0\n0 0\n",
                f"func/{stem}_task-rest_bold.nii.gz": "",
                f"func/{stem}_task-rest_bold.json": '{"RepetitionTime": 2.0}',
            }
            for name, text in files.items():
                path = folder / name
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
            n += len(files)
    return n


def _timed(cmd: list[str], cwd: Path) -> tuple[float, str]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return wall, proc.stdout + proc.stderr


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subjects", type=int, default=500)
    ap.add_argument("--keep", type=Path, default=None, help="reuse / keep the skeleton here")
    args = ap.parse_args()

    root = args.keep or Path(tempfile.mkdtemp(prefix="msmri-bench-dag-"))
    bids = root / f"bids{args.subjects}"
    if not (bids / "dataset_description.json").exists():
        t0 = time.perf_counter()
        n_files = write_skeleton(bids, args.subjects)
        print(f"skeleton: {args.subjects} subjects x {len(SESSIONS)} sessions, {n_files} files, "
              f"written in {time.perf_counter() - t0:.1f} s -> {bids}")
    out = root / "derivatives"
    ref_s, _ = _timed([sys.executable, "-c", f"import bids; bids.BIDSLayout({str(bids)!r})"], root)
    snakemake = str(Path(sys.executable).with_name("snakemake"))
    dag_s, log = _timed([snakemake, "-n", "-q", "rules", "-s", str(ROOT / "Snakefile"), "-d", str(root),
                         "--config", f"bids_dir={bids}", f"output_dir={out}"], root)
    total = re.search(r"^total\s+(\d+)$", log, flags=re.M)
    jobs = int(total.group(1)) if total else -1
    print(f"DAG of {args.subjects} subjects x {len(SESSIONS)} sessions: snakemake -n {dag_s:.1f} s "
          f"(target 60 s), {jobs} jobs")
    print(f"  reference: one pybids BIDSLayout index of the same skeleton {ref_s:.1f} s; "
          f"ratio DAG / index {dag_s / ref_s:.2f}")
    if args.keep is None:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
