"""The whole diffusion stage on a real scanner series without a T1w (a DWI-only session).

Data: a 32-direction Philips Achieva 3T DTI series (NIMHANS Bengaluru 2008, distributed in
neurolabusc/dcm_qa_philips under the 2-clause BSD licence; ../shared/data/real/philips-dti32):
128 x 128 x 60 x 33 at 1.75 x 1.75 x 2.5 mm, LPS storage, b-values 999.99996 etc., pixdim4 NaN
in the header, one b = 0 and 32 directions at b = 1000, no T1w. ``dwi_with-trace`` is the same
series with the scanner's derived isotropic (trace) image kept as a 34th volume with b = 0
and a zero vector, as a converter that does not drop it writes it.

What is checked, through the command line as a user runs it:

* a session with a DWI series and no T1w is inventoried (the missing T1w is a reason, not
  a failure) and the diffusion stage runs on the DWI alone: denoising, motion / eddy-current
  correction, brain mask from the DWI, tensor maps, QC, the ROIs ``wholebrain`` and ``WM_FA``;
  the outputs and the report list what was not produced and why;
* the trace volume is left out with a warning naming it;
* the tensor maps agree with MRtrix3 ``dwi2tensor`` in its default estimator (WLS with
  the measured signal as weights, then two iterations re-weighted by the predicted signal)
  + ``tensor2metric`` on the stage's own preprocessed series, volumes and mask: median
  |dFA| < 0.005 and median relative |dMD| < 1 %. Ours is DIPY's two-pass WLS (OLS, then
  one pass weighted by the OLS prediction): not the same estimator, compared as such;
* with the trace volume left out, FA equals the run on the series without it to 1e-6.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

DATA = Path(__file__).resolve().parents[2] / "shared/data/real/philips-dti32"

pytestmark = [
    pytest.mark.skipif(not (DATA / "dwi.nii.gz").exists(), reason=f"real DWI not found: {DATA}"),
    pytest.mark.slow,
    pytest.mark.integration,
]

STEM = "sub-01_ses-1"


def _bids(root: Path, source: str) -> Path:
    """A one-session BIDS dataset whose only image is the real DWI series ``source``."""
    bids = root / "bids"
    dwi_dir = bids / "sub-01/ses-1/dwi"
    dwi_dir.mkdir(parents=True)
    (bids / "dataset_description.json").write_text(
        json.dumps({"Name": "philips-dti32", "BIDSVersion": "1.8.0"}))
    (bids / "participants.tsv").write_text("participant_id\nsub-01\n")
    for ext in (".nii.gz", ".bval", ".bvec"):
        shutil.copy(DATA / f"{source}{ext}", dwi_dir / f"{STEM}_dwi{ext}")
    return bids


def _run(root: Path, source: str, stages: list[str], config: str = "") -> Path:
    from workflows.cli import main

    bids, out = _bids(root, source), root / "derivatives"
    args = [str(bids), str(out), "participant", "--stages", *stages,
            "--work-dir", str(root / "work"), "--nprocs", "2"]
    if config:
        (root / "cfg.yaml").write_text(config)
        args += ["--config", str(root / "cfg.yaml")]
    assert main(args) == 0
    return out


def _dwi(out: Path, name: str) -> Path:
    return out / f"sub-01/ses-1/dwi/{STEM}_{name}"


@pytest.fixture(scope="module")
def stage(tmp_path_factory):
    """Inventory, diffusion stage and report on the series with the trace volume."""
    root = tmp_path_factory.mktemp("realdwi")
    return _run(root, "dwi_with-trace", ["inventory", "dwi", "tract", "func", "report"])


def test_session_without_t1w_is_inventoried_with_the_reason(stage):
    from workflows.inventory import DWI_ONLY_REASON

    inv = pd.read_csv(stage / f"sub-01/ses-1/{STEM}_inventory.tsv", sep="\t")
    t1w = inv[inv["modality"] == "T1w"].iloc[0]
    assert t1w["status"] == "skipped" and t1w["note"] == DWI_ONLY_REASON
    dwi = inv[inv["modality"] == "dwi"].iloc[0]
    assert dwi["status"] == "used" and "volume 33" in dwi["note"] and "trace" in dwi["note"]
    assert not (stage / "sub-01/ses-1/anat").exists()  # no structural stage ran


def test_trace_volume_is_left_out_with_a_warning_naming_it(stage):
    meta = json.loads(_dwi(stage, "space-dwi_model-tensor_param-fa_dwimap.json").read_text())
    params = meta["Parameters"]
    derived = params["derived_volumes_left_out"]
    assert [d["volume"] for d in derived] == [33]
    assert "trace" in derived[0]["reason"] and "33" in derived[0]["reason"]
    assert any("33" in w and "trace" in w for w in params["input_warnings"])
    pre = nib.load(_dwi(stage, "space-dwi_desc-preproc_dwi.nii.gz"))
    assert pre.shape[3] == 33  # 1 b = 0 + 32 directions
    bvals = np.loadtxt(_dwi(stage, "space-dwi_desc-preproc_dwi.bval"))
    assert (bvals < 50).sum() == 1 and np.allclose(bvals[bvals > 50], 1000, atol=1e-3)


def test_dwi_only_outputs_say_what_was_not_produced(stage):
    table = pd.read_csv(_dwi(stage, "space-dwi_model-tensor_roistats.tsv"), sep="\t")
    assert set(table["roi"]) == {"wholebrain", "WM_FA"}
    fa = table[(table["metric"] == "fa")].set_index("roi")["median"]
    # adult brain: FA >= 0.2 white matter has a median of 0.3-0.5 (measured 0.35), the
    # whole brain less
    assert 0.3 < fa["WM_FA"] < 0.5 and fa["wholebrain"] < fa["WM_FA"]
    meta = json.loads(_dwi(stage, "space-dwi_model-tensor_roistats.json").read_text())
    assert any("NAWM" in k for k in meta["NotProduced"])
    assert not _dwi(stage, "from-dwi_to-T1w_mode-image_xfm.json").exists()
    mask_meta = json.loads(_dwi(stage, "space-dwi_desc-brain_mask.json").read_text())
    assert "median_otsu" in mask_meta["Description"] and "no T1w" in mask_meta["Description"]
    figs = stage / "sub-01/ses-1/figures"
    assert (figs / f"{STEM}_desc-fa_dwi.svg").exists()
    assert not (figs / f"{STEM}_desc-b0toT1w_dwi.svg").exists()
    html = (stage / f"{STEM}.html").read_text()
    assert "not produced" in html and "no T1w" in html


def test_tensor_maps_agree_with_mrtrix3_default_on_the_stages_own_series(stage, tmp_path):
    if shutil.which("dwi2tensor") is None:
        if os.environ.get("CI"):
            pytest.fail("MRtrix3 (dwi2tensor) is required in CI")
        pytest.skip("MRtrix3 not installed")
    pre = _dwi(stage, "space-dwi_desc-preproc_dwi")
    mask = _dwi(stage, "space-dwi_desc-brain_mask.nii.gz")
    meta = json.loads(_dwi(stage, "space-dwi_model-tensor_param-fa_dwimap.json").read_text())
    keep = ",".join(str(k) for k in meta["Parameters"]["tensor"]["volumes_fitted"])
    series = tmp_path / "dwi.mif"  # the volumes our fit used, with their rotated gradients
    subprocess.run(["mrconvert", "-quiet", "-force", "-fslgrad", f"{pre}.bvec", f"{pre}.bval",
                    "-coord", "3", keep, f"{pre}.nii.gz", str(series)], check=True)
    subprocess.run(["dwi2tensor", "-quiet", "-force", "-mask", str(mask), str(series),
                    str(tmp_path / "dt.mif")], check=True)
    subprocess.run(["tensor2metric", "-quiet", "-force", "-mask", str(mask),
                    str(tmp_path / "dt.mif"), "-fa", str(tmp_path / "fa.nii"),
                    "-adc", str(tmp_path / "md.nii"), "-vector", str(tmp_path / "v1.nii"),
                    "-modulate", "none"], check=True)
    m = np.asanyarray(nib.load(mask).dataobj) > 0
    ours_fa = nib.load(_dwi(stage, "space-dwi_model-tensor_param-fa_dwimap.nii.gz")).get_fdata()[m]
    ours_md = nib.load(_dwi(stage, "space-dwi_model-tensor_param-md_dwimap.nii.gz")).get_fdata()[m]
    mr_fa = nib.load(tmp_path / "fa.nii").get_fdata()[m]
    mr_md = nib.load(tmp_path / "md.nii").get_fdata()[m]
    ok = np.isfinite(mr_fa) & np.isfinite(mr_md) & (mr_md > 0) & (ours_md > 0)
    dfa = np.median(np.abs(ours_fa[ok] - mr_fa[ok]))
    dmd = np.median(np.abs(ours_md[ok] / mr_md[ok] - 1))
    print(f"real series, stage output vs MRtrix3 dwi2tensor default: median |dFA| {dfa:.4f}, "
          f"median |dMD| {dmd:.3%} over {ok.sum()} voxels")
    assert dfa < 0.005 and dmd < 0.01
    # principal directions in world coordinates (the series is stored LPS; MRtrix3 reads
    # the FSL b-vectors in its own convention): the same axis in white matter
    ours_v1 = nib.load(_dwi(stage, "space-dwi_model-tensor_param-v1_dwimap.nii.gz")).get_fdata()[m]
    mr_v1 = nib.load(tmp_path / "v1.nii").get_fdata()[m]
    wm = ok & (ours_fa > 0.4)
    cos = np.abs(np.sum(ours_v1[wm] * mr_v1[wm], axis=1))
    print(f"principal direction vs MRtrix3 in {wm.sum()} voxels with FA > 0.4: median "
          f"{np.degrees(np.arccos(np.median(np.clip(cos, 0, 1)))):.2f} deg")
    assert np.median(cos) > np.cos(np.radians(2.0))
    # the NaN pixdim4 of the raw header does not reach the outputs
    pre_img = nib.load(f"{pre}.nii.gz")
    assert np.all(np.isfinite(pre_img.header["pixdim"]))


def test_fa_without_the_trace_volume_equals_the_series_without_it(tmp_path_factory):
    """Both series through the stage with the deterministic steps only (no denoising, no
    motion correction, so that the comparison takes seconds): identical FA."""
    cfg = "dwi:\n  denoise: none\n  motion_correction: false\n"
    fa = {}
    for source in ("dwi", "dwi_with-trace"):
        out = _run(tmp_path_factory.mktemp(source), source, ["dwi"], cfg)
        fa[source] = nib.load(_dwi(out, "space-dwi_model-tensor_param-fa_dwimap.nii.gz")).get_fdata()
    assert np.abs(fa["dwi"] - fa["dwi_with-trace"]).max() < 1e-6
    assert fa["dwi"].max() > 0.5  # the maps are not empty
