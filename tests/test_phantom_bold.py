"""Scientific tests of the resting-state BOLD phantom (pipeline.phantom.bold).

Images are simulated on a 4 mm grid in which scanner space equals MNI space
(identity ``to_template``), so that nilearn's sphere masker at the atlas
coordinates reads exactly the simulated regions.
"""

from __future__ import annotations

import warnings
from collections import deque

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from pipeline.motion import framewise_displacement, simulate_motion_trace
from pipeline.phantom import bold

TR = 2.0
GRID_SHAPE = (49, 59, 48)
GRID_AFFINE = np.array(
    [[4.0, 0, 0, -96.0], [0, 4.0, 0, -132.0], [0, 0, 4.0, -72.0], [0, 0, 0, 1.0]]
)


def _identity(points: np.ndarray) -> np.ndarray:
    return points


@pytest.fixture(scope="module")
def tissue():
    return bold.load_mni_tissue_maps(resolution=2)


@pytest.fixture(scope="module")
def atlas():
    return bold.load_coordinate_atlas("dosenbach")


@pytest.fixture(scope="module")
def edges(atlas):
    return bold.choose_planted_subnetwork(atlas, rng=np.random.default_rng(0))


@pytest.fixture(scope="module")
def loadings(atlas):
    return bold.network_loadings(atlas, rng=np.random.default_rng(1))


def _simulate(tissue, atlas, edges, *, seed, n_volumes=120, **kwargs):
    gm, wm, csf, taff = tissue
    kwargs.setdefault("effect", 0.0)
    return bold.simulate_bold(
        grid_shape=GRID_SHAPE,
        grid_affine=GRID_AFFINE,
        to_template=_identity,
        template_affine=taff,
        gm=gm,
        wm=wm,
        csf=csf,
        atlas=atlas,
        edges=edges,
        n_volumes=n_volumes,
        tr=TR,
        rng=np.random.default_rng(seed),
        **kwargs,
    )


def _spheres(image, atlas, confounds=None, **kwargs):
    from nilearn.maskers import NiftiSpheresMasker

    masker = NiftiSpheresMasker(
        seeds=atlas.coords,
        radius=6.0,
        allow_overlap=True,  # Dosenbach spheres of 6 mm overlap
        standardize="zscore_sample",
        **kwargs,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return masker.fit_transform(image, confounds=confounds)


def _offdiag(mat):
    return mat[np.triu_indices(mat.shape[0], 1)]


def _same_network(atlas):
    net = np.array(atlas.networks)
    return (net[:, None] == net[None, :]) & (net[:, None] != bold.UNASSIGNED)


# ------------------------------------------------------------------ atlases


@pytest.mark.parametrize(
    ("name", "n_regions"), [("dosenbach", 160), ("power", 264), ("seitzman", 300)]
)
def test_coordinate_atlases_load_offline(name, n_regions):
    atl = bold.load_coordinate_atlas(name)
    assert atl.name == name
    assert atl.coords.shape == (n_regions, 3)
    assert len(atl.labels) == len(set(atl.labels)) == n_regions
    assert len(atl.networks) == n_regions
    assert not atl.coords.flags.writeable
    # MNI brain coordinates
    assert np.all(np.abs(atl.coords[:, 0]) < 75)
    assert np.all((atl.coords[:, 1] > -110) & (atl.coords[:, 1] < 75))
    assert np.all((atl.coords[:, 2] > -60) & (atl.coords[:, 2] < 85))
    assert len(atl.network_names) >= 5
    assert bold.UNASSIGNED not in atl.network_names
    assert bold.load_coordinate_atlas(name) is atl  # cached


def test_atlas_labels_and_power_networks():
    dos = bold.load_coordinate_atlas("dosenbach")
    assert "default" in dos.networks and "cerebellum" in dos.networks
    assert any(label.startswith("inf cerebellum") for label in dos.labels)
    power = bold.load_coordinate_atlas("power")
    seitz = bold.load_coordinate_atlas("seitzman")
    assert power.labels[0] == "power_001" and seitz.labels[0].startswith("seitzman_")
    # Power networks: nearest Seitzman region within 10 mm, else unassigned.
    assigned = np.array([n != bold.UNASSIGNED for n in power.networks])
    assert assigned.sum() >= 240
    d = np.linalg.norm(power.coords[:, None] - seitz.coords[None], axis=2)
    nearest = d.argmin(axis=1)
    for i in range(power.n_regions):
        if d[i, nearest[i]] <= 10.0:
            assert power.networks[i] == seitz.networks[nearest[i]]
        else:
            assert power.networks[i] == bold.UNASSIGNED
    with pytest.raises(ValueError, match="unknown coordinate atlas"):
        bold.load_coordinate_atlas("aal")  # type: ignore[arg-type]


# ------------------------------------------------------------ population model


def test_planted_subnetwork_is_connected_and_mixed(atlas):
    for seed in range(5):
        edges = bold.choose_planted_subnetwork(atlas, rng=np.random.default_rng(seed))
        assert len(edges) == 15
        assert all(i < j for i, j in edges) and list(edges) == sorted(set(edges))
        nodes = sorted({v for e in edges for v in e})
        assert len(nodes) == 10
        # connected (breadth-first search)
        adj = {v: set() for v in nodes}
        for i, j in edges:
            adj[i].add(j)
            adj[j].add(i)
        seen, todo = {nodes[0]}, deque([nodes[0]])
        while todo:
            for w in adj[todo.popleft()] - seen:
                seen.add(w)
                todo.append(w)
        assert seen == set(nodes)
        same = [atlas.networks[i] == atlas.networks[j] for i, j in edges]
        assert any(same) and not all(same)
        assert bold.choose_planted_subnetwork(atlas, rng=np.random.default_rng(seed)) == edges
    small = bold.choose_planted_subnetwork(
        atlas, n_regions=4, n_edges=3, rng=np.random.default_rng(0), candidates=range(40)
    )
    assert len(small) == 3 and all(j < 40 for _, j in small)
    with pytest.raises(ValueError, match="n_edges"):
        bold.choose_planted_subnetwork(atlas, n_regions=4, n_edges=7, rng=np.random.default_rng(0))


def test_population_correlation_is_valid_and_planted(atlas, edges, loadings):
    strong = 0.95 * bold.max_planted_effect(loadings, edges)
    base = bold.population_correlation(loadings, edges, 0.0)
    follow = bold.population_correlation(loadings, edges, strong)
    same = _same_network(atlas)
    off = ~np.eye(atlas.n_regions, dtype=bool)
    for corr in (base, follow):
        np.testing.assert_allclose(corr, corr.T)
        np.testing.assert_allclose(np.diag(corr), 1.0)
        assert np.linalg.eigvalsh(corr).min() > 0  # positive definite
        assert np.all(np.abs(corr[off]) < 1)
        assert corr[same & off].mean() > corr[~same].mean() + 0.2
    # three graded levels: same network, same large-scale system, unrelated
    system = np.array([bold.network_system(n) if n in atlas.network_names else None
                       for n in atlas.networks], dtype=object)
    kin = (system[:, None] == system[None, :]) & (system[:, None] != None) & ~same  # noqa: E711
    assert base[same & off].mean() == pytest.approx(0.6, abs=0.05)
    assert base[kin].mean() == pytest.approx(0.3, abs=0.03)
    assert base[~same & ~kin].mean() == pytest.approx(0.05, abs=0.02)
    planted = np.zeros_like(same)
    for i, j in edges:
        planted[i, j] = planted[j, i] = True
    # planted edges rise by exactly effect**2 ...
    np.testing.assert_allclose(follow[planted] - base[planted], strong**2)
    assert np.all(follow[planted] > base[planted])
    # ... and nothing else changes (in particular pairs not touching planted nodes)
    nodes = sorted({v for e in edges for v in e})
    away = np.ones(atlas.n_regions, dtype=bool)
    away[nodes] = False
    np.testing.assert_array_equal(follow[np.ix_(away, away)], base[np.ix_(away, away)])
    np.testing.assert_array_equal(follow[~planted], base[~planted])
    too_big = 1.05 * bold.max_planted_effect(loadings, edges)
    with pytest.raises(ValueError, match="too large"):
        bold.population_correlation(loadings, edges, too_big)


def test_band_limited_noise_unit_variance_in_band():
    x = bold.band_limited_noise(300, 2000, tr=TR, rng=np.random.default_rng(0))
    assert x.shape == (300, 2000)
    assert x.var(axis=0).mean() == pytest.approx(1.0, abs=0.02)
    power = np.abs(np.fft.rfft(x, axis=0)) ** 2
    freqs = np.fft.rfftfreq(300, TR)
    outside = (freqs < 0.01) | (freqs > 0.1)
    assert power[outside].max() < 1e-18 * power[~outside].max() + 1e-18
    with pytest.raises(ValueError, match="too short"):
        bold.band_limited_noise(3, 1, tr=TR, rng=np.random.default_rng(0))


def test_realised_timeseries_follow_population(atlas, edges, loadings):
    effect = 0.3
    x = bold.simulate_region_timeseries(
        loadings, edges, effect, n_volumes=4000, tr=TR, rng=np.random.default_rng(3)
    )
    pop = bold.population_correlation(loadings, edges, effect)
    sample = np.corrcoef(x.T)
    assert x.var(axis=0).mean() == pytest.approx(1.0, abs=0.05)
    assert np.abs(_offdiag(sample - pop)).mean() < 0.04
    assert np.corrcoef(_offdiag(sample), _offdiag(pop))[0, 1] > 0.95


# ------------------------------------------------------------------- images


@pytest.fixture(scope="module")
def noiseless_run(tissue, atlas, edges):
    return _simulate(tissue, atlas, edges, seed=5, effect=0.2, noiseless=True)


def test_noiseless_spheres_recover_region_correlations(noiseless_run, atlas):
    ts = _spheres(noiseless_run.image, atlas)
    measured = np.corrcoef(ts.T)
    realised = np.corrcoef(noiseless_run.region_timeseries.T)
    assert np.corrcoef(_offdiag(measured), _offdiag(realised))[0, 1] >= 0.95


def test_image_geometry_and_header(noiseless_run, tissue, tmp_path):
    img = noiseless_run.image
    assert img.shape == (*GRID_SHAPE, 120)
    np.testing.assert_allclose(img.affine, GRID_AFFINE)
    assert img.header.get_zooms() == (4.0, 4.0, 4.0, TR)
    assert img.header.get_xyzt_units() == ("mm", "sec")
    data = img.get_fdata(dtype=np.float32)
    mean = data.mean(axis=-1)
    brain = mean > 0
    assert 0.15 < brain.mean() < 0.6
    assert data[~brain].max() == 0  # background is exactly 0
    # tissue contrast: CSF > GM > WM (T2*-weighted), roughly 1000 / 800 / 650
    _, _, csf, taff = tissue
    ijk = np.round(np.linalg.solve(taff, [[-2.0], [-20.0], [14.0], [1.0]])[:3, 0]).astype(int)
    assert csf[tuple(ijk)] > 0.8  # ventricle
    vox = np.round(np.linalg.solve(GRID_AFFINE, [-2.0, -20.0, 14.0, 1.0])[:3]).astype(int)
    assert 700 < mean[tuple(vox)] < 1400
    assert np.all(noiseless_run.motion == 0) and np.all(noiseless_run.fd == 0)
    path = tmp_path / "bold.nii.gz"
    nib.save(img, path)
    back = nib.load(path)
    assert back.get_data_dtype() == np.int16
    assert back.header.get_zooms()[3] == TR
    np.testing.assert_allclose(back.get_fdata(dtype=np.float32), data, atol=0.1)


@pytest.fixture(scope="module")
def noisy_pair(tissue, atlas, edges):
    """Baseline and strong-effect follow-up with the same draws (paired)."""
    strong = 0.95 * bold.max_planted_effect(
        bold.network_loadings(atlas, rng=np.random.default_rng(bold._POPULATION_SEED)), edges
    )
    runs = [_simulate(tissue, atlas, edges, seed=11, effect=e) for e in (0.0, strong)]
    return runs, strong


def test_planted_edges_rise_with_noise(noisy_pair, atlas, edges):
    (base, follow), strong = noisy_pair
    assert base.effect == 0.0 and follow.effect == pytest.approx(strong)
    planted = np.zeros((atlas.n_regions,) * 2, dtype=bool)
    for i, j in edges:
        planted[i, j] = True
    others = np.triu(~planted, 1)
    z = {}
    for name, run in (("base", base), ("follow", follow)):
        ts = _spheres(run.image, atlas, detrend=True, high_pass=0.008, t_r=TR)
        z[name] = np.arctanh(np.clip(np.corrcoef(ts.T), -0.999, 0.999))
    rise = z["follow"][planted].mean() - z["base"][planted].mean()
    assert rise > 0.03  # population: +0.12 in r; measured 0.05-0.18 over seeds
    assert abs(z["follow"][others].mean() - z["base"][others].mean()) < rise / 3
    # the network structure is visible through the noise
    same = np.triu(_same_network(atlas), 1)
    assert z["base"][same].mean() > z["base"][np.triu(~_same_network(atlas), 1)].mean() + 0.1


def test_wm_csf_regression_improves_recovery(noisy_pair, atlas, tissue):
    from scipy.ndimage import map_coordinates

    run = noisy_pair[0][0]
    _, wm, csf, taff = tissue
    world = np.indices(GRID_SHAPE).reshape(3, -1).T * 4.0 + GRID_AFFINE[:3, 3]
    coords = np.linalg.solve(taff, np.c_[world, np.ones(len(world))].T)[:3]
    p_wm = map_coordinates(wm, coords, order=1).reshape(GRID_SHAPE)
    p_csf = map_coordinates(csf, coords, order=1).reshape(GRID_SHAPE)
    data = run.image.get_fdata(dtype=np.float32)
    confounds = np.column_stack([data[p_wm > 0.95].mean(0), data[p_csf > 0.9].mean(0)])
    realised = _offdiag(np.corrcoef(run.region_timeseries.T))
    score = []
    for conf in (None, confounds):
        ts = _spheres(run.image, atlas, confounds=conf, detrend=True, high_pass=0.008, t_r=TR)
        score.append(np.corrcoef(_offdiag(np.corrcoef(ts.T)), realised)[0, 1])
    assert score[1] > score[0] + 0.03


@pytest.fixture(scope="module")
def motion_runs(tissue, atlas, edges):
    trace = simulate_motion_trace(80, rng=np.random.default_rng(1))
    runs = {
        name: _simulate(
            tissue, atlas, edges, seed=7, n_volumes=80, motion=trace, motion_artefact_pct=pct
        )
        for name, pct in (("art", 3.0), ("art_again", 3.0), ("control", 0.0))
    }
    return trace, runs


def test_motion_is_recorded_and_reproducible(motion_runs):
    trace, runs = motion_runs
    a, b = runs["art"], runs["art_again"]
    np.testing.assert_array_equal(a.motion, trace)
    np.testing.assert_allclose(a.fd, framewise_displacement(trace))
    assert a.fd.max() > 0.5
    np.testing.assert_array_equal(np.asarray(a.image.dataobj), np.asarray(b.image.dataobj))
    np.testing.assert_array_equal(a.region_timeseries, b.region_timeseries)
    np.testing.assert_array_equal(a.population_correlation, b.population_correlation)


def test_motion_artefact_at_brain_edges_correlates_with_fd(motion_runs):
    _, runs = motion_runs
    fd = runs["art"].fd
    medians = {}
    for name in ("art", "control"):
        data = runs[name].image.get_fdata(dtype=np.float32)
        mean = data.mean(axis=-1)
        mask = mean > 0.5 * np.median(mean[mean > 0])
        edge = mask & ~ndimage.binary_erosion(mask, iterations=2)
        ts = data[edge]
        ts = (ts - ts.mean(1, keepdims=True)) / (ts.std(1, keepdims=True) + 1e-6)
        f = (fd - fd.mean()) / fd.std()
        medians[name] = np.median(ts @ f / len(fd))
    assert medians["art"] < -0.05  # edge signals drop on high-FD volumes
    assert medians["art"] < medians["control"] - 0.1

    # The artefact itself: only on volumes with large FD (and the one after),
    # negative, proportional to FD and strongest at the brain's periphery.
    art = runs["art"].image.get_fdata(dtype=np.float32)
    ctl = runs["control"].image.get_fdata(dtype=np.float32)
    big = fd > 0.3
    hit = big | np.r_[False, big[:-1]]
    rel = np.where(ctl > 0, art / np.where(ctl > 0, ctl, 1) - 1, 0)
    np.testing.assert_allclose(rel[..., ~hit], 0, atol=1e-5)
    t = int(np.argmax(fd))
    mask = ctl[..., t] > 300
    rim = mask & ~ndimage.binary_erosion(mask, iterations=1)
    core = ndimage.binary_erosion(mask, iterations=6)
    assert rel[..., t][rim].mean() < -0.01 * fd[t]
    assert rel[..., t][core].mean() > rel[..., t][rim].mean() / 3
    assert np.all(rel[..., t] <= 1e-6)


def test_noiseless_ignores_motion_and_inputs_are_checked(tissue, atlas, edges):
    trace = simulate_motion_trace(20, rng=np.random.default_rng(0))
    run = _simulate(tissue, atlas, edges, seed=0, n_volumes=20, motion=trace, noiseless=True)
    assert np.all(run.motion == 0) and np.all(run.fd == 0)
    with pytest.raises(ValueError, match="motion must have shape"):
        _simulate(tissue, atlas, edges, seed=0, n_volumes=20, motion=trace[:10])
    with pytest.raises(ValueError, match="to_template returned"):
        gm, wm, csf, taff = tissue
        bold.simulate_bold(
            grid_shape=GRID_SHAPE,
            grid_affine=GRID_AFFINE,
            to_template=lambda p: p[:, :2],
            template_affine=taff,
            gm=gm,
            wm=wm,
            csf=csf,
            atlas=atlas,
            edges=edges,
            effect=0.0,
            n_volumes=20,
            tr=TR,
            rng=np.random.default_rng(0),
        )
    with pytest.raises(ValueError, match="too large"):
        _simulate(tissue, atlas, edges, seed=0, n_volumes=20, effect=5.0)
