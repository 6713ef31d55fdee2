"""pyAFQ-style bundle cleaning (Yeatman et al. 2012; Kruper et al. 2021).

Each iteration resamples the streamlines to ``n_points`` nodes, computes for
every node of every streamline its Mahalanobis distance to the distribution of
that node across the bundle (DIPY's ``gaussian_weights(..., return_mahalnobis=True)``
as pyAFQ's ``clean_bundle`` does, computed by the vectorised equivalent in
:mod:`pipeline.tract.weights`) and the z-score of its length, and drops
streamlines with any node farther than ``distance_threshold`` or a length
z-score beyond ``length_threshold``. Iterations stop when nothing is dropped,
after ``n_iterations``, or when dropping would leave fewer than
``min_streamlines`` (the last acceptable set is returned).

Streamlines must be oriented consistently first (node k of every streamline at
the same end), see :func:`pipeline.tract.profiles.orient_streamlines`.
"""

from __future__ import annotations

import numpy as np

__all__ = ["clean_bundle"]


def clean_bundle(
    streamlines,
    *,
    n_points: int = 100,
    distance_threshold: float = 3.0,
    length_threshold: float = 4.0,
    n_iterations: int = 5,
    min_streamlines: int = 20,
) -> np.ndarray:
    """Indices of the streamlines kept by iterative outlier removal.

    Parameters
    ----------
    streamlines : Streamlines
        One bundle, consistently oriented.
    n_points : int
        Nodes per streamline for the node-wise distances.
    distance_threshold : float
        Maximum Mahalanobis distance (in SD units) of any node to the bundle core.
    length_threshold : float
        Maximum absolute z-score of the streamline length.
    n_iterations : int
        Maximum number of passes.
    min_streamlines : int
        Never go below this many streamlines (a bundle already smaller is returned
        unchanged).

    Returns
    -------
    ndarray of int
        Sorted indices into ``streamlines``.
    """
    from dipy.tracking.streamline import Streamlines, length, set_number_of_points

    from pipeline.tract.weights import gaussian_weights

    keep = np.arange(len(streamlines))
    if len(keep) <= max(min_streamlines, 2):
        return keep
    resampled = set_number_of_points(Streamlines(streamlines), nb_points=n_points)
    lengths = np.asarray(length(streamlines), float)
    for _ in range(int(n_iterations)):
        # resampled once more inside gaussian_weights, exactly as in pyAFQ / DIPY
        sub = Streamlines([resampled[i] for i in keep])
        dist = gaussian_weights(sub, n_points=n_points, return_mahalanobis=True)
        dist = np.nan_to_num(np.asarray(dist, float), nan=0.0)
        sd = lengths[keep].std()
        z = np.abs(lengths[keep] - lengths[keep].mean()) / sd if sd > 0 else np.zeros(len(keep))
        ok = (dist.max(axis=1) <= distance_threshold) & (z <= length_threshold)
        if ok.all() or ok.sum() < min_streamlines:
            break
        keep = keep[ok]
    return keep
