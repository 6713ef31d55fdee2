"""The diffusion stage on a two-shell phantom with kurtosis (b = 1000 and 2000, 30 directions
each, 4 b = 0), written as a BIDS session without a T1w and run through the command line.

The phantom's signal is the DKI representation of known diffusion and kurtosis tensors
(``pipeline.phantom.dwi.simulate_dwi(kurtosis=True)``), Rician noise at the trial's SNR
(25), no motion (denoising and motion correction off, so the run takes seconds). Checked:

* the tensor is fitted on b = 0 and b = 1000 only (``dwi.tensor_bmax`` 1500), the b = 2000
  shell is named as left out in the sidecar;
* the kurtosis maps are written and summarised in the ROI table;
* white-matter medians against the phantom's truth: DKI MK and AK within 10 %, the DKI's
  MD within 5 %; the tensor's MD is low by the kurtosis effect b D K / 6 that every DTI
  at b = 1000 carries (measured -15 %), and lower still with all shells (-28 %).
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from pipeline.gradients import world_to_fsl
from pipeline.phantom.trial import PRESETS, make_subject
from tests.test_dwi_kurtosis import _simulate

pytestmark = pytest.mark.integration

STEM = "sub-01_ses-1"


def _run(root: Path, ph, config: str) -> Path:
    from workflows.cli import main

    bids, out = root / "bids", root / "derivatives"
    d = bids / "sub-01/ses-1/dwi"
    d.mkdir(parents=True)
    (bids / "dataset_description.json").write_text(
        json.dumps({"Name": "two-shell phantom", "BIDSVersion": "1.8.0"}))
    nib.save(nib.Nifti1Image(ph.data, ph.affine), d / f"{STEM}_dwi.nii.gz")
    np.savetxt(d / f"{STEM}_dwi.bval", ph.bvals[None], fmt="%g")
    np.savetxt(d / f"{STEM}_dwi.bvec", world_to_fsl(ph.bvecs_world, ph.affine).T, fmt="%.8f")
    (root / "cfg.yaml").write_text(config)
    assert main([str(bids), str(out), "participant", "--stages", "dwi", "--config",
                 str(root / "cfg.yaml"), "--work-dir", str(root / "work")]) == 0
    return out


def _map(out: Path, model: str, param: str) -> np.ndarray:
    path = out / f"sub-01/ses-1/dwi/{STEM}_space-dwi_model-{model}_param-{param}_dwimap.nii.gz"
    return np.asarray(nib.load(path).dataobj, dtype=float)


BASE_CONFIG = "dwi:\n  denoise: none\n  motion_correction: false\n"


@pytest.fixture(scope="module")
def phantom():
    return _simulate(make_subject(PRESETS["tiny"], 0), noiseless=False)


@pytest.fixture(scope="module")
def runs(phantom, tmp_path_factory):
    return {
        "default": _run(tmp_path_factory.mktemp("bmax"), phantom, BASE_CONFIG),
        "all": _run(
            tmp_path_factory.mktemp("all"), phantom,
            BASE_CONFIG + "  tensor_bmax: null\n  kurtosis: false\n",
        ),
    }


def _wm(ph) -> np.ndarray:
    return ph.truth["brain"] & (ph.truth["wm"] > 0.9) & (ph.truth["lesion"] < 0.01)


def test_tensor_uses_the_shells_up_to_bmax_and_says_which_were_left_out(runs, phantom):
    meta = json.loads((runs["default"] / f"sub-01/ses-1/dwi/{STEM}_space-dwi_model-tensor_"
                       "param-fa_dwimap.json").read_text())
    tensor = meta["Parameters"]["tensor"]
    assert tensor["shells"]["tensor_shells"] == [0.0, 1000.0]
    assert tensor["shells"]["tensor_shells_left_out"] == [2000.0]
    assert np.all(phantom.bvals[tensor["volumes_fitted"]] <= 1000)
    assert len(tensor["volumes_fitted"]) == 34
    assert meta["Parameters"]["kurtosis"]["fitted"] is True
    assert meta["Parameters"]["kurtosis"]["shells"] == [1000.0, 2000.0]
    everything = json.loads((runs["all"] / f"sub-01/ses-1/dwi/{STEM}_space-dwi_model-tensor_"
                             "param-fa_dwimap.json").read_text())
    assert everything["Parameters"]["tensor"]["n_volumes_fitted"] == 64
    assert everything["Parameters"]["kurtosis"]["fitted"] is False


def test_kurtosis_maps_recover_the_phantom_in_white_matter(runs, phantom):
    wm = _wm(phantom)
    out = runs["default"]
    errors = {}
    for name in ("mk", "ak", "rk"):
        truth = np.median(phantom.truth[name][wm])
        errors[name] = np.median(_map(out, "dki", name)[wm]) / truth - 1
    errors["dki_md"] = np.median(_map(out, "dki", "md")[wm]) / np.median(phantom.truth["md"][wm]) - 1
    print("two-shell phantom, white-matter medians vs truth: "
          + ", ".join(f"{k} {v:+.1%}" for k, v in errors.items()))
    assert abs(errors["mk"]) < 0.10 and abs(errors["ak"]) < 0.10
    # RK at SNR 25 is -17 % in DIPY's own DKI and in MRtrix3 alike (noise, see
    # tests/test_dwi_kurtosis.py); bounded here so that a convention error (axes swapped,
    # AK for RK) cannot pass
    assert abs(errors["rk"]) < 0.25
    assert abs(errors["dki_md"]) < 0.05
    table = pd.read_csv(out / f"sub-01/ses-1/dwi/{STEM}_space-dwi_model-tensor_roistats.tsv",
                        sep="\t")
    assert {"mk", "ak", "rk", "kfa"} <= set(table["metric"])
    assert set(table.loc[table["metric"] == "mk", "units"]) == {"unitless"}


def test_tensor_md_bias_from_kurtosis_grows_with_the_shells_used(runs, phantom):
    wm = _wm(phantom)
    truth = np.median(phantom.truth["md"][wm])
    bias = {k: np.median(_map(out, "tensor", "md")[wm]) / truth - 1 for k, out in runs.items()}
    fa_truth = np.median(phantom.truth["fa"][wm])
    fa_err = {k: np.median(_map(out, "tensor", "fa")[wm]) / fa_truth - 1 for k, out in runs.items()}
    print(f"tensor MD vs the phantom's diffusion tensor: b <= 1500 {bias['default']:+.1%}, all "
          f"shells {bias['all']:+.1%}; FA {fa_err['default']:+.1%} / {fa_err['all']:+.1%}")
    # b D K / 6 at b = 1000 in this white matter is about 14 %
    assert -0.20 < bias["default"] < -0.08
    assert bias["all"] < bias["default"] - 0.08
