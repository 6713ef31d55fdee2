"""The vectorised AFQ Gaussian weights equal DIPY's reference implementation."""

from __future__ import annotations

import numpy as np
import pytest
from dipy.stats.analysis import gaussian_weights as dipy_gaussian_weights
from dipy.tracking.streamline import Streamlines

from pipeline.tract.clean import clean_bundle
from pipeline.tract.weights import gaussian_weights, node_mahalanobis


def _bundle(rng, n=120, spread=2.0, dtype=np.float64):
    """Noisy streamlines along x with different lengths and point counts."""
    out = []
    for _ in range(n):
        k = int(rng.integers(25, 70))
        x = np.linspace(-40, 40, k) + rng.normal(0, 0.5, k)
        yz = rng.normal(0, spread, 2) + np.cumsum(rng.normal(0, 0.3, (k, 2)), axis=0)
        out.append(np.column_stack([x, yz]).astype(dtype))
    return Streamlines(out)


# float64 streamlines: equal to rounding; float32 (as read from .trk): DIPY takes the
# node mean and the differences in float32, we in float64, so they agree to ~1e-4.
@pytest.mark.parametrize("mahalanobis", [False, True])
@pytest.mark.parametrize("stat", [np.mean, np.median])
@pytest.mark.parametrize(("dtype", "rtol"), [(np.float64, 1e-9), (np.float32, 1e-3)])
def test_matches_dipy(mahalanobis, stat, dtype, rtol):
    sl = _bundle(np.random.default_rng(3), dtype=dtype)
    with np.errstate(all="ignore"):
        ref = np.asarray(dipy_gaussian_weights(sl, n_points=40, return_mahalnobis=mahalanobis,
                                               stat=stat), float)
    ours = gaussian_weights(sl, n_points=40, return_mahalanobis=mahalanobis, stat=stat)
    assert ours.shape == ref.shape == (len(sl), 40)
    np.testing.assert_array_equal(np.isnan(ours), np.isnan(ref))
    np.testing.assert_allclose(ours, ref, rtol=rtol, atol=1e-12, equal_nan=True)
    if not mahalanobis:
        np.testing.assert_allclose(np.nansum(ours, axis=0), 1.0)


def test_degenerate_node_and_single_streamline_follow_dipy():
    # every streamline shares its first point: that node's covariance is zero
    rng = np.random.default_rng(5)
    sl = Streamlines([np.vstack([[0.0, 0, 0], s[1:]]) for s in _bundle(rng, n=30)])
    with np.errstate(all="ignore"):
        ref = np.asarray(dipy_gaussian_weights(sl, n_points=20, return_mahalnobis=True), float)
    ours = gaussian_weights(sl, n_points=20, return_mahalanobis=True)
    assert np.all(ours[:, 0] == len(sl)) and np.all(ref[:, 0] == len(sl))
    np.testing.assert_allclose(ours, ref, rtol=1e-9, equal_nan=True)
    one = Streamlines([sl[0]])
    assert np.array_equal(gaussian_weights(one, n_points=20), [1])
    assert np.isnan(gaussian_weights(one, n_points=20, return_mahalanobis=True)).all()


def test_outlier_gets_large_distance_and_is_cleaned():
    sl = list(_bundle(np.random.default_rng(8), n=80, spread=1.0))
    stray = sl[0].copy()
    stray[:, 1] += 15.0  # a parallel streamline 15 mm away from the bundle
    sl.append(stray)
    sl = Streamlines(sl)
    d = node_mahalanobis(_resampled(sl, 30))
    assert d[-1].min() > 3 * np.median(d[:-1])
    keep = clean_bundle(sl, n_points=30, distance_threshold=3.0, min_streamlines=10)
    assert len(sl) - 1 not in keep and len(keep) >= len(sl) // 2


def _resampled(sl, n):
    from dipy.tracking.streamline import set_number_of_points

    r = set_number_of_points(sl, nb_points=n)
    return np.asarray(r.get_data(), float).reshape(len(r), n, 3)


def test_bad_shape_is_rejected():
    with pytest.raises(ValueError, match="streamlines, nodes, 3"):
        node_mahalanobis(np.zeros((4, 10)))
