"""Node-wise Mahalanobis distances and AFQ Gaussian weights, vectorised.

The same quantity as DIPY's ``dipy.stats.analysis.gaussian_weights`` (used by
pyAFQ for both bundle cleaning and profile weighting; Yeatman et al. 2012), with
DIPY's conventions kept exactly so the numbers do not change:

* at every node the covariance of the node's coordinates across streamlines is
  taken with ``ddof=0`` and, as in DIPY, only its upper triangle is kept before
  it is inverted;
* a node whose covariance is all (close to) zero gives every streamline the
  distance ``len(bundle)`` (equal weights);
* a single streamline gets the weight 1 (distance NaN);
* weights are ``1 / distance`` normalised to sum to 1 at each node.

Why not DIPY's function itself: it loops in Python over nodes and streamlines
and calls ``scipy.spatial.distance.mahalanobis`` and ``np.linalg.inv`` once per
streamline per node. On the trial preset that was 9 million calls and 250 s of
the 280 s tract job (profiled on sub-02 ses-m03); here the whole bundle is one
batched inverse and one ``einsum``. ``benchmarks/bench_tract_weights.py``
compares the two on the same bundle and ``tests/test_tract_weights.py`` checks
they agree to rounding error.
"""

from __future__ import annotations

import numpy as np

__all__ = ["gaussian_weights", "node_mahalanobis"]


def _upper_covariance_inverse(coords: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per node: inverse of the upper-triangular covariance and a 'degenerate' flag.

    ``coords`` is (S, N, 3); returns (N, 3, 3) inverses (identity where degenerate)
    and an (N,) boolean array of nodes whose covariance is all within 1e-8 of 0
    (``np.allclose(c, 0)``, DIPY's test).
    """
    centred = coords - coords.mean(axis=0)
    cov = np.einsum("snj,snk->njk", centred, centred) / coords.shape[0]  # ddof=0
    upper = np.triu(cov)
    degenerate = np.all(np.abs(upper) <= 1e-8, axis=(1, 2))
    upper[degenerate] = np.eye(3)
    try:
        inv = np.linalg.inv(upper)
    except np.linalg.LinAlgError:
        # An exactly singular node (e.g. all streamlines on one plane there): DIPY
        # raises; we take the pseudo-inverse of that node only, so one flat node
        # does not abort the whole bundle.
        inv = np.empty_like(upper)
        for k in range(len(upper)):
            try:
                inv[k] = np.linalg.inv(upper[k])
            except np.linalg.LinAlgError:
                inv[k] = np.linalg.pinv(upper[k])
    return inv, degenerate


def node_mahalanobis(coords: np.ndarray, stat=np.mean) -> np.ndarray:
    """Mahalanobis distance of every node of every streamline to the node's core.

    Parameters
    ----------
    coords : ndarray (S, N, 3)
        S streamlines resampled to N nodes, consistently oriented.
    stat : callable
        Central tendency of each node (``np.mean`` as in DIPY; ``np.median`` allowed).

    Returns
    -------
    ndarray (S, N)
        Distances; NaN where DIPY's formula gives a negative quadratic form (the
        upper-triangular inverse is not positive definite); ``S`` at degenerate nodes.
    """
    coords = np.asarray(coords, float)
    if coords.ndim != 3 or coords.shape[2] != 3:
        raise ValueError(f"coords must be (streamlines, nodes, 3), got shape {coords.shape}")
    inv, degenerate = _upper_covariance_inverse(coords)
    delta = coords - stat(coords, axis=0)
    quad = np.einsum("snj,njk,snk->sn", delta, inv, delta)
    with np.errstate(invalid="ignore"):
        dist = np.sqrt(quad)
    dist[:, degenerate] = coords.shape[0]
    return dist


def gaussian_weights(bundle, *, n_points: int = 100, return_mahalanobis: bool = False,
                     stat=np.mean) -> np.ndarray:
    """Drop-in for ``dipy.stats.analysis.gaussian_weights`` (same outputs, vectorised).

    Parameters
    ----------
    bundle : Streamlines or sequence of (P, 3) arrays
        Resampled here to ``n_points`` nodes with DIPY's ``set_number_of_points``.
    n_points : int
    return_mahalanobis : bool
        Return the distances instead of the weights.
    stat : callable

    Returns
    -------
    ndarray (S, n_points)
        Weights summing to 1 at each node (or distances); a one-streamline bundle
        gives ``array([1])`` (``array([nan])`` for distances), as in DIPY.
    """
    from dipy.tracking.streamline import Streamlines, set_number_of_points

    resampled = set_number_of_points(Streamlines(bundle), nb_points=n_points)
    n = len(resampled)
    if n == 1:
        return np.array([np.nan]) if return_mahalanobis else np.array([1])
    coords = np.asarray(resampled.get_data(), float).reshape(n, n_points, 3)
    dist = node_mahalanobis(coords, stat=stat)
    if return_mahalanobis:
        return dist
    with np.errstate(divide="ignore", invalid="ignore"):
        w = 1 / dist
        return w / np.sum(w, axis=0)
