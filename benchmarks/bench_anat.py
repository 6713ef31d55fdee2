"""Benchmark the structural stage per subject-session on the trial preset.

Writes one subject of the ``trial`` preset (1.5 mm T1w and FLAIR) with
``msmri synth``'s writer, then runs ``msmri BIDS OUT participant --stages anat``
for one session in a child process and reports its wall time and peak memory
(``ru_maxrss`` of the child), against the stage's targets (<= 120 s, <= 2 GB on
a 2-core machine). The reference inside the same run is the T1w -> MNI
registration alone (``register_to_template``), the stage's largest single step,
timed in its own child process so the ratio shows what the rest costs.

Usage::

    python benchmarks/bench_anat.py [--session baseline] [--nprocs 2] [--keep DIR]
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REG_CODE = """
import sys, nibabel as nib, numpy as np
from pipeline.registration import register_to_template
t1 = nib.load(sys.argv[1]); brain = nib.load(sys.argv[2])
register_to_template(nib.Nifti1Image(np.asarray(t1.dataobj, dtype=np.float32) *
                     (np.asarray(brain.dataobj) > 0), t1.affine))
"""


def _child(cmd: list[str]) -> tuple[float, float]:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wall = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0
    return wall, peak_mb


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--session", default="baseline")
    ap.add_argument("--nprocs", type=int, default=2)
    ap.add_argument("--keep", type=Path, default=None, help="reuse / keep data in this folder")
    args = ap.parse_args()

    from pipeline.phantom.trial import PRESETS
    from workflows.synth import write_trial

    root = args.keep or Path(tempfile.mkdtemp(prefix="msmri-bench-anat-"))
    if not (root / "bids/sub-01").exists():
        t0 = time.perf_counter()
        write_trial(root, PRESETS["trial"], subjects=[0])
        print(
            f"data: trial preset subject 01 written in {time.perf_counter() - t0:.1f} s -> {root}"
        )
    bids, out = root / "bids", root / "derivatives"
    t1 = bids / f"sub-01/ses-{args.session}/anat/sub-01_ses-{args.session}_T1w.nii.gz"
    truth_mask = (
        root
        / f"truth/sub-01/ses-{args.session}/anat/sub-01_ses-{args.session}_space-T1w_desc-brain_mask.nii.gz"
    )
    msmri = str(Path(sys.executable).with_name("msmri"))
    stage_wall, stage_peak = _child([
        msmri, str(bids), str(out), "participant", "--participant-label", "01",
        "--session-label", args.session, "--stages", "anat", "--nprocs", str(args.nprocs),
        "--work-dir", str(root / "work"),
    ])  # fmt: skip
    reg_wall, _ = _child([sys.executable, "-c", REG_CODE, str(t1), str(truth_mask)])
    print(f"structural stage, trial preset (1.5 mm T1w + FLAIR), sub-01 ses-{args.session}, "
          f"--nprocs {args.nprocs}")  # fmt: skip
    print(f"  {'what':<38}{'wall s':>9}{'target':>9}")
    print(f"  {'whole anat stage':<38}{stage_wall:>9.1f}{120:>9}")
    print(f"  {'reference: T1w->MNI registration only':<38}{reg_wall:>9.1f}")
    print(f"  ratio stage / registration: {stage_wall / reg_wall:.2f}")
    print(f"  peak memory of the stage process: {stage_peak:.0f} MB (target 2048 MB)")


if __name__ == "__main__":
    main()
