"""Benchmark the fMRI stage (preprocessing, denoising, connectome) on the trial preset.

Writes (or reuses, ``--keep``) subject 01 of the ``trial`` preset (3 mm BOLD, 160
volumes, TR 2 s, Seitzman 300 spheres), runs the structural stage of the first and
last sessions if its outputs are missing (not timed), then times
``msmri ... participant --stages func`` per session in a child process (no cached
Nipype results): wall time and peak memory (sampled resident set of the process
tree and of the largest process) against the targets (<= 2 minutes, <= 2 GB on 2
cores). The stage runs with ``func.save_preproc: true`` so that the reference can
read its preprocessed series.

Reference, in the same run: plain nilearn on the stage's own preprocessed BOLD
(``desc-preproc_bold`` in MNI space): ``NiftiSpheresMasker`` with the region table's
coordinates and the configured radius, detrend, standardise, the configured
band-pass and TR, the aCompCor confound columns of the stage's confounds TSV and its
censoring as ``sample_mask``, then ``ConnectivityMeasure(kind="correlation")``.
Printed: its time (the ratio says what preprocessing costs beyond extraction and
denoising) and the agreement of its matrix with the stage's (any difference is the
stage's doing, e.g. its region coverage rules).

Accuracy against the phantom's truth, per session:

* r(recovered, population): Pearson correlation over the upper triangle of the
  Fisher-z matrix with the Fisher z of the planted population correlation;
* r(recovered, realised): against the correlation of the noiseless region signals
  the phantom actually drew for this run (what any estimator could at best see);
* ceiling r(realised, population): how far a single run of this length can be from
  the population matrix at all (sampling error of 160 volumes);
* the planted edges' mean Fisher z, and its rise from the first to the last session.

``--group DERIVATIVES`` additionally reads a full trial run (all subjects,
``msmri synth data --preset trial`` then the pipeline; its ``truth`` folder is
found beside the BIDS folder given by ``--truth``) and prints the same correlations
for the group-mean matrix per session, the planted-edge rise per subject and the
paired t of the planted edges among all edges.

Usage::

    python benchmarks/bench_func.py [--keep DIR] [--nprocs 2] [--group DERIV --truth TRUTH]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def _upper(m: np.ndarray) -> np.ndarray:
    return m[np.triu_indices(m.shape[0], 1)]


def _r(a: np.ndarray, b: np.ndarray) -> float:
    a, b = _upper(a), _upper(b)
    ok = np.isfinite(a) & np.isfinite(b)
    return float(np.corrcoef(a[ok], b[ok])[0, 1])


def _z(r: np.ndarray) -> np.ndarray:
    return np.arctanh(np.clip(r, -0.999999, 0.999999))


def _matrix(path: Path) -> np.ndarray:
    import pandas as pd

    return pd.read_csv(path, sep="\t", index_col=0).to_numpy(dtype=float)


def _population(truth: Path, sub: str, ses: str) -> np.ndarray:
    """The planted population correlation matrix of a run."""
    folder = truth / f"sub-{sub}/ses-{ses}/func"
    return _matrix(folder / f"sub-{sub}_ses-{ses}_task-rest_stat-populationcorrelation_relmat.tsv")


def _realised(truth: Path, sub: str, ses: str) -> np.ndarray:
    """Correlation of the noiseless region signals the phantom drew for a run."""
    import pandas as pd

    ts = pd.read_csv(truth / f"sub-{sub}/ses-{ses}/func/sub-{sub}_ses-{ses}_task-rest_timeseries.tsv",
                     sep="\t")
    return np.corrcoef(ts.to_numpy(dtype=float).T)


def _planted_edges(truth: Path, sub: str, ses: str) -> np.ndarray:
    meta = json.loads((truth / f"sub-{sub}/ses-{ses}/sub-{sub}_ses-{ses}_truth.json").read_text())
    return np.asarray(meta["bold"]["planted_edges"], dtype=int)


def _nilearn_reference(func: Path, stem: str, cfg) -> tuple[float, np.ndarray]:
    """Plain nilearn from the stage's preprocessed BOLD: seconds and correlation matrix."""
    import pandas as pd
    from nilearn.connectome import ConnectivityMeasure
    from nilearn.maskers import NiftiSpheresMasker

    from pipeline.func.confounds import strategy_columns

    t0 = time.perf_counter()
    regions = pd.read_csv(func / f"{stem}_seg-seitzman_dseg.tsv", sep="\t")
    conf = pd.read_csv(func / f"{stem}_desc-confounds_timeseries.tsv", sep="\t")
    summary = pd.read_csv(func / f"{stem}_desc-summary_bold.tsv", sep="\t")
    masker = NiftiSpheresMasker(
        seeds=regions[["x", "y", "z"]].to_numpy(float), radius=cfg["sphere_radius_mm"],
        mask_img=str(func / f"{stem}_space-MNI152NLin2009aSym_desc-brain_mask.nii.gz"),
        allow_overlap=True, detrend=True, standardize="zscore_sample",
        high_pass=cfg["high_pass"], low_pass=cfg["low_pass"], t_r=float(summary["repetition_time_s"].iloc[0]),
    )
    columns = strategy_columns(cfg["strategy"], cfg["n_compcor"])
    keep = np.flatnonzero(conf["censored"].to_numpy() == 0)
    ts = masker.fit_transform(
        str(func / f"{stem}_space-MNI152NLin2009aSym_desc-preproc_bold.nii.gz"),
        confounds=conf[columns].fillna(0.0).to_numpy(), sample_mask=keep,
    )
    mat = ConnectivityMeasure(kind="correlation", standardize=False).fit_transform([ts])[0]
    return time.perf_counter() - t0, mat


def _group(deriv: Path, truth: Path, sessions: tuple[str, ...]) -> None:
    subjects = sorted(p.name[4:] for p in deriv.glob("sub-*") if p.is_dir())

    def z(sub, ses):
        return _matrix(deriv / f"sub-{sub}/ses-{ses}/func/"
                       f"sub-{sub}_ses-{ses}_task-rest_seg-seitzman_stat-fisherz_relmat.tsv")

    print(f"\ngroup: {len(subjects)} subjects in {deriv}")
    mats = {ses: np.array([z(s, ses) for s in subjects]) for ses in sessions}
    for ses in sessions:
        pop = _population(truth, subjects[0], ses)
        single = [_r(m, _z(pop)) for m in mats[ses]]
        print(f"  ses-{ses:<9} r(single run, population) {min(single):.2f} .. {max(single):.2f}   "
              f"r(group mean of {len(subjects)}, population) {_r(np.nanmean(mats[ses], 0), _z(pop)):.3f}")
    edges = _planted_edges(truth, subjects[0], sessions[-1])
    diff = mats[sessions[-1]] - mats[sessions[0]]
    rise = diff[:, edges[:, 0], edges[:, 1]].mean(axis=1)
    print(f"  planted-edge mean z rise {sessions[0]} -> {sessions[-1]} per subject: "
          + " ".join(f"{v:+.3f}" for v in rise) + f"   (rises in {int((rise > 0).sum())}/{len(rise)})")
    t = diff.mean(0) / (diff.std(0, ddof=1) / np.sqrt(len(subjects)))
    tu = _upper(t)
    tu = tu[np.isfinite(tu)]
    tp = t[edges[:, 0], edges[:, 1]]
    print(f"  paired t of the {len(edges)} planted edges: median {np.median(tp):.2f} "
          f"(range {tp.min():.2f} .. {tp.max():.2f}); edges of {tu.size} with t > 3: "
          f"{int((tu > 3).sum())}, t < -3: {int((tu < -3).sum())}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keep", type=Path, default=None, help="reuse / keep data in this folder")
    ap.add_argument("--nprocs", type=int, default=2)
    ap.add_argument("--group", type=Path, default=None, help="derivatives of a full trial run")
    ap.add_argument("--truth", type=Path, default=None, help="truth folder of that trial run")
    args = ap.parse_args()

    from _measure import trial_subject

    from pipeline.config import load_config
    from pipeline.phantom.trial import PRESETS

    spec = PRESETS["trial"]
    first, last = spec.sessions[0], spec.sessions[-1]
    trial = trial_subject(args.keep, "msmri-bench-func-", args.nprocs)
    root, out = trial.root, trial.out
    for ses in (first, last):
        trial.ensure(ses, "anat", out / f"sub-01/ses-{ses}/anat/sub-01_ses-{ses}_volumes.tsv")
    cfg_file = root / "bench_func.yaml"
    cfg_file.write_text("func:\n  save_preproc: true\n")
    cfg = load_config([cfg_file]).to_dict()["func"]
    runs = {ses: trial.timed(ses, "func", ("--config", str(cfg_file))) for ses in (first, last)}

    print(f"func stage, trial preset ({spec.bold_volumes} volumes, {spec.bold_voxel_mm:g} mm, "
          f"TR {spec.bold_tr:g} s, seitzman 300 spheres r {cfg['sphere_radius_mm']:g} mm), sub-01, "
          f"--nprocs {args.nprocs}, strategy {cfg['strategy']}")
    planted_z = {}
    for ses, r in runs.items():
        func = out / f"sub-01/ses-{ses}/func"
        stem = f"sub-01_ses-{ses}_task-rest"
        ours = _matrix(func / f"{stem}_seg-seitzman_stat-pearsoncorrelation_relmat.tsv")
        zmat = _matrix(func / f"{stem}_seg-seitzman_stat-fisherz_relmat.tsv")
        ref_s, ref = _nilearn_reference(func, stem, cfg)
        pop, real = _population(root / "truth", "01", ses), _realised(root / "truth", "01", ses)
        edges = _planted_edges(root / "truth", "01", ses)
        ok = np.isfinite(_upper(ours))
        d = np.abs(_upper(ours)[ok] - _upper(ref)[ok])
        print(f"  ses-{ses:<9} wall {r.wall_s:6.1f} s (target 120)   peak memory: process tree "
              f"{r.peak_tree_mb:6.0f} MB (target 2048), largest process {r.peak_process_mb:.0f} MB")
        print(f"    reference: plain nilearn spheres + signal cleaning + ConnectivityMeasure on the "
              f"stage's preprocessed BOLD {ref_s:.1f} s; ratio stage / reference {r.wall_s / ref_s:.1f}; "
              f"agreement r {_r(ours, ref):.4f}, max |diff| {d.max():.2e}, {int(ok.sum())} edges")
        print(f"    accuracy: r(recovered, population) {_r(zmat, _z(pop)):.3f}   "
              f"r(recovered, realised) {_r(zmat, _z(real)):.3f}   "
              f"ceiling r(realised, population) {_r(_z(real), _z(pop)):.3f}")
        planted_z[ses] = float(np.nanmean(zmat[edges[:, 0], edges[:, 1]]))
        print(f"    planted edges: mean z {planted_z[ses]:.3f} (population "
              f"{np.mean(_z(pop)[edges[:, 0], edges[:, 1]]):.3f})")
    print(f"  planted-edge mean z rise {first} -> {last}: {planted_z[last] - planted_z[first]:+.3f}")
    if args.group is not None:
        truth = args.truth or args.group.parent / "data/truth"
        _group(args.group, truth, spec.sessions)


if __name__ == "__main__":
    main()
