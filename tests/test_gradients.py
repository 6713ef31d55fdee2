"""Tests of pipeline.gradients: reading gradient tables and frame conversions."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from pipeline.errors import InputError
from pipeline.gradients import (
    InputWarning,
    count_unique_directions,
    fsl_to_world,
    group_shells,
    read_bvals_bvecs,
    world_to_fsl,
)
from tests.conftest import gradient_table, write_gradients


@pytest.fixture
def table(tmp_path):
    bvals, bvecs = gradient_table(n_b0=2, n_dirs=12)
    bval, bvec = write_gradients(tmp_path / "dwi.bval", tmp_path / "dwi.bvec", bvals, bvecs)
    return bval, bvec, bvals, bvecs


# ------------------------------------------------------------------ reading
def test_read_standard_layout(table):
    bval, bvec, bvals, bvecs = table
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got_vals, got_vecs = read_bvals_bvecs(bval, bvec, n_volumes=14)
    assert got_vals.shape == (14,) and got_vecs.shape == (14, 3)
    assert got_vals.dtype == float and got_vecs.dtype == float
    np.testing.assert_allclose(got_vals, bvals)
    np.testing.assert_allclose(got_vecs, bvecs, atol=1e-6)


def test_transposed_bvec_is_fixed_with_warning(tmp_path, table):
    bval, bvec, _, bvecs = table
    t_bval, t_bvec = write_gradients(
        tmp_path / "t.bval", tmp_path / "t.bvec", np.loadtxt(bval), bvecs, transpose=True
    )
    assert np.loadtxt(t_bvec).shape == (14, 3)
    with pytest.warns(InputWarning, match="transposed") as record:
        vals_t, vecs_t = read_bvals_bvecs(t_bval, t_bvec)
    assert str(t_bvec) in str(record[0].message)
    vals, vecs = read_bvals_bvecs(bval, bvec)
    np.testing.assert_array_equal(vals_t, vals)
    np.testing.assert_array_equal(vecs_t, vecs)


def test_three_volume_table_is_read_as_rows(tmp_path):
    # 3 x 3 is ambiguous: the standard (rows = x, y, z) reading wins, no warning
    bvecs = np.array([[1.0, 0, 0], [0, 1, 0], [0, 0, 1]])[[1, 2, 0]]
    bval, bvec = write_gradients(tmp_path / "a.bval", tmp_path / "a.bvec", [0, 1000, 1000], bvecs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, got = read_bvals_bvecs(bval, bvec)
    np.testing.assert_allclose(got, bvecs)


def test_bval_bvec_count_mismatch(tmp_path):
    bvals, bvecs = gradient_table(n_b0=1, n_dirs=10)
    bval, bvec = write_gradients(tmp_path / "a.bval", tmp_path / "a.bvec", bvals[:-1], bvecs)
    with pytest.raises(InputError) as exc:
        read_bvals_bvecs(bval, bvec)
    assert str(bvec) in str(exc.value)
    assert "expected 10 gradient vectors" in str(exc.value) and "got 11" in str(exc.value)


def test_count_differs_from_image_volumes(table):
    bval, bvec, _, _ = table
    with pytest.raises(InputError) as exc:
        read_bvals_bvecs(bval, bvec, n_volumes=15)
    assert str(bval) in str(exc.value)
    assert "expected 15" in str(exc.value) and "got 14" in str(exc.value)


def test_bval_must_be_single_row(tmp_path, table):
    _, bvec, bvals, _ = table
    bval = tmp_path / "col.bval"
    bval.write_text("\n".join(f"{b:g}" for b in bvals) + "\n")
    with pytest.raises(InputError, match="single row") as exc:
        read_bvals_bvecs(bval, bvec)
    assert str(bval) in str(exc.value)


def test_non_numeric_bval(tmp_path, table):
    _, bvec, _, _ = table
    bval = tmp_path / "bad.bval"
    bval.write_text("0 1000 abc 1000\n")
    with pytest.raises(InputError, match="non-numeric value 'abc'") as exc:
        read_bvals_bvecs(bval, bvec)
    assert str(bval) in str(exc.value)


def test_negative_bvalue(tmp_path):
    bvals, bvecs = gradient_table(n_b0=1, n_dirs=6)
    bvals[3] = -1000
    bval, bvec = write_gradients(tmp_path / "n.bval", tmp_path / "n.bvec", bvals, bvecs)
    with pytest.raises(InputError, match="non-negative") as exc:
        read_bvals_bvecs(bval, bvec)
    assert str(bval) in str(exc.value)


def test_missing_bvec_file(tmp_path, table):
    bval, _, _, _ = table
    missing = tmp_path / "nope.bvec"
    with pytest.raises(InputError, match="not found") as exc:
        read_bvals_bvecs(bval, missing)
    assert str(missing) in str(exc.value)


def test_bvec_with_wrong_row_count(tmp_path, table):
    bval, _, _, bvecs = table
    bvec = tmp_path / "two_rows.bvec"
    bvec.write_text("\n".join(" ".join(map(str, r)) for r in bvecs.T[:2]) + "\n")
    with pytest.raises(InputError, match="expected 3 rows") as exc:
        read_bvals_bvecs(bval, bvec)
    assert str(bvec) in str(exc.value)


# ------------------------------------------------------------------ frames
def _rotation(axis, angle_deg):
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    a = np.deg2rad(angle_deg)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * k @ k


def _affine(linear):
    aff = np.eye(4)
    aff[:3, :3] = linear
    aff[:3, 3] = [-90, -120, -60]
    return aff


LAS = _affine(np.diag([-2.0, 2.0, 2.5]))
RAS = _affine(np.diag([2.0, 2.0, 2.5]))
OBLIQUE = _affine(_rotation([0.3, -0.5, 1.0], 17.0) @ np.diag([1.8, 2.2, 3.0]))
OBLIQUE_LAS = _affine(_rotation([1.0, 0.2, 0.1], -25.0) @ np.diag([-1.0, 1.0, 1.2]))


@pytest.mark.parametrize(
    "affine", [LAS, RAS, OBLIQUE, OBLIQUE_LAS], ids=["LAS", "RAS", "oblique", "oblique-LAS"]
)
def test_fsl_world_round_trip(affine):
    _, bvecs = gradient_table(n_b0=1, n_dirs=30, seed=3)
    world = fsl_to_world(bvecs, affine)
    np.testing.assert_allclose(np.linalg.norm(world[1:], axis=1), 1.0, atol=1e-12)
    np.testing.assert_array_equal(world[0], 0.0)  # zero vectors stay zero
    np.testing.assert_allclose(world_to_fsl(world, affine), bvecs, atol=1e-12)
    rng = np.random.default_rng(5)
    dirs = rng.standard_normal((20, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    np.testing.assert_allclose(fsl_to_world(world_to_fsl(dirs, affine), affine), dirs, atol=1e-12)


def test_las_fsl_vector_is_voxel_frame_vector():
    # LAS storage (det < 0): no flip, world = R @ bvec with R = diag(-1, 1, 1)
    _, bvecs = gradient_table(n_b0=0, n_dirs=10, seed=4)
    world = fsl_to_world(bvecs, LAS)
    voxel_frame = world @ np.diag([-1.0, 1.0, 1.0])  # R^-1 @ world, R = diag(-1, 1, 1)
    np.testing.assert_allclose(voxel_frame, bvecs, atol=1e-12)
    np.testing.assert_allclose(fsl_to_world([1.0, 0, 0], LAS), [-1.0, 0, 0])


def test_ras_flips_x_so_fsl_frame_is_storage_independent():
    # Flipping the x storage axis (LAS <-> RAS) leaves FSL bvecs unchanged:
    # FSL's frame is always radiological, so the world directions agree.
    _, bvecs = gradient_table(n_b0=0, n_dirs=10, seed=6)
    np.testing.assert_allclose(fsl_to_world(bvecs, RAS), fsl_to_world(bvecs, LAS), atol=1e-12)
    np.testing.assert_allclose(fsl_to_world([0, 1.0, 0], RAS), [0, 1.0, 0], atol=1e-12)


def test_oblique_world_direction_follows_rotation():
    rot = _rotation([0.0, 0.0, 1.0], 30.0)
    affine = _affine(rot @ np.diag([-2.0, 2.0, 2.0]))  # LAS-like, rotated 30 deg about z
    # voxel-frame j axis rotated by 30 deg about z
    np.testing.assert_allclose(fsl_to_world([0, 1.0, 0], affine), rot @ [0, 1.0, 0], atol=1e-12)


# ------------------------------------------------------------------ shells
def test_group_shells_and_directions():
    bvals = np.array([0, 5, 995, 1000, 1005, 2000, 2010, 0])
    shells = group_shells(bvals, b0_threshold=50, tolerance=100)
    assert [b for b, _ in shells] == [0.0, 1000.0, 2005.0]
    assert [idx.tolist() for _, idx in shells] == [[0, 1, 7], [2, 3, 4], [5, 6]]

    d = np.array([[1.0, 0, 0], [-1.0, 0, 0], [0, 1, 0], [0, 0.99999, 0.0044], [0, 0, 1]])
    # antipodal pair counts once; 0.25 deg apart counts once
    assert count_unique_directions(d) == 3
    assert count_unique_directions(np.zeros((4, 3))) == 0
