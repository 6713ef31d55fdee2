"""Tests of pipeline.motion: rigid parameter convention, FD, simulated traces."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.motion import (
    framewise_displacement,
    rigid_matrix,
    rigid_params,
    simulate_motion_trace,
)


def _rot(axis: int, angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    i, j = [(1, 2), (2, 0), (0, 1)][axis]
    m = np.eye(4)
    m[i, i], m[i, j], m[j, i], m[j, j] = c, -s, s, c
    return m


def test_rigid_matrix_is_t_rz_ry_rx():
    p = np.array([1.5, -2.0, 3.0, 0.2, -0.3, 0.4])
    t = np.eye(4)
    t[:3, 3] = p[:3]
    expected = t @ _rot(2, p[5]) @ _rot(1, p[4]) @ _rot(0, p[3])
    np.testing.assert_allclose(rigid_matrix(p), expected, atol=1e-12)


def test_rotation_sense_is_right_handed_ras():
    # +90 deg about z turns +x (right) into +y (anterior).
    m = rigid_matrix([0, 0, 0, 0, 0, np.pi / 2])
    np.testing.assert_allclose(m @ [1, 0, 0, 1], [0, 1, 0, 1], atol=1e-12)
    # rotation about the world origin: the origin stays fixed without translation.
    m = rigid_matrix([0, 0, 0, 0.3, -0.2, 0.1])
    np.testing.assert_allclose(m @ [0, 0, 0, 1], [0, 0, 0, 1], atol=1e-12)


def test_round_trip_params_matrix():
    rng = np.random.default_rng(0)
    params = np.column_stack([rng.uniform(-20, 20, (200, 3)), rng.uniform(-1.5, 1.5, (200, 3))])
    mats = rigid_matrix(params)
    assert mats.shape == (200, 4, 4)
    np.testing.assert_allclose(rigid_params(mats), params, atol=1e-10)
    for p, m in zip(params[:5], mats[:5], strict=True):
        np.testing.assert_allclose(rigid_params(m), p, atol=1e-10)
        np.testing.assert_allclose(rigid_matrix(rigid_params(m)), m, atol=1e-12)
        r = m[:3, :3]
        np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-12)
        assert np.linalg.det(r) == pytest.approx(1.0)


def test_rigid_params_rejects_non_rigid():
    m = rigid_matrix([0, 0, 0, 0.1, 0.2, 0.3])
    m[:3, :3] *= 1.1
    with pytest.raises(ValueError, match="not rigid"):
        rigid_params(m)
    with pytest.raises(ValueError, match="shape"):
        rigid_params(np.eye(3))
    with pytest.raises(ValueError, match="shape"):
        rigid_matrix([0, 0, 0])


def test_framewise_displacement_hand_computed():
    trace = np.array(
        [
            [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
            [0.1, -0.2, 0.3, 0.001, 0.0, -0.002],
            [0.1, -0.2, 0.3, 0.001, 0.0, -0.002],
            [-0.4, 0.0, 0.5, 0.0, 0.01, 0.0],
        ]
    )
    # volume 1: 0.1 + 0.2 + 0.3 + 50 * (0.001 + 0 + 0.002) = 0.75
    # volume 2: no change
    # volume 3: 0.5 + 0.2 + 0.2 + 50 * (0.001 + 0.01 + 0.002) = 1.55
    np.testing.assert_allclose(framewise_displacement(trace), [0.0, 0.75, 0.0, 1.55])
    # radius scales the rotation part only: 0.6 + 80 * 0.003 = 0.84
    assert framewise_displacement(trace, radius=80.0)[1] == pytest.approx(0.84)
    assert framewise_displacement(trace[:1]).tolist() == [0.0]
    with pytest.raises(ValueError):
        framewise_displacement(np.zeros((5, 3)))


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_simulated_trace_is_realistic(seed):
    trace = simulate_motion_trace(150, rng=np.random.default_rng(seed))
    assert trace.shape == (150, 6)
    np.testing.assert_array_equal(trace[0], 0.0)
    fd = framewise_displacement(trace)
    assert np.mean(fd[1:] < 0.3) >= 0.9  # most volumes are quiet
    assert np.sum(fd > 0.5) >= 1  # at least one spike
    assert np.sum(fd > 0.5) <= 6  # ... but only a few
    assert 0.03 < np.median(fd) < 0.25
    # rotations are comparable to translations in mm at 50 mm radius
    trans_mm = np.abs(np.diff(trace[:, :3], axis=0)).mean()
    rot_mm = 50.0 * np.abs(np.diff(trace[:, 3:], axis=0)).mean()
    assert 0.2 < rot_mm / trans_mm < 5.0
    assert np.abs(trace[:, 3:]).max() < np.deg2rad(5)  # small angles (radians)


def test_simulated_trace_is_deterministic_and_scales():
    a = simulate_motion_trace(100, rng=np.random.default_rng(7))
    b = simulate_motion_trace(100, rng=np.random.default_rng(7))
    np.testing.assert_array_equal(a, b)
    quiet = simulate_motion_trace(100, rng=np.random.default_rng(7), n_spikes=0)
    assert framewise_displacement(quiet).max() < 0.5
    big = simulate_motion_trace(100, rng=np.random.default_rng(7), spike_mm=(3.0, 4.0))
    assert framewise_displacement(big).max() > 2.0
