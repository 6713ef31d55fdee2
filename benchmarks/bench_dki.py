"""Benchmark the DKI fit against MRtrix3 ``dwi2tensor -dkt`` on a brain-sized phantom.

Builds a 2-shell kurtosis phantom on the trial preset's DWI grid (2 mm,
78x98x81 voxels; 6 b=0 + 30 directions at b=1000 + 30 at b=2000 by default,
SNR 25, no motion; :func:`pipeline.phantom.dwi.simulate_dwi` with
``kurtosis=True``), writes it as int16 NIfTI with FSL ``.bval``/``.bvec`` and
the true brain mask into a temporary folder, then times, each as a whole child
process tree (start-up, imports, loading, fit inside the mask, writing the maps)
with wall time and peak resident memory (:mod:`benchmarks._measure`),
``--repeats`` interleaved rounds:

(a) ours: :func:`pipeline.dwi.kurtosis.fit_kurtosis` (WLS, ``--nprocs``
    worker processes), writing MK, AK, RK, KFA, FA, MD, AD, RD;
(b) MRtrix3: ``dwi2tensor -dkt`` with its default estimator (WLS + 2 IWLS
    iterations) + ``tensor2metric -fa -adc`` (``-nthreads`` =
    ``--nprocs``). MRtrix3 3.0.3's ``tensor2metric`` has no kurtosis outputs,
    so its MK/AK/RK are computed afterwards, untimed, from its (D, W) with
    the definitions ours uses (MK / RK by quadrature, AK DIPY's): MRtrix3 does strictly
    less work in the timed run.

It prints wall times, peak memory, the ratio ours / MRtrix3 (target <= 2), the
agreement of ours with MRtrix3 in the brain mask (median |d|) and both against
the truth (white-matter medians).

Usage::

    python benchmarks/bench_dki.py [--voxel 2.0] [--nprocs 2] [--repeats 3] [--keep DIR]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import run_child

OURS = """
import sys, types, nibabel as nib, numpy as np
from pipeline.gradients import read_bvals_bvecs
from pipeline.dwi.kurtosis import fit_kurtosis
dwi, bval, bvec, mask, out, nprocs = sys.argv[1:7]
img = nib.load(dwi)
data = np.asarray(img.dataobj)
bvals, bvecs = read_bvals_bvecs(bval, bvec, n_volumes=data.shape[-1])
gtab = types.SimpleNamespace(bvals=bvals, bvecs=bvecs)
m = fit_kurtosis(data, gtab, np.asarray(nib.load(mask).dataobj) > 0, n_procs=int(nprocs))
for k in ("mk", "ak", "rk", "kfa", "fa", "md", "ad", "rd"):
    nib.save(nib.Nifti1Image(getattr(m, k), img.affine), f"{out}/{k}.nii")
"""


def make_data(root: Path, voxel: float, shells: dict[float, int], n_b0: int) -> dict:
    """Write the phantom; return paths and truth maps."""
    import nibabel as nib

    from pipeline.gradients import world_to_fsl
    from pipeline.phantom.anatomy import load_template, tract_field
    from pipeline.phantom.dwi import multishell_scheme, simulate_dwi
    from pipeline.phantom.trial import FOV, ORIENTATION, PRESETS, acquisition_grid, make_subject

    spec = PRESETS["trial"]
    subject = make_subject(spec, 0)
    shape, aff = acquisition_grid(FOV["dwi"], voxel, ORIENTATION["dwi"])
    rng = np.random.default_rng(0)
    bvals, bvecs = multishell_scheme(n_b0, shells, rng)
    ph = simulate_dwi(
        grid_shape=shape, grid_affine=aff, to_template=subject.to_template(spec.sessions[0], "dwi"),
        template=load_template(spec.template_resolution), tracts=tract_field(spec.template_resolution),
        lesions=subject.lesions, session_index=0, rd_change_left_nawm=0.0,
        bvals=bvals, bvecs_world=bvecs, rng=rng, snr_b0=spec.snr_b0, kurtosis=True,
    )
    dwi = root / "dwi.nii"
    data = np.clip(np.round(ph.data), 0, np.iinfo(np.int16).max).astype(np.int16)
    nib.save(nib.Nifti1Image(data, aff), dwi)
    mask = root / "mask.nii"
    nib.save(nib.Nifti1Image(ph.truth["brain"].astype(np.uint8), aff), mask)
    fsl = world_to_fsl(ph.bvecs_world, aff)
    (root / "dwi.bval").write_text(" ".join(f"{b:g}" for b in bvals) + "\n")
    (root / "dwi.bvec").write_text(
        "\n".join(" ".join(f"{v:.6f}" for v in row) for row in fsl.T) + "\n"
    )
    wm = ph.truth["brain"] & (ph.truth["wm"] > 0.9) & (ph.truth["lesion"] < 0.01)
    return {
        "dwi": dwi, "mask": mask, "bval": root / "dwi.bval", "bvec": root / "dwi.bvec",
        "truth": {k: ph.truth[k] for k in ("mk", "ak", "rk", "kfa", "md", "fa")},
        "brain": ph.truth["brain"], "wm": wm, "shape": shape, "n_vol": len(bvals),
    }


def mrtrix_metrics(folder: Path, brain: np.ndarray) -> dict[str, np.ndarray]:
    """MK/AK/RK of MRtrix3's fitted (D, W) with our definitions (quadrature MK / RK, DIPY's AK), and its
    tensor2metric MD/FA; arrays of the brain voxels."""
    import nibabel as nib
    from dipy.reconst import dki

    from pipeline.dwi.kurtosis import _mk_rk

    dt = np.asarray(nib.load(folder / "dt.nii").dataobj, dtype=float)[brain]
    dkt = np.asarray(nib.load(folder / "dkt.nii").dataobj, dtype=float)[brain]
    mat = dt[:, [0, 3, 4, 3, 1, 5, 4, 5, 2]].reshape(-1, 3, 3)
    evals, evecs = np.linalg.eigh(mat)
    kt = dkt[:, [0, 1, 2, 3, 4, 5, 7, 6, 8, 9, 10, 11, 12, 13, 14]]  # DIPY order
    params = np.concatenate([evals[:, ::-1], evecs[:, :, ::-1].reshape(-1, 9), kt], axis=1)
    # MK / RK with our definitions (quadrature): the comparison is of the estimators
    mk_rk = _mk_rk(params, -3 / 7, 10)
    out = {
        "mk": mk_rk[0],
        "ak": dki.axial_kurtosis(params, max_kurtosis=10),
        "rk": mk_rk[1],
        "kfa": dki.kurtosis_fractional_anisotropy(params),
    }
    for k in ("md", "fa"):
        out[k] = np.asarray(nib.load(folder / f"{k}.nii").dataobj, dtype=float)[brain]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--voxel", type=float, default=2.0)
    ap.add_argument("--n-b0", type=int, default=6)
    ap.add_argument("--directions", type=int, default=30, help="per shell (b=1000 and 2000)")
    ap.add_argument("--nprocs", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--keep", type=Path, default=None, help="keep the data in this folder")
    args = ap.parse_args()
    if shutil.which("dwi2tensor") is None:
        sys.exit("dwi2tensor (MRtrix3) not found on PATH")
    import nibabel as nib

    root = args.keep or Path(tempfile.mkdtemp(prefix="msmri-bench-dki-"))
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    shells = {1000.0: args.directions, 2000.0: args.directions}
    d = make_data(root, args.voxel, shells, args.n_b0)
    print(f"data: kurtosis phantom {d['shape']} x {d['n_vol']} volumes ({args.n_b0} b=0, "
          f"{args.directions} x b=1000, {args.directions} x b=2000), {args.voxel:g} mm, int16, "
          f"{int(d['brain'].sum())} mask voxels, SNR 25; built in {time.perf_counter() - t0:.0f} s "
          f"-> {root}")
    files = [str(d[k]) for k in ("dwi", "bval", "bvec", "mask")]
    for sub in ("ours", "mrtrix"):
        (root / sub).mkdir(exist_ok=True)
    mr = root / "mrtrix"
    common = ["-nthreads", str(args.nprocs), "-quiet", "-force"]
    fit_mr = ["dwi2tensor", files[0], str(mr / "dt.nii"), "-dkt", str(mr / "dkt.nii"),
              "-mask", files[3], "-fslgrad", files[2], files[1], *common]
    metrics_mr = ["tensor2metric", str(mr / "dt.nii"), "-mask", files[3],
                  "-fa", str(mr / "fa.nii"), "-adc", str(mr / "md.nii"), *common]
    jobs = {
        "ours": [[sys.executable, "-c", OURS, *files, str(root / "ours"), str(args.nprocs)]],
        "mrtrix": [fit_mr, metrics_mr],
    }
    walls: dict[str, list[float]] = {k: [] for k in jobs}
    mems: dict[str, list[float]] = {k: [] for k in jobs}
    for _ in range(args.repeats):
        for name, cmds in jobs.items():
            wall, mem = 0.0, 0.0
            for cmd in cmds:
                run = run_child(cmd)
                wall += run.wall_s
                mem = max(mem, run.peak_tree_mb)
            walls[name].append(wall)
            mems[name].append(mem)
    med = {k: statistics.median(v) for k, v in walls.items()}
    best = {k: min(v) for k, v in walls.items()}
    print(f"\nwhole process wall time and peak tree RSS, {args.repeats} interleaved rounds:")
    print(f"  {'':<58}{'median':>8}{'min':>8}{'peak MB':>9}")
    for key, label in (
        ("ours", f"ours fit_kurtosis WLS, n_procs={args.nprocs} (8 maps)"),
        ("mrtrix", f"MRtrix3 dwi2tensor -dkt + tensor2metric -fa -adc (-nthreads {args.nprocs})"),
    ):
        print(f"  {label:<58}{med[key]:>7.2f}s{best[key]:>7.2f}s{max(mems[key]):>9.0f}")
    print(f"  ratio ours / MRtrix3: median {med['ours'] / med['mrtrix']:.2f}, "
          f"min {best['ours'] / best['mrtrix']:.2f} (target <= 2)")

    brain = d["brain"]
    ours = {k: np.asarray(nib.load(root / "ours" / f"{k}.nii").dataobj, dtype=float)[brain]
            for k in ("mk", "ak", "rk", "kfa", "md", "fa")}
    mrt = mrtrix_metrics(mr, brain)
    truth = {k: v[brain] for k, v in d["truth"].items()}
    wm = d["wm"][brain]
    print("\nagreement in the brain mask, ours vs MRtrix3 (median |d|, p90 |d|), and white-matter "
          "medians relative to the truth:")
    for k in ("mk", "ak", "rk", "kfa", "md", "fa"):
        diff = np.abs(ours[k] - mrt[k])
        rel_o = np.median(ours[k][wm]) / np.median(truth[k][wm]) - 1
        rel_m = np.median(mrt[k][wm]) / np.median(truth[k][wm]) - 1
        print(f"  {k.upper():<4} |d| median {np.median(diff):.2e}  p90 {np.percentile(diff, 90):.2e}"
              f"   WM vs truth: ours {100 * rel_o:+.1f} %  MRtrix3 {100 * rel_m:+.1f} %")
    if args.keep is None:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
