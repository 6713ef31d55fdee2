"""Benchmark the tractography + tractometry stage on a trial-preset phantom session.

Simulates subject 0, last session of ``PRESETS["trial"]`` (2 mm DWI, 66
volumes), then times, in this process, the tensor fit (WLS), whole-brain
deterministic tensor tracking (seeds in WM + lesions), bundle recognition
(``configs/tracts.yaml``, truth DWI->MNI mapping of the phantom), cleaning and
FA/MD/AD/RD profiles. Prints wall time of each step, peak memory (ru_maxrss of
this process; the phantom simulation is excluded from the timings but not from
the peak memory), per-bundle Dice of the density mask against the truth bundle
mask, and profile accuracy (fraction of nodes whose FA is within 10 % of the
truth FA sampled with the same streamlines and weights).

Targets: <= 3 min and <= 3 GB on 2 cores. Usage::

    python benchmarks/bench_tract.py [--seeds-per-voxel 1]
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds-per-voxel", type=int, default=1)
    args = ap.parse_args()

    from pipeline.phantom.trial import PRESETS, make_subject, simulate_session

    spec = PRESETS["trial"]
    t0 = time.perf_counter()
    subject = make_subject(spec, 0)
    ses = simulate_session(spec, subject, len(spec.sessions) - 1)
    print(f"phantom simulation (not counted): {time.perf_counter() - t0:.1f} s")

    from dipy.tracking.streamline import set_number_of_points, values_from_volume

    from pipeline.dwi.gradtable import DwiGradients
    from pipeline.dwi.tensor import fit_tensor
    from pipeline.tract.bundles import load_bundle_definitions
    from pipeline.tract.profiles import bundle_density, tractometry
    from pipeline.tract.tracking import TrackingParams, track_tensor

    def arr(key: str) -> np.ndarray:
        return np.asarray(ses.truth_images[key].dataobj, dtype=np.float32)

    dwi = ses.images["dwi"]
    affine = dwi.affine
    brain = arr("space-dwi_desc-brain_mask") > 0
    lesion = arr("space-dwi_label-lesion_probseg")
    wm = (arr("space-dwi_label-WM_probseg") + lesion) > 0.5
    times = {}
    t = time.perf_counter()
    grads = DwiGradients.from_world(ses.bvals, ses.bvecs_world, affine)
    tm = fit_tensor(np.asarray(dwi.dataobj), grads.dipy_gtab(), brain, n_procs=2)
    times["tensor fit"] = time.perf_counter() - t
    t = time.perf_counter()
    params = TrackingParams(seeds_per_voxel=args.seeds_per_voxel, fa_threshold=0.15, seed=1)
    sl = track_tensor(tm.v1, tm.fa, affine, brain_mask=brain, seed_mask=wm, lesion=lesion,
                      params=params)  # fmt: skip
    times["tracking"] = time.perf_counter() - t
    t = time.perf_counter()
    defs = load_bundle_definitions()
    maps = {"fa": tm.fa, "md": tm.md, "ad": tm.ad, "rd": tm.rd}
    res = tractometry(sl, defs, maps, affine, to_mni=subject.to_template(ses.session, "dwi"),
                      lesion=lesion)  # fmt: skip
    times["recognition+cleaning+profiles"] = time.perf_counter() - t
    total = sum(times.values())
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    print(f"streamlines: {len(sl)}")
    for k, v in times.items():
        print(f"{k:32s} {v:7.1f} s")
    print(f"{'total':32s} {total:7.1f} s (target <= 180 s)")
    print(f"peak memory (ru_maxrss): {peak_gb:.2f} GB (target <= 3 GB)")
    truth_fa = arr("space-dwi_model-tensor_param-fa_dwimap").astype(float)
    print(f"{'bundle':6s} {'status':9s} {'n':>5s} {'Dice':>6s} {'FA<=10%':>8s}")
    for name, r in res.items():
        truth = arr(f"space-dwi_bundle-{defs[name].truth_label}_mask") > 0
        dens = bundle_density(r.streamlines, affine, truth.shape) > 0
        dice = 2 * (dens & truth).sum() / max(dens.sum() + truth.sum(), 1)
        acc = float("nan")
        if r.status == "ok":
            fg = set_number_of_points(r.streamlines, nb_points=100)
            vals = np.asarray(values_from_volume(truth_fa, fg, affine))
            tp = (r.weights * vals).sum(axis=0)
            acc = float(np.mean(np.abs(r.profiles["fa"] - tp) <= 0.1 * tp))
        print(f"{name:6s} {r.status:9s} {r.n_streamlines:5d} {dice:6.3f} {acc:8.2f}")


if __name__ == "__main__":
    main()
