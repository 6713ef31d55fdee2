"""Benchmark the tensor stage against MRtrix3 ``dwi2tensor`` and DIPY's defaults.

Builds a phantom DWI series of about the size of a clinical scan (default
96x96x60 voxels, 65 volumes: 5 b=0 + 60 directions at b=1000, SNR 25, one
tensor per voxel from :func:`pipeline.phantom.dwi.simulate_dwi`, no motion),
writes it as int16 NIfTI with FSL ``.bval``/``.bvec`` and the true brain mask
into a temporary folder, then times, each as a whole child process (Python
start-up, imports, loading the NIfTI and gradient files, fitting inside the
mask and writing FA/MD/AD/RD as NIfTI), ``--repeats`` interleaved rounds
(median and minimum; the minimum is the less load-sensitive figure on a
shared machine):

(a) ours: :func:`pipeline.dwi.tensor.fit_tensor` (WLS, ``--nprocs`` workers),
    with a DIPY ``GradientTable`` as the pipeline builds it, and once with the
    b-values/vectors in a plain object, which avoids importing
    ``dipy.core.gradients`` (~0.6 s of start-up);
(b) DIPY defaults: ``TensorModel(gtab).fit(data, mask=mask)`` (WLS);
(c) MRtrix3: ``dwi2tensor -mask -fslgrad`` + ``tensor2metric -fa -adc -ad -rd``
    (``-nthreads 2 -quiet -force``), with its default estimator (one WLS pass
    weighted by the measured signal, then 2 passes re-weighted by the predicted
    signal) and with ``-ols -iter 2`` (OLS, then 2 predicted-signal passes: our
    WLS plus one more pass). No ``dwi2tensor`` option is exactly our (= DIPY's)
    two-pass WLS: MRtrix3 3.0.3 re-weights only when ``-iter`` >= 2, so
    ``-ols -iter 1`` is plain OLS (equal to our OLS; printed in the agreement
    table, not timed).

It prints the wall times, the ratios to ``dwi2tensor`` and the agreement in the
mask (median |dFA|, median relative |d| of MD/AD/RD) of ours against MRtrix3
and against the truth. The fixed cost of a Python child (imports only) is
printed too. With ``--real`` it also prints the agreement on the real Philips
32-direction series (``../shared/data/real/philips-dti32/dwi.nii.gz``,
``median_otsu`` brain mask); measured there: our WLS vs the MRtrix3 default
median |dFA| 1.3e-3, median relative |dMD| 0.016 %; vs ``-ols -iter 2`` 1.6e-3,
0.020 %; our OLS vs ``-ols -iter 1`` 0 and 0 (on the tiny phantom session of
``tests/test_mrtrix_tensor.py``: 5.2e-4 / 0.006 %, 5.5e-4 / 0.006 %, 0 / 0; on this
benchmark's phantom at 48x48x30x33: 4.3e-4 / 0.005 %, 4.6e-4 / 0.005 %, 0 / 0).

Usage::

    python benchmarks/bench_tensor.py [--shape 96 96 60] [--volumes 65]
        [--nprocs 2] [--repeats 5] [--gz] [--keep DIR] [--real]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

OURS = """
import sys, nibabel as nib, numpy as np
from dipy.core.gradients import gradient_table
from pipeline.gradients import read_bvals_bvecs
from pipeline.dwi.tensor import fit_tensor
dwi, bval, bvec, mask, out, nprocs = sys.argv[1:7]
img = nib.load(dwi)
data = np.asarray(img.dataobj)
bvals, bvecs = read_bvals_bvecs(bval, bvec, n_volumes=data.shape[-1])
gtab = gradient_table(bvals, bvecs=bvecs)
m = fit_tensor(data, gtab, np.asarray(nib.load(mask).dataobj) > 0, n_procs=int(nprocs))
for k in ("fa", "md", "ad", "rd"):
    nib.save(nib.Nifti1Image(getattr(m, k), img.affine), f"{out}/{k}.nii")
"""

DIPY = """
import sys, nibabel as nib, numpy as np
from dipy.core.gradients import gradient_table
from dipy.io.gradients import read_bvals_bvecs
from dipy.reconst.dti import TensorModel
dwi, bval, bvec, mask, out = sys.argv[1:6]
img = nib.load(dwi)
data = img.get_fdata(dtype=np.float32)
bvals, bvecs = read_bvals_bvecs(bval, bvec)
fit = TensorModel(gradient_table(bvals, bvecs=bvecs)).fit(
    data, mask=np.asarray(nib.load(mask).dataobj) > 0)
for k in ("fa", "md", "ad", "rd"):
    nib.save(nib.Nifti1Image(getattr(fit, k).astype(np.float32), img.affine), f"{out}/{k}.nii")
"""

OURS_LIGHT = """
import sys, types, nibabel as nib, numpy as np
from pipeline.gradients import read_bvals_bvecs
from pipeline.dwi.tensor import fit_tensor
dwi, bval, bvec, mask, out, nprocs = sys.argv[1:7]
img = nib.load(dwi)
data = np.asarray(img.dataobj)
bvals, bvecs = read_bvals_bvecs(bval, bvec, n_volumes=data.shape[-1])
gtab = types.SimpleNamespace(bvals=bvals, bvecs=bvecs)  # no dipy.core.gradients import
m = fit_tensor(data, gtab, np.asarray(nib.load(mask).dataobj) > 0, n_procs=int(nprocs))
for k in ("fa", "md", "ad", "rd"):
    nib.save(nib.Nifti1Image(getattr(m, k), img.affine), f"{out}/{k}.nii")
"""

IMPORTS = """
import nibabel, numpy
from dipy.core.gradients import gradient_table
from pipeline.gradients import read_bvals_bvecs
from pipeline.dwi.tensor import fit_tensor
"""


def make_data(root: Path, shape: tuple[int, int, int], n_vol: int, gz: bool) -> dict:
    """Write the phantom; return paths and truth maps."""
    import nibabel as nib

    from pipeline.gradients import world_to_fsl
    from pipeline.phantom.anatomy import load_template, tract_field
    from pipeline.phantom.dwi import gradient_scheme, simulate_dwi
    from pipeline.phantom.trial import FOV, PRESETS, make_subject

    spec = PRESETS["tiny"]
    subject = make_subject(spec, 0)
    lo, hi = np.asarray(FOV["dwi"][0]), np.asarray(FOV["dwi"][1])
    vox = (hi - lo) / np.asarray(shape)
    aff = np.diag([-vox[0], vox[1], vox[2], 1.0])  # LAS, like the trial's DWI
    aff[:3, 3] = lo + vox / 2
    aff[0, 3] = lo[0] + vox[0] / 2 + (shape[0] - 1) * vox[0]
    rng = np.random.default_rng(0)
    n_b0 = max(1, round(n_vol / 13))
    bvals, bvecs = gradient_scheme(n_b0, n_vol - n_b0, 1000.0, rng)
    ph = simulate_dwi(
        grid_shape=shape, grid_affine=aff, to_template=subject.to_template(spec.sessions[0], "dwi"),
        template=load_template(spec.template_resolution), tracts=tract_field(spec.template_resolution),
        lesions=subject.lesions, session_index=0, rd_change_left_nawm=0.0,
        bvals=bvals, bvecs_world=bvecs, rng=rng, snr_b0=25.0,
    )
    dwi = root / ("dwi.nii.gz" if gz else "dwi.nii")
    data = np.clip(np.round(ph.data), 0, np.iinfo(np.int16).max).astype(np.int16)
    nib.save(nib.Nifti1Image(data, aff), dwi)
    mask = root / "mask.nii"
    nib.save(nib.Nifti1Image(ph.truth["brain"].astype(np.uint8), aff), mask)
    fsl = world_to_fsl(ph.bvecs_world, aff)
    (root / "dwi.bval").write_text(" ".join(f"{b:g}" for b in bvals) + "\n")
    (root / "dwi.bvec").write_text(
        "\n".join(" ".join(f"{v:.6f}" for v in row) for row in fsl.T) + "\n"
    )
    return {
        "dwi": dwi, "mask": mask, "bval": root / "dwi.bval", "bvec": root / "dwi.bvec",
        "truth": {k: ph.truth[k] for k in ("fa", "md", "ad", "rd")}, "brain": ph.truth["brain"],
        "n_b0": n_b0, "voxel": vox,
    }


def run_once(cmds: list[list[str]]) -> float:
    """Wall time of running ``cmds`` one after the other."""
    t0 = time.perf_counter()
    for cmd in cmds:
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.perf_counter() - t0


def interleaved(jobs: dict[str, list[list[str]]], repeats: int) -> dict[str, list[float]]:
    """Wall times of every job, the jobs taking turns in each round so that a
    change of load on a shared machine affects them alike."""
    walls: dict[str, list[float]] = {k: [] for k in jobs}
    for _ in range(repeats):
        for name, cmds in jobs.items():
            walls[name].append(run_once(cmds))
    return walls


def fit_only(d: dict, nprocs: int, repeats: int) -> tuple[float, float, float]:
    """Median in-process time of the fit alone (data already in memory)."""
    import nibabel as nib
    from dipy.core.gradients import gradient_table
    from dipy.reconst.dti import TensorModel

    from pipeline.dwi.tensor import fit_tensor
    from pipeline.gradients import read_bvals_bvecs

    data = np.asarray(nib.load(d["dwi"]).dataobj)
    mask = np.asarray(nib.load(d["mask"]).dataobj) > 0
    bvals, bvecs = read_bvals_bvecs(d["bval"], d["bvec"])
    gtab = gradient_table(bvals, bvecs=bvecs)

    def med(fn) -> float:
        walls = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            walls.append(time.perf_counter() - t0)
        return statistics.median(walls)

    return (
        med(lambda: fit_tensor(data, gtab, mask, n_procs=nprocs)),
        med(lambda: fit_tensor(data, gtab, mask, n_procs=1)),
        med(lambda: TensorModel(gtab).fit(data.astype(np.float32), mask=mask).fa),
    )


def load_maps(folder: Path, names: dict[str, str]) -> dict[str, np.ndarray]:
    import nibabel as nib

    return {k: np.asarray(nib.load(folder / v).dataobj, dtype=np.float64) for k, v in names.items()}


def agreement(a: dict, b: dict, mask: np.ndarray) -> dict[str, float]:
    """Median |dFA| and median relative |d| of MD, AD, RD inside mask."""
    out = {"fa": float(np.median(np.abs(a["fa"][mask] - b["fa"][mask])))}
    for k in ("md", "ad", "rd"):
        ref = b[k][mask]
        ok = ref > 1e-5
        out[k] = float(np.median(np.abs(a[k][mask][ok] - ref[ok]) / ref[ok]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", type=int, nargs=3, default=[96, 96, 60])
    ap.add_argument("--volumes", type=int, default=65)
    ap.add_argument("--nprocs", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--gz", action="store_true", help="write the DWI as .nii.gz (default .nii)")
    ap.add_argument("--keep", type=Path, default=None, help="keep the data in this folder")
    ap.add_argument("--real", action="store_true",
                    help="also print the agreement on the real Philips series")
    args = ap.parse_args()
    if shutil.which("dwi2tensor") is None:
        sys.exit("dwi2tensor (MRtrix3) not found on PATH")

    root = args.keep or Path(tempfile.mkdtemp(prefix="msmri-bench-tensor-"))
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    d = make_data(root, tuple(args.shape), args.volumes, args.gz)
    print(f"data: phantom {tuple(args.shape)} x {args.volumes} volumes ({d['n_b0']} b=0, b=1000), "
          f"voxel {np.round(d['voxel'], 2).tolist()} mm, int16 {d['dwi'].name}, "
          f"{int(d['brain'].sum())} mask voxels, SNR 25; built in {time.perf_counter() - t0:.0f} s "
          f"-> {root}")
    files = [str(d[k]) for k in ("dwi", "bval", "bvec", "mask")]
    py = sys.executable
    for sub in ("ours", "dipy", "mrtrix", "mrtrix_ols2", "mrtrix_ols1"):
        (root / sub).mkdir(exist_ok=True)

    def mrtrix(out: str, extra: list[str]) -> list[list[str]]:
        o = root / out
        common = ["-nthreads", "2", "-quiet", "-force"]
        return [
            ["dwi2tensor", files[0], str(o / "dt.nii"), "-mask", files[3],
             "-fslgrad", files[2], files[1], *extra, *common],
            ["tensor2metric", str(o / "dt.nii"), "-mask", files[3], "-fa", str(o / "fa.nii"),
             "-adc", str(o / "md.nii"), "-ad", str(o / "ad.nii"), "-rd", str(o / "rd.nii"), *common],
        ]

    walls = interleaved(
        {
            "ours": [[py, "-c", OURS, *files, str(root / "ours"), str(args.nprocs)]],
            "light": [[py, "-c", OURS_LIGHT, *files, str(root / "ours"), str(args.nprocs)]],
            "dipy": [[py, "-c", DIPY, *files, str(root / "dipy")]],
            "mrtrix": mrtrix("mrtrix", []),
            "mrtrix_ols2": mrtrix("mrtrix_ols2", ["-ols", "-iter", "2"]),
            "imports": [[py, "-c", IMPORTS]],
        },
        args.repeats,
    )
    med = {k: statistics.median(v) for k, v in walls.items()}
    best = {k: min(v) for k, v in walls.items()}
    fit_ours, fit_ours1, fit_dipy = fit_only(d, args.nprocs, args.repeats)

    names = {k: f"{k}.nii" for k in ("fa", "md", "ad", "rd")}
    run_once(mrtrix("mrtrix_ols1", ["-ols", "-iter", "1"]))  # = OLS in MRtrix3 3.0.3; not timed
    maps = {s: load_maps(root / s, names)
            for s in ("ours", "dipy", "mrtrix", "mrtrix_ols2", "mrtrix_ols1")}
    maps["ours_ols"] = ours_ols(d)
    mask = d["brain"]
    print(f"\nwhole process wall time, median and min of {args.repeats} interleaved rounds "
          "(each a child process incl. start-up, loading, fit in the mask, writing FA/MD/AD/RD):")
    rows = [
        ("ours", f"ours fit_tensor WLS, n_procs={args.nprocs}"),
        ("light", "ours, gtab as plain bvals/bvecs (no DIPY import)"),
        ("dipy", "DIPY TensorModel defaults (WLS)"),
        ("mrtrix", "MRtrix3 dwi2tensor (default) + tensor2metric"),
        ("mrtrix_ols2", "MRtrix3 dwi2tensor -ols -iter 2 + tensor2metric"),
        ("imports", "(python child: imports only)"),
    ]
    print(f"  {'':<52}{'median':>8}{'min':>8}")
    for key, name in rows:
        print(f"  {name:<52}{med[key]:>7.2f}s{best[key]:>7.2f}s")
    print(f"  fit only, in this process (data in memory), median: ours n_procs={args.nprocs} "
          f"{fit_ours:.2f} s, ours n_procs=1 {fit_ours1:.2f} s, DIPY {fit_dipy:.2f} s")
    print(f"  {'ratios (median / min)':<42}")
    for num, den, label in (
        ("ours", "mrtrix", "ours / dwi2tensor default"),
        ("light", "mrtrix", "ours (no DIPY import) / dwi2tensor default"),
        ("ours", "mrtrix_ols2", "ours / dwi2tensor -ols -iter 2"),
        ("dipy", "mrtrix", "DIPY / dwi2tensor default"),
        ("dipy", "ours", "DIPY / ours"),
    ):
        print(f"  {label:<44}{med[num] / med[den]:>6.2f}{best[num] / best[den]:>7.2f}")

    print("\nagreement in the brain mask: median |dFA|, median relative |dMD|, |dAD|, |dRD|")
    pairs = [
        ("ours WLS vs MRtrix3 default", maps["ours"], maps["mrtrix"]),
        ("ours WLS vs MRtrix3 -ols -iter 2", maps["ours"], maps["mrtrix_ols2"]),
        ("ours WLS vs -ols -iter 1 (= OLS)", maps["ours"], maps["mrtrix_ols1"]),
        ("ours OLS vs -ols -iter 1 (= OLS)", maps["ours_ols"], maps["mrtrix_ols1"]),
        ("ours vs DIPY WLS", maps["ours"], maps["dipy"]),
        ("ours vs truth", maps["ours"], d["truth"]),
        ("DIPY vs truth", maps["dipy"], d["truth"]),
        ("MRtrix3 default vs truth", maps["mrtrix"], d["truth"]),
    ]
    print_agreement(pairs, mask)
    if args.real:
        real_agreement(root / "real")
    if args.keep is None:
        shutil.rmtree(root, ignore_errors=True)


def print_agreement(pairs: list, mask: np.ndarray) -> None:
    for name, a, b in pairs:
        ag = agreement(a, b, mask)
        print(f"  {name:<34} FA {ag['fa']:.2e}  MD {100 * ag['md']:.3f} %  "
              f"AD {100 * ag['ad']:.3f} %  RD {100 * ag['rd']:.3f} %")


def ours_ols(d: dict) -> dict[str, np.ndarray]:
    """Our OLS maps of the phantom (in this process)."""
    import nibabel as nib

    from pipeline.dwi.tensor import fit_tensor
    from pipeline.gradients import read_bvals_bvecs

    data = np.asarray(nib.load(d["dwi"]).dataobj)
    mask = np.asarray(nib.load(d["mask"]).dataobj) > 0
    bvals, bvecs = read_bvals_bvecs(d["bval"], d["bvec"])
    gtab = type("G", (), {"bvals": bvals, "bvecs": bvecs})()
    m = fit_tensor(data, gtab, mask, method="OLS")
    return {k: getattr(m, k).astype(np.float64) for k in ("fa", "md", "ad", "rd")}


def real_agreement(root: Path) -> None:
    """Agreement of ours with MRtrix3 on the real Philips series (median_otsu brain mask)."""
    import nibabel as nib

    from pipeline.dwi.gradtable import DwiGradients
    from pipeline.dwi.preprocess import dwi_brain_mask
    from pipeline.dwi.tensor import fit_tensor

    src = Path(__file__).resolve().parents[2] / "shared" / "data" / "real" / "philips-dti32"
    dwi, bval, bvec = (src / f"dwi.{ext}" for ext in ("nii.gz", "bval", "bvec"))
    if not dwi.exists():
        print(f"\nreal series not found: {src}")
        return
    root.mkdir(parents=True, exist_ok=True)
    img = nib.load(dwi)
    data = np.asarray(img.dataobj, dtype=np.float32)
    grads = DwiGradients.from_files(dwi, bval, bvec)
    mask = dwi_brain_mask(data, grads)
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), img.affine), root / "mask.nii")
    files = [str(dwi), str(bval), str(bvec), str(root / "mask.nii")]
    maps = {}
    for name, extra in (("default", []), ("ols2", ["-ols", "-iter", "2"]),
                        ("ols1", ["-ols", "-iter", "1"])):
        o = root / name
        o.mkdir(exist_ok=True)
        run_once([
            ["dwi2tensor", files[0], str(o / "dt.nii"), "-mask", files[3], "-fslgrad", files[2],
             files[1], *extra, "-nthreads", "2", "-quiet", "-force"],
            ["tensor2metric", str(o / "dt.nii"), "-mask", files[3], "-fa", str(o / "fa.nii"),
             "-adc", str(o / "md.nii"), "-ad", str(o / "ad.nii"), "-rd", str(o / "rd.nii"),
             "-quiet", "-force"],
        ])
        maps[name] = load_maps(o, {k: f"{k}.nii" for k in ("fa", "md", "ad", "rd")})
    gtab = grads.dipy_gtab()
    for method in ("WLS", "OLS"):
        m = fit_tensor(data, gtab, mask, method=method, n_procs=2)
        maps[method] = {k: getattr(m, k).astype(np.float64) for k in ("fa", "md", "ad", "rd")}
    print(f"\nreal Philips series {data.shape}, median_otsu mask {int(mask.sum())} voxels: "
          "median |dFA|, median relative |dMD|, |dAD|, |dRD|")
    print_agreement([
        ("ours WLS vs MRtrix3 default", maps["WLS"], maps["default"]),
        ("ours WLS vs MRtrix3 -ols -iter 2", maps["WLS"], maps["ols2"]),
        ("ours WLS vs -ols -iter 1 (= OLS)", maps["WLS"], maps["ols1"]),
        ("ours OLS vs -ols -iter 1 (= OLS)", maps["OLS"], maps["ols1"]),
    ], mask)


if __name__ == "__main__":
    main()
