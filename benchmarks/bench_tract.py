"""Benchmark the tract stage (tractography + tractometry) on the trial preset.

Writes (or reuses, ``--keep``) subject 01 of the ``trial`` preset (2 mm DWI, 66
volumes), runs the structural and diffusion stages of the first and last
sessions if their outputs are missing (not timed), then times
``msmri ... participant --stages tract`` per session in a child process: wall
time and peak memory (sampled resident set of the whole process tree and of the
largest process) against the targets (<= 3 minutes, <= 3 GB on 2 cores). The
reference is the diffusion stage's tensor-fit node time, read from its Nipype
runtime report (measured when that stage ran, so on a possibly different machine
load), so the ratio says roughly what tracking costs relative to a tensor fit.

Accuracy against the phantom's truth, for every bundle and session:

* Dice of the bundle's density mask (streamline count > 0, DWI grid) with the
  truth bundle mask;
* profile accuracy: the fraction of nodes whose FA / MD / AD / RD profile value is
  within 10 % of the truth profile, i.e. DIPY ``afq_profile`` of the truth map with
  the same (cleaned, oriented) streamlines of the written ``.trk``;
* node-1 consistency: distance (MNI mm) between the mean first points of the
  bundle in the two sessions.

``--model`` picks the fibre-orientation model (tensor, csa or csd; ``tract.model``)
and ``--format`` the tractogram format (trk or trx), passed to the stage as a
``--config`` file.

Usage::

    python benchmarks/bench_tract.py [--keep DIR] [--nprocs 2] [--model csd] [--format trx]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keep", type=Path, default=None, help="reuse / keep data in this folder")
    ap.add_argument("--nprocs", type=int, default=2)
    ap.add_argument("--model", choices=("tensor", "csa", "csd"), default="tensor")
    ap.add_argument("--format", choices=("trk", "trx"), default="trk")
    args = ap.parse_args()

    import nibabel as nib
    import pandas as pd
    from _measure import trial_subject
    from dipy.io.stateful_tractogram import Space
    from dipy.io.streamline import load_tractogram
    from dipy.stats.analysis import afq_profile
    from dipy.tracking.streamline import set_number_of_points

    from pipeline.phantom.trial import PRESETS, make_subject
    from pipeline.tract.bundles import load_bundle_definitions

    spec = PRESETS["trial"]
    first, last = spec.sessions[0], spec.sessions[-1]
    trial = trial_subject(args.keep, "msmri-bench-tract-", args.nprocs)
    root, out, work = trial.root, trial.out, trial.root / "work"

    def dwi(ses, name):
        return out / f"sub-01/ses-{ses}/dwi/sub-01_ses-{ses}_{name}"

    for ses in (first, last):
        trial.ensure(ses, "anat", out / f"sub-01/ses-{ses}/anat/sub-01_ses-{ses}_volumes.tsv")
        trial.ensure(ses, "dwi", dwi(ses, "space-dwi_model-tensor_roistats.tsv"))
    cfg = root / f"bench_tract_{args.model}_{args.format}.yaml"
    cfg.write_text(f"tract:\n  model: {args.model}\n  tractogram_format: {args.format}\n")
    extra = ("--config", str(cfg))
    runs = {ses: trial.timed(ses, "tract", extra) for ses in (first, last)}  # no cached Nipype results

    shape = nib.load(dwi(first, "space-dwi_model-tensor_param-fa_dwimap.nii.gz")).shape
    print(f"tract stage, trial preset ({'x'.join(map(str, shape))}, 2 mm), sub-01, --nprocs {args.nprocs}, "
          f"tract.model {args.model}, .{args.format}")
    for ses, r in runs.items():
        print(f"  ses-{ses:<9} wall {r.wall_s:6.1f} s (target 180)   peak memory: process tree "
              f"{r.peak_tree_mb:6.0f} MB (target 3072), largest process {r.peak_process_mb:.0f} MB")
    report = work / f"sub-01_ses-{first}/dwi_wf/tensor/_report/report.rst"
    if report.exists():
        text = report.read_text()
        fit_s = [float(line.split(":")[-1]) for line in text.splitlines() if line.startswith("* duration")]
        if fit_s:
            print(f"  reference: the diffusion stage's tensor-fit node took {fit_s[0]:.1f} s; "
                  f"ratio tract stage / tensor fit {runs[first].wall_s / fit_s[0]:.0f}")

    defs = load_bundle_definitions()
    subject = make_subject(spec, 0)
    print(f"  {'session':9s} {'bundle':12s} {'status':8s} {'n':>5s} {'Dice':>5s}  "
          "nodes within 10 % of truth (fa md ad rd)")
    starts = {}
    for ses in (first, last):
        summ = pd.read_csv(dwi(ses, "space-dwi_model-tensor_tractstats.tsv"), sep="\t",
                           keep_default_na=False, na_values="n/a")
        prof = pd.read_csv(dwi(ses, "space-dwi_model-tensor_tractprofiles.tsv"), sep="\t",
                           na_values="n/a")
        ref = str(dwi(ses, "space-dwi_model-tensor_param-fa_dwimap.nii.gz"))
        aff = nib.load(ref).affine
        to_mni = subject.to_template(ses, "dwi")

        def truth(name, ses=ses):
            path = root / f"truth/sub-01/ses-{ses}/dwi/sub-01_ses-{ses}_{name}.nii.gz"
            return np.asarray(nib.load(path).dataobj, dtype=np.float64)

        for row in summ.itertuples():
            ent = row.bundle.replace("_", "")
            tmask = truth(f"space-dwi_bundle-{defs[row.bundle].truth_label}_mask") > 0
            if row.status != "ok":
                print(f"  {ses:9s} {row.bundle:12s} {row.status:8s} {0:5d} {0:5.2f}  ({row.reason})")
                continue
            dens = np.asarray(nib.load(dwi(ses, f"space-dwi_bundle-{ent}_desc-density_dwimap.nii.gz")).dataobj) > 0
            dice = 2 * (dens & tmask).sum() / (dens.sum() + tmask.sum())
            sl = load_tractogram(str(dwi(ses, f"space-dwi_model-{args.model}_bundle-{ent}_tractography.{args.format}")),
                                 ref, to_space=Space.RASMM, bbox_valid_check=False).streamlines
            fg = set_number_of_points(sl, nb_points=100)
            acc = []
            for m in ("fa", "md", "ad", "rd"):
                tp = afq_profile(truth(f"space-dwi_model-tensor_param-{m}_dwimap"), fg, aff)
                ours = prof[(prof.bundle == row.bundle) & (prof.metric == m) & ~prof.lesion_masked.astype(bool)]
                ours = ours.sort_values("node")["value"].to_numpy() / (1 if m == "fa" else 1e3)
                acc.append(float(np.mean(np.abs(ours - tp) <= 0.1 * np.abs(tp))))
            starts[ses, row.bundle] = to_mni(np.array([s[0] for s in sl])).mean(axis=0)
            print(f"  {ses:9s} {row.bundle:12s} {row.status:8s} {row.n_streamlines:5d} {dice:5.2f}  "
                  + " ".join(f"{a:.2f}" for a in acc))
    for name in defs:
        if (first, name) in starts and (last, name) in starts:
            gap = np.linalg.norm(starts[first, name] - starts[last, name])
            print(f"  node 1 of {name}: {gap:.1f} mm apart (MNI) between ses-{first} and ses-{last}")
    params = json.loads(dwi(first, "space-dwi_model-tensor_tractstats.json").read_text())
    tracking = params.get("Parameters", {}).get("tracking", {})
    if args.model != "tensor":
        print(f"  orientation model: {tracking.get('orientation_model')}")
    print(f"  whole-brain streamlines: {tracking.get('n_streamlines')} from "
          f"{tracking.get('n_seed_voxels')} seed voxels x {tracking.get('seeds_per_voxel')}")


if __name__ == "__main__":
    main()
