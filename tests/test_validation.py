"""Tests of pipeline.validation (and pipeline.inventory): one test per bad input."""

from __future__ import annotations

import json
import warnings

import nibabel as nib
import numpy as np
import pytest

from pipeline.errors import InputError
from pipeline.inventory import describe_image
from pipeline.validation import (
    BoldCheck,
    DwiCheck,
    InputWarning,
    load_image,
    validate_anat,
    validate_bold,
    validate_dwi,
    validate_mask_grid,
)
from tests.conftest import AFFINE, SHAPE, gradient_table


def _truncate(path, fraction=0.6):
    raw = path.read_bytes()
    path.write_bytes(raw[: int(len(raw) * fraction)])
    return path


# ------------------------------------------------------------------ images
def test_load_image_ok(make_nifti):
    path = make_nifti("ok.nii.gz", shape=(*SHAPE, 3))
    img = load_image(path, ndim=(3, 4), min_volumes=3)
    assert img.shape == (*SHAPE, 3)
    np.testing.assert_allclose(img.affine, AFFINE)


def test_missing_image(tmp_path):
    path = tmp_path / "absent.nii.gz"
    with pytest.raises(InputError, match="not found") as exc:
        load_image(path)
    assert str(path) in str(exc.value)


def test_3d_image_where_4d_is_needed(make_nifti):
    path = make_nifti("anat_as_dwi.nii.gz")
    with pytest.raises(InputError, match=r"3-D image .* where 4-D is needed") as exc:
        load_image(path, ndim=4)
    assert str(path) in str(exc.value)


def test_3d_dwi_rejected(make_nifti, make_dwi):
    files = make_dwi()
    flat = make_nifti("flat_dwi.nii.gz")
    with pytest.raises(InputError, match="where 4-D is needed") as exc:
        validate_dwi(flat, files.bval, files.bvec)
    assert str(flat) in str(exc.value)


def test_4d_anat_rejected(make_nifti):
    path = make_nifti("t1w_4d.nii.gz", shape=(*SHAPE, 2))
    with pytest.raises(InputError, match=r"4-D image .* where 3-D is needed") as exc:
        validate_anat(path)
    assert str(path) in str(exc.value)


def test_nan_voxels(make_nifti):
    data = np.ones(SHAPE, np.float32)
    data[0, 0, :3] = np.nan
    path = make_nifti("nan.nii.gz", data)
    with pytest.raises(InputError) as exc:
        validate_anat(path)
    msg = str(exc.value)
    assert str(path) in msg
    assert "3 non-finite voxel(s) (3 NaN, 0 Inf)" in msg


def test_inf_voxels(make_nifti):
    data = np.ones(SHAPE, np.float32)
    data[1, 2, 3] = np.inf
    data[2, 2, 3] = -np.inf
    path = make_nifti("inf.nii.gz", data)
    with pytest.raises(InputError) as exc:
        load_image(path)
    msg = str(exc.value)
    assert str(path) in msg
    assert "2 non-finite voxel(s) (0 NaN, 2 Inf)" in msg


def test_non_finite_allowed_when_not_checked(make_nifti):
    data = np.ones(SHAPE, np.float32)
    data[0, 0, 0] = np.nan
    path = make_nifti("nan_ok.nii.gz", data)
    assert load_image(path, check_finite=False).shape == SHAPE


def test_truncated_gzip(make_nifti):
    path = _truncate(make_nifti("trunc.nii.gz", shape=(*SHAPE, 4)))
    with pytest.raises(InputError, match="unreadable or truncated") as exc:
        load_image(path)
    assert str(path) in str(exc.value)


def test_garbage_file(tmp_path):
    path = tmp_path / "garbage.nii.gz"
    path.write_bytes(b"this is not a gzip stream at all")
    with pytest.raises(InputError, match="unreadable or truncated") as exc:
        load_image(path)
    assert str(path) in str(exc.value)


def _write_raw_affine(path, affine):
    """Write an image whose sform is ``affine`` verbatim (nibabel refuses to build one)."""
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(SHAPE)
    hdr.set_data_dtype(np.float32)
    for row, key in enumerate(("srow_x", "srow_y", "srow_z")):
        hdr[key] = affine[row]
    hdr["sform_code"], hdr["qform_code"] = 1, 0
    hdr["pixdim"][1:4] = 2.0
    nib.save(nib.Nifti1Image(np.ones(SHAPE, np.float32), None, header=hdr), path)
    np.testing.assert_array_equal(nib.load(path).affine, affine)
    return path


def test_degenerate_affine_zero_voxel_size(tmp_path):
    affine = AFFINE.copy()
    affine[2, 2] = 0.0
    path = _write_raw_affine(tmp_path / "zero_voxel.nii.gz", affine)
    with pytest.raises(InputError, match="degenerate affine") as exc:
        validate_anat(path)
    assert str(path) in str(exc.value)
    assert "voxel sizes 2x2x0 mm" in str(exc.value)


def test_degenerate_affine_non_finite(tmp_path):
    affine = AFFINE.copy()
    affine[0, 0] = np.nan
    path = _write_raw_affine(tmp_path / "nan_affine.nii", affine)
    with pytest.raises(InputError, match="degenerate affine: expected finite") as exc:
        load_image(path)
    assert str(path) in str(exc.value)


def test_too_few_volumes(make_nifti):
    path = make_nifti("short.nii.gz", shape=(*SHAPE, 2))
    with pytest.raises(InputError, match="at least 5 volumes, got 2") as exc:
        load_image(path, min_volumes=5)
    assert str(path) in str(exc.value)


# --------------------------------------------------------------------- DWI
def test_validate_dwi_ok(make_dwi):
    bvals, bvecs = gradient_table(n_b0=3, n_dirs=8)
    bvals = np.concatenate([bvals, np.full(7, 2000.0)])
    extra = np.random.default_rng(2).standard_normal((7, 3))
    bvecs = np.concatenate([bvecs, extra / np.linalg.norm(extra, axis=1, keepdims=True)])
    bvals[4] = 1010.0  # within shell tolerance
    files = make_dwi(bvals, bvecs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check = validate_dwi(files.dwi, files.bval, files.bvec)
    assert isinstance(check, DwiCheck)
    assert check.n_volumes == 18 and check.n_b0 == 3
    assert check.shells == ((1000.0, 8), (2000.0, 7))
    assert check.warnings == ()
    np.testing.assert_allclose(check.bvals, bvals)
    np.testing.assert_allclose(check.bvecs, bvecs, atol=1e-6)


def test_dwi_bval_bvec_count_mismatch(make_dwi, tmp_path):
    files = make_dwi()
    bvec = tmp_path / "short.bvec"
    bvec.write_text("\n".join(" ".join(map(str, r)) for r in files.bvecs.T[:, :-1]) + "\n")
    with pytest.raises(InputError, match="gradient vectors") as exc:
        validate_dwi(files.dwi, files.bval, bvec)
    assert str(bvec) in str(exc.value)


def test_dwi_counts_differ_from_image_volumes(make_dwi):
    files = make_dwi(n_volumes=10)  # 14 gradients, 10 volumes
    with pytest.raises(InputError) as exc:
        validate_dwi(files.dwi, files.bval, files.bvec)
    msg = str(exc.value)
    assert str(files.bval) in msg and str(files.dwi) in msg
    assert "expected 10 b-values" in msg and "got 14" in msg


def test_dwi_without_b0(make_dwi):
    bvals, bvecs = gradient_table(n_b0=0, n_dirs=10)
    files = make_dwi(bvals, bvecs)
    with pytest.raises(InputError, match="at least one b=0 volume") as exc:
        validate_dwi(files.dwi, files.bval, files.bvec)
    assert str(files.bval) in str(exc.value)


def test_dwi_b0_threshold_counts_small_bvalues(make_dwi):
    bvals, bvecs = gradient_table(n_b0=2, n_dirs=10)
    bvals[:2] = [5.0, 40.0]
    files = make_dwi(bvals, bvecs)
    assert validate_dwi(files.dwi, files.bval, files.bvec).n_b0 == 2


def test_dwi_bvec_not_unit_length(make_dwi):
    bvals, bvecs = gradient_table(n_b0=1, n_dirs=10)
    bvecs[4] *= 1.5
    files = make_dwi(bvals, bvecs)
    with pytest.raises(InputError, match="unit-length") as exc:
        validate_dwi(files.dwi, files.bval, files.bvec)
    assert str(files.bvec) in str(exc.value)
    assert "volume 4" in str(exc.value)


def test_dwi_zero_bvec_for_weighted_volume_is_a_derived_image(make_dwi):
    """b > 0 with a zero vector: a scanner-derived trace image, reported and set apart
    (the diffusion stage drops it); only when every weighted volume is like that is it
    an error."""
    bvals, bvecs = gradient_table(n_b0=1, n_dirs=10)
    bvecs[7] = 0.0
    files = make_dwi(bvals, bvecs)
    with pytest.warns(UserWarning, match=r"volume\(s\) 7 .*trace"):
        check = validate_dwi(files.dwi, files.bval, files.bvec)
    assert check.derived == (7,)
    assert sum(n for _, n in check.shells) == 9  # the derived volume is in no shell
    bvecs[1:] = 0.0
    files = make_dwi(bvals, bvecs)
    with pytest.raises(InputError, match="non-zero gradient direction") as exc:
        validate_dwi(files.dwi, files.bval, files.bvec)
    assert str(files.bvec) in str(exc.value)


def test_dwi_fewer_than_six_directions(make_dwi):
    # 8 weighted volumes but only 5 distinct directions (antipodes and repeats)
    bvals, bvecs = gradient_table(n_b0=1, n_dirs=5, seed=9)
    bvals = np.concatenate([bvals, [1000.0, 1000.0, 1000.0]])
    bvecs = np.concatenate([bvecs, -bvecs[1:3], bvecs[3:4]])
    files = make_dwi(bvals, bvecs)
    with pytest.raises(InputError, match="at least 6 distinct gradient directions") as exc:
        validate_dwi(files.dwi, files.bval, files.bvec)
    assert str(files.bvec) in str(exc.value)
    assert "got 5" in str(exc.value)


def test_dwi_transposed_bvec_fixed_with_warning(make_dwi, tmp_path):
    bvals, bvecs = gradient_table(n_b0=2, n_dirs=10)
    files = make_dwi(bvals, bvecs, transpose=True)
    with pytest.warns(InputWarning, match="transposed") as record:
        check = validate_dwi(files.dwi, files.bval, files.bvec)
    assert str(files.bvec) in str(record[0].message)
    assert len(check.warnings) == 1 and str(files.bvec) in check.warnings[0]
    reference = make_dwi(bvals, bvecs, stem="standard")
    np.testing.assert_array_equal(
        check.bvecs, validate_dwi(reference.dwi, reference.bval, reference.bvec).bvecs
    )


# -------------------------------------------------------------------- BOLD
@pytest.fixture
def bold(make_nifti, tmp_path):
    def _make(n=60, tr_header=2.0, meta=None, name="bold"):
        path = make_nifti(f"{name}.nii.gz", shape=(*SHAPE, n), tr=tr_header)
        js = None
        if meta is not None:
            js = tmp_path / f"{name}.json"
            js.write_text(json.dumps(meta))
        return path, js

    return _make


def test_validate_bold_ok(bold):
    timing = [0.0, 1.0, 0.33, 1.33, 0.66, 1.66]
    path, js = bold(meta={"RepetitionTime": 2.0, "SliceTiming": timing})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check = validate_bold(path, js)
    assert check == BoldCheck(
        n_volumes=60, repetition_time=2.0, slice_timing=tuple(timing), warnings=()
    )


def test_bold_missing_sidecar(bold):
    path, _ = bold(meta=None)
    with pytest.raises(InputError, match="RepetitionTime is missing") as exc:
        validate_bold(path, None)
    assert str(path) in str(exc.value)


def test_bold_missing_repetition_time(bold):
    path, js = bold(meta={"TaskName": "rest"})
    with pytest.raises(InputError, match="RepetitionTime is missing") as exc:
        validate_bold(path, js)
    assert str(path) in str(exc.value) and str(js) in str(exc.value)


def test_bold_non_positive_repetition_time(bold):
    path, js = bold(meta={"RepetitionTime": 0})
    with pytest.raises(InputError, match="positive RepetitionTime") as exc:
        validate_bold(path, js)
    assert str(js) in str(exc.value)


def test_bold_header_tr_disagreement_warns(bold):
    path, js = bold(tr_header=3.0, meta={"RepetitionTime": 2.0})
    with pytest.warns(InputWarning, match="pixdim") as record:
        check = validate_bold(path, js)
    assert str(path) in str(record[0].message)
    assert check.repetition_time == 2.0 and len(check.warnings) == 1


def test_bold_too_few_volumes(bold):
    path, js = bold(n=20, meta={"RepetitionTime": 2.0})
    with pytest.raises(InputError, match="at least 50 volumes, got 20") as exc:
        validate_bold(path, js)
    assert str(path) in str(exc.value)


def test_bold_3d_rejected(make_nifti, tmp_path):
    path = make_nifti("bold3d.nii.gz")
    with pytest.raises(InputError, match="where 4-D is needed") as exc:
        validate_bold(path, None)
    assert str(path) in str(exc.value)


def test_bold_uses_resolved_metadata(bold):
    path, _ = bold(meta=None)
    check = validate_bold(path, None, metadata={"RepetitionTime": 2.0})
    assert check.repetition_time == 2.0 and check.slice_timing is None


# -------------------------------------------------------------------- masks
def _mask(value=1, dtype=np.uint8):
    data = np.zeros(SHAPE, dtype)
    data[2:4, 2:4, 1:3] = value
    return data


def test_mask_grid_ok_with_float_binary(make_nifti):
    ref = make_nifti("t1w.nii.gz")
    mask = make_nifti("mask.nii.gz", _mask(dtype=np.float32))
    assert validate_mask_grid(mask, ref).shape == SHAPE


def test_mask_grid_shape_mismatch(make_nifti):
    ref = make_nifti("t1w.nii.gz")
    data = np.zeros((8, 8, 5), np.uint8)
    data[1, 1, 1] = 1
    mask = make_nifti("mask.nii.gz", data)
    with pytest.raises(InputError) as exc:
        validate_mask_grid(mask, ref)
    msg = str(exc.value)
    assert msg.startswith(str(mask))
    assert str(ref) in msg and "shape 8x8x6" in msg and "shape 8x8x5" in msg


def test_mask_grid_affine_mismatch(make_nifti):
    ref = make_nifti("t1w.nii.gz")
    shifted = AFFINE.copy()
    shifted[0, 3] += 0.5
    mask = make_nifti("mask.nii.gz", _mask(), affine=shifted)
    with pytest.raises(InputError, match="expected the grid") as exc:
        validate_mask_grid(mask, ref)
    assert str(mask) in str(exc.value)
    # within tolerance: accepted
    assert validate_mask_grid(mask, ref, tolerance_mm=1.0).shape == SHAPE


def test_empty_mask(make_nifti):
    ref = make_nifti("t1w.nii.gz")
    mask = make_nifti("empty.nii.gz", np.zeros(SHAPE, np.uint8))
    with pytest.raises(InputError, match="empty mask") as exc:
        validate_mask_grid(mask, ref)
    assert str(mask) in str(exc.value)


def test_non_binary_mask(make_nifti):
    ref = make_nifti("t1w.nii.gz")
    mask = make_nifti("prob.nii.gz", _mask(value=0.5, dtype=np.float32))
    with pytest.raises(InputError, match="binary values") as exc:
        validate_mask_grid(mask, ref)
    assert str(mask) in str(exc.value)


def test_label_mask_allowed_on_request(make_nifti):
    ref = make_nifti("t1w.nii.gz")
    data = _mask()
    data[5, 5, 4] = 2
    mask = make_nifti("labels.nii.gz", data)
    with pytest.raises(InputError, match="binary values"):
        validate_mask_grid(mask, ref)
    assert validate_mask_grid(mask, ref, allow_labels=True).shape == SHAPE


# ---------------------------------------------------------------- inventory
def test_describe_dwi(make_dwi):
    bvals, bvecs = gradient_table(n_b0=2, n_dirs=12)
    files = make_dwi(bvals, bvecs)
    row = describe_image(files.dwi, modality="dwi", bvals=bvals, bvecs=bvecs)
    assert row == {
        "modality": "dwi",
        "path": str(files.dwi),
        "shape": "8x8x6",
        "n_volumes": 14,
        "voxel_size_mm": "2.00x2.00x2.50",
        "orientation": "RAS",
        "datatype": "float32",
        "b_values": "0x2,1000x12",
        "n_directions": 12,
        "repetition_time_s": None,
    }


def test_describe_reads_header_only(make_nifti):
    # a truncated file still has a readable header: describe_image must not touch the data
    affine = np.diag([-1.0, 1.0, 1.2, 1.0])
    path = make_nifti("t1w.nii.gz", shape=(32, 32, 20), dtype=np.int16, affine=affine)
    _truncate(path, 0.5)
    with pytest.raises(InputError, match="truncated"):
        load_image(path)
    row = describe_image(path, modality="T1w")
    assert row["orientation"] == "LAS"
    assert row["datatype"] == "int16"
    assert row["voxel_size_mm"] == "1.00x1.00x1.20"
    assert row["shape"] == "32x32x20" and row["n_volumes"] == 1
    assert row["b_values"] is None and row["n_directions"] is None


def test_canonical_gradient_table_is_read_without_revalidating(make_dwi, tmp_path):
    """The table validated once (DwiGradients.from_files) and written by the loading node is
    read back by downstream nodes from the text files and the header alone: same table,
    no voxel data read (NaN voxels would fail the full check), a count mismatch named."""
    from pipeline.dwi.gradtable import DwiGradients

    f = make_dwi()
    full = DwiGradients.from_files(f.dwi, f.bval, f.bvec)
    bval, bvec = full.write(tmp_path / "c.bval", tmp_path / "c.bvec")
    img = nib.load(f.dwi)
    data = np.asarray(img.dataobj, dtype=np.float32)
    data[0, 0, 0, 0] = np.nan
    nan_path = tmp_path / "nan.nii.gz"
    nib.save(nib.Nifti1Image(data, img.affine), nan_path)
    with pytest.raises(InputError):
        DwiGradients.from_files(nan_path, bval, bvec)
    canon = DwiGradients.from_canonical(nan_path, bval, bvec)
    assert np.allclose(canon.bvals, full.bvals) and np.allclose(canon.bvecs, full.bvecs, atol=1e-6)
    assert np.allclose(canon.affine, full.affine) and canon.n_volumes == full.n_volumes
    short = tmp_path / "short.bval"
    short.write_text(" ".join(f"{b:g}" for b in full.bvals[:-1]) + "\n")
    with pytest.raises(InputError, match=r"short\.bval"):
        DwiGradients.from_canonical(f.dwi, short, bvec)
