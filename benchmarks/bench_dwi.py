"""Benchmark the diffusion stage per subject-session on the trial preset.

Writes (or reuses) one subject of the ``trial`` preset (2 mm DWI, 6 b = 0 + 60
directions, one slice-dropout volume), runs the structural stage for the first
and last sessions (not timed), then ``msmri ... participant --stages dwi`` for
each of them in a child process, reporting wall time and peak memory (sampled
resident set of the whole process tree, and the largest single process) against
the targets (<= 3 minutes, <= 3 GB on 2 cores). The reference in the same run is
MRtrix3's ``dwi2tensor`` alone on the same raw series, so the ratio shows what
preprocessing (denoising, Gibbs, motion correction, registration, ROIs) costs on
top of a bare tensor fit.

Accuracy printed against the phantom's truth (ROIs from the truth tissue maps):
median FA / MD / AD / RD in NAWM left and right (target within 5 %), the planted
RD change of left NAWM at the last session (target within 1.5 percentage points)
and of right NAWM (target below 1.5 %), and the motion-parameter error.

Usage::

    python benchmarks/bench_dwi.py [--keep DIR] [--nprocs 2]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keep", type=Path, default=None, help="reuse / keep data in this folder")
    ap.add_argument("--nprocs", type=int, default=2)
    args = ap.parse_args()

    import nibabel as nib
    import pandas as pd
    from _measure import run_child, trial_subject

    from pipeline.dwi.rois import build_rois
    from pipeline.phantom.trial import PRESETS

    spec = PRESETS["trial"]
    first, last = spec.sessions[0], spec.sessions[-1]
    trial = trial_subject(args.keep, "msmri-bench-dwi-", args.nprocs)
    root, bids, out = trial.root, trial.root / "bids", trial.out
    for ses in (first, last):
        trial.ensure(ses, "anat", out / f"sub-01/ses-{ses}/anat/sub-01_ses-{ses}_volumes.tsv")
    runs = {ses: trial.timed(ses, "dwi") for ses in (first, last)}
    raw = bids / f"sub-01/ses-{first}/dwi/sub-01_ses-{first}_dwi"
    ref = None
    if shutil.which("dwi2tensor"):
        tmp = Path(tempfile.mkdtemp())
        ref = run_child(["dwi2tensor", "-quiet", "-force", "-nthreads", str(args.nprocs), "-fslgrad",
                         f"{raw}.bvec", f"{raw}.bval", f"{raw}.nii.gz", str(tmp / "dt.mif")])
        shutil.rmtree(tmp, ignore_errors=True)

    shape = nib.load(f"{raw}.nii.gz").shape
    print(f"diffusion stage, trial preset ({'x'.join(map(str, shape))}, 2 mm), sub-01, "
          f"--nprocs {args.nprocs}")
    for ses, r in runs.items():
        print(f"  ses-{ses:<9} wall {r.wall_s:6.1f} s (target 180)   peak memory: process tree "
              f"{r.peak_tree_mb:6.0f} MB (target 3072), largest process {r.peak_process_mb:.0f} MB")
    if ref is not None:
        print(f"  reference: MRtrix3 dwi2tensor alone on the raw series: {ref.wall_s:.1f} s; "
              f"ratio stage / dwi2tensor {runs[first].wall_s / ref.wall_s:.0f}")

    # ---- accuracy against the truth
    def table(ses):
        t = pd.read_csv(out / f"sub-01/ses-{ses}/dwi/sub-01_ses-{ses}_space-dwi_model-tensor_roistats.tsv", sep="\t")
        return {(r.roi, r.metric): r.median for r in t.itertuples()}

    def truth(ses, name):
        return np.asanyarray(nib.load(root / f"truth/sub-01/ses-{ses}/dwi/sub-01_ses-{ses}_{name}.nii.gz").dataobj)

    def truth_medians(ses):
        aff = nib.load(raw.with_name(f"sub-01_ses-{first}_dwi.nii.gz")).affine
        rois = build_rois(truth(ses, "space-dwi_label-WM_probseg"),
                          truth(ses, "space-dwi_label-lesion_probseg") >= 0.5,
                          truth(ses, "space-dwi_desc-hemi_dseg"),
                          voxel_size_mm=np.sqrt((aff[:3, :3] ** 2).sum(axis=0)))
        return {(roi, m): float(np.median(truth(ses, f"space-dwi_model-tensor_param-{m}_dwimap")[rois[roi]]))
                * (1 if m == "fa" else 1e3) for roi in ("NAWM_L", "NAWM_R") for m in ("fa", "md", "ad", "rd")}

    print("  median in NAWM, ours vs truth (diffusivities um^2/ms):")
    ours = {ses: table(ses) for ses in (first, last)}
    for ses in (first, last):
        tm = truth_medians(ses)
        cells = [f"{roi} {m} {ours[ses][roi, m]:.3f}/{tm[roi, m]:.3f} ({ours[ses][roi, m] / tm[roi, m] - 1:+.1%})"
                 for roi, m in tm]
        print(f"    ses-{ses}: " + "; ".join(cells))
    for roi in ("NAWM_L", "NAWM_R"):
        change = ours[last][roi, "rd"] / ours[first][roi, "rd"] - 1
        planted = spec.rd_change[-1] if roi == "NAWM_L" else 0.0
        print(f"  RD change {roi} ses-{last} vs ses-{first}: {change:+.2%} (planted {planted:+.0%})")
    for ses in (first, last):
        conf = pd.read_csv(out / f"sub-01/ses-{ses}/dwi/sub-01_ses-{ses}_desc-confounds_timeseries.tsv", sep="\t")
        meta = json.loads((root / f"truth/sub-01/ses-{ses}/sub-01_ses-{ses}_truth.json").read_text())["dwi"]
        true = np.asarray(meta["motion_params"])
        est = conf[["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z"]].to_numpy()
        # both relative to volume 0: our reference is the mean b = 0, the truth's is volume 0
        est, true = est - est[0], true - true[0]
        terr = np.linalg.norm(est[:, :3] - true[:, :3], axis=1)
        rerr = np.degrees(np.abs(est[:, 3:] - true[:, 3:])).max(axis=1)
        flagged = np.flatnonzero(conf["dropout_outlier"].to_numpy() > 0).tolist()
        print(f"  motion ses-{ses} (relative to volume 0): translation error median {np.median(terr):.2f} mm (max {terr.max():.2f}), "
              f"rotation error median {np.median(rerr):.2f} deg; dropout volumes flagged {flagged} "
              f"(truth {meta['dropout_volumes']})")


if __name__ == "__main__":
    main()
