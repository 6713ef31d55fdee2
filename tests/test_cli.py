"""The msmri command line: BIDS-Apps interface and the inventory stage."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import write_nifti
from workflows.cli import main


def test_help_shows_bids_app_interface(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for token in (
        "bids_dir",
        "output_dir",
        "{participant,group}",
        "--participant-label",
        "--session-label",
        "--config",
        "--work-dir",
        "--nprocs",
        "msmri synth",
    ):
        assert token in out, token


def test_synth_help(capsys):
    with pytest.raises(SystemExit):
        main(["synth", "--help"])
    out = capsys.readouterr().out
    assert "--preset" in out and "tiny" in out and "trial" in out and "--seed" in out


def test_inventory_describes_inputs_and_skips_missing(tiny_bids, tmp_path):
    out = tmp_path / "out"
    assert main([str(tiny_bids), str(out), "participant", "--stages", "inventory"]) == 0
    inv = pd.read_csv(out / "sub-01/ses-m03/sub-01_ses-m03_inventory.tsv", sep="\t")
    rows = inv.set_index("modality")
    assert rows.loc["FLAIR", "status"] == "skipped"
    assert "FLAIR" in rows.loc["FLAIR", "note"]
    assert rows.loc["dwi", "status"] == "used"
    assert rows.loc["dwi", "b_values"] == "0x2,1000x12"
    assert rows.loc["dwi", "n_directions"] == 12
    assert rows.loc["bold", "repetition_time_s"] == pytest.approx(2.0)
    assert rows.loc["T1w", "shape"] == "8x8x6"
    assert rows.loc["lesion_mask", "status"] == "skipped"  # its FLAIR reference is missing
    assert "no FLAIR image" in rows.loc["lesion_mask", "note"]
    inv2 = pd.read_csv(out / "sub-02/ses-m03/sub-02_ses-m03_inventory.tsv", sep="\t")
    rows2 = inv2.set_index("modality")
    assert rows2.loc["bold", "status"] == "skipped"
    assert rows2.loc["lesion_mask", "note"] == "space-FLAIR"
    side = json.loads((out / "sub-01/ses-m03/sub-01_ses-m03_inventory.json").read_text())
    assert side["RandomSeed"] == 20251125 and "dipy" in side["SoftwareVersions"]
    assert "Description" in side["b_values"]
    desc = json.loads((out / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative"
    assert desc["GeneratedBy"][0]["Configuration"]["validation"]["b0_threshold"] == 50
    assert (out / "config.yaml").exists()
    assert main([str(tiny_bids), str(out), "group"]) == 0
    group = pd.read_csv(out / "group/inventory.tsv", sep="\t")
    assert set(group["subject"].astype(str).str.zfill(2)) == {"01", "02"}
    assert len(group) == 4 * 5


def test_label_filters(tiny_bids, tmp_path):
    out = tmp_path / "out"
    assert (
        main(
            [
                str(tiny_bids),
                str(out),
                "participant",
                "--stages",
                "inventory",
                "--participant-label",
                "sub-02",
                "--session-label",
                "m00",
            ]
        )
        == 0
    )
    assert sorted(p.name for p in out.glob("sub-*/ses-*/*_inventory.tsv")) == [
        "sub-02_ses-m00_inventory.tsv"
    ]


def test_broken_input_fails_only_its_subject(tiny_bids, tmp_path, capsys):
    bad = tiny_bids / "sub-01/ses-m00/dwi/sub-01_ses-m00_dwi.nii.gz"
    data = np.ones((8, 8, 6, 14), dtype=np.float32)
    data[2, 2, 2, 3] = np.nan
    write_nifti(bad, data)
    out = tmp_path / "out"
    assert main([str(tiny_bids), str(out), "participant", "--stages", "inventory"]) == 1
    err = capsys.readouterr().err
    assert str(bad) in err and "NaN" in err
    assert not (out / "sub-01/ses-m00").exists()
    assert (out / "sub-02/ses-m00/sub-02_ses-m00_inventory.tsv").exists()
    assert not list(out.rglob(".*tmp*"))


def test_a_stage_job_validates_only_the_raw_series_it_reads(tiny_bids):
    from pipeline.config import load_config
    from pipeline.errors import InputError
    from workflows.bids import collect_inputs, index_dataset
    from workflows.inventory import check_session

    bad = tiny_bids / "sub-01/ses-m00/func/sub-01_ses-m00_task-rest_bold.nii.gz"
    assert bad.exists()
    data = np.ones((8, 8, 6, 40), dtype=np.float32)
    data[2, 2, 2, 3] = np.inf
    write_nifti(bad, data)
    cfg = load_config([])
    inputs = collect_inputs(index_dataset(tiny_bids), "01", "m00")
    table, _ = check_session(inputs, cfg, tiny_bids, series=["dwi"])  # a diffusion job
    assert "bold" not in set(table["modality"]) and "dwi" in set(table["modality"])
    with pytest.raises(InputError) as exc:  # the inventory and fMRI jobs check the BOLD
        check_session(inputs, cfg, tiny_bids)
    assert str(bad) in str(exc.value)
    with pytest.raises(InputError):
        check_session(inputs, cfg, tiny_bids, series=["bold"])
    with pytest.raises(ValueError, match="series"):
        check_session(inputs, cfg, tiny_bids, series=["t1w"])


def test_session_without_t1w_is_inventoried_for_the_diffusion_stage(make_bids):
    """No T1w but a DWI series: the T1w row is skipped with the reason, the BOLD run is
    skipped (it needs the T1w), and nothing raises. No T1w and no DWI: a clear error."""
    from pipeline.config import load_config
    from pipeline.errors import InputError
    from workflows.bids import collect_inputs, index_dataset
    from workflows.inventory import DWI_ONLY_REASON, check_session

    bids = make_bids(subjects=["01"], sessions=["m00"], omit={("01", "m00"): ["T1w"]})
    cfg = load_config([])
    inputs = collect_inputs(index_dataset(bids), "01", "m00")
    table, _ = check_session(inputs, cfg, bids)
    rows = table.set_index("modality")
    assert rows.loc["T1w", "status"] == "skipped" and rows.loc["T1w", "note"] == DWI_ONLY_REASON
    assert rows.loc["dwi", "status"] == "used"
    assert rows.loc["bold", "status"] == "skipped" and "T1w" in rows.loc["bold", "note"]
    bids2 = make_bids(name="bids2", subjects=["01"], sessions=["m00"],
                      omit={("01", "m00"): ["T1w", "dwi"]})
    inputs = collect_inputs(index_dataset(bids2), "01", "m00")
    with pytest.raises(InputError, match="no T1w image and no DWI series") as exc:
        check_session(inputs, cfg, bids2)
    assert "sub-01" in str(exc.value)


def test_bad_config_is_a_clear_error(tiny_bids, tmp_path, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("validation:\n  b0_treshold: 10\n")
    assert (
        main(
            [
                str(tiny_bids),
                str(tmp_path / "out"),
                "participant",
                "--stages",
                "inventory",
                "--config",
                str(cfg),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert str(cfg) in err and "validation.b0_treshold" in err


def test_session_without_t1w_and_dwi_is_an_error_naming_the_folder(make_bids, tmp_path, capsys):
    bids = make_bids(omit={("01", "m00"): {"T1w", "dwi"}})
    assert main([str(bids), str(tmp_path / "out"), "participant", "--stages", "inventory"]) == 1
    err = capsys.readouterr().err
    assert "sub-01/ses-m00" in err and "no T1w image and no DWI series" in err
    assert (tmp_path / "out/sub-02/ses-m00/sub-02_ses-m00_inventory.tsv").exists()


# --------------------------------------------------------------------------- structural bad input


def _lesion(bids, sub="01", ses="m00"):
    return (bids / f"derivatives/lesions/sub-{sub}/ses-{ses}/anat/"
            f"sub-{sub}_ses-{ses}_space-FLAIR_label-lesion_mask.nii.gz")


def _anat_run(bids, out, capsys):
    code = main([str(bids), str(out), "participant", "--stages", "anat",
                 "--participant-label", "01", "--session-label", "m00"])
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("lesion_other_grid", "grid"),
        ("lesion_empty", "empty"),
        ("t1w_degenerate_affine", "affine"),
    ],
)
def test_structural_bad_input_is_a_clear_error_and_writes_nothing(make_bids, tmp_path, capsys,
                                                                    case, expected):
    bids = make_bids()
    if case == "lesion_other_grid":
        bad = _lesion(bids)
        write_nifti(bad, np.ones((6, 6, 6), dtype=np.uint8))
    elif case == "lesion_empty":
        bad = _lesion(bids)
        write_nifti(bad, np.zeros((8, 8, 6), dtype=np.uint8))
    else:
        from tests.test_validation import AFFINE, _write_raw_affine

        bad = bids / "sub-01/ses-m00/anat/sub-01_ses-m00_T1w.nii.gz"
        affine = AFFINE.copy()
        affine[1, 1] = 0.0  # zero voxel size along y
        _write_raw_affine(bad, affine)
    out = tmp_path / "out"
    code, err = _anat_run(bids, out, capsys)
    assert code == 1
    assert str(bad) in err or bad.name in err, err
    assert expected in err.lower(), err
    assert not (out / "sub-01/ses-m00/anat").exists()  # nothing half-written


def test_anatomical_reference_without_its_stage_is_a_clear_error(make_bids, tmp_path, capsys):
    bids = make_bids()
    cfg = tmp_path / "first.yaml"
    cfg.write_text("anat:\n  anatomical_reference: first\n")
    code = main([str(bids), str(tmp_path / "out"), "participant", "--stages", "anat",
                 "--config", str(cfg), "--participant-label", "01", "--session-label", "m03"])
    err = capsys.readouterr().err
    assert code == 1
    assert "desc-subjectref_T1w.nii.gz" in err and "anat_reference" in err, err


# --------------------------------------------------------------------------- diffusion bad input


@pytest.mark.parametrize(
    ("case", "culprit", "expected"),
    [
        ("bval_count", "bval", "one per volume"),
        ("no_b0", "bval", "b=0 volume"),
        ("zero_bvec", "bvec", "non-zero gradient"),
        ("five_directions", "bvec", "directions"),
        ("nan_voxels", "dwi", "nan"),
        ("three_d", "dwi", "4-d"),
    ],
)
def test_diffusion_bad_input_is_a_clear_error_and_writes_nothing(make_bids, tmp_path, capsys,
                                                                   case, culprit, expected):
    from tests.conftest import SHAPE, gradient_table, write_gradients

    bids = make_bids()
    stem = bids / "sub-01/ses-m00/dwi/sub-01_ses-m00_dwi"
    files = {
        "dwi": Path(f"{stem}.nii.gz"),
        "bval": Path(f"{stem}.bval"),
        "bvec": Path(f"{stem}.bvec"),
    }
    bvals, bvecs = gradient_table()
    if case == "bval_count":
        write_gradients(files["bval"], files["bvec"], bvals[:-1], bvecs[:-1])
    elif case == "no_b0":
        write_gradients(files["bval"], files["bvec"], np.full_like(bvals, 1000.0),
                        np.where(bvals[:, None] == 0, [1.0, 0, 0], bvecs))
    elif case == "zero_bvec":  # one zero vector is a derived (trace) volume; all is an error
        bvecs[bvals > 0] = 0.0
        write_gradients(files["bval"], files["bvec"], bvals, bvecs)
    elif case == "five_directions":
        n = len(bvals)
        write_gradients(files["bval"], files["bvec"], bvals, np.tile(bvecs[2:7], (n // 5 + 1, 1))[:n]
                        * (bvals[:, None] > 0))
    elif case == "nan_voxels":
        data = np.full((*SHAPE, len(bvals)), 100.0, np.float32)
        data[2, 2, 2, 3] = np.nan
        write_nifti(files["dwi"], data)
    else:
        write_nifti(files["dwi"], shape=SHAPE)
    out = tmp_path / "out"
    code = main([str(bids), str(out), "participant", "--stages", "dwi",
                 "--participant-label", "01", "--session-label", "m00"])
    err = capsys.readouterr().err
    assert code == 1
    assert files[culprit].name in err, err
    assert expected in err.lower(), err
    assert not (out / "sub-01/ses-m00/dwi").exists()


def test_module_entry_point_runs_participant_and_group_stages(tiny_bids, tmp_path):
    """`python -m workflows.cli` (what the Snakemake jobs and the integration tests run) sees
    the whole module, stage registry included, before it runs."""
    import subprocess
    import sys

    out = tmp_path / "o"
    base = [sys.executable, "-m", "workflows.cli", str(tiny_bids), str(out)]
    for args in (["participant", "--participant-label", "01", "--session-label", "m00",
                  "--stages", "inventory"], ["group", "--stages", "inventory"]):
        res = subprocess.run([*base, *args], capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr[-3000:]
    assert (out / "sub-01/ses-m00/sub-01_ses-m00_inventory.tsv").exists()
