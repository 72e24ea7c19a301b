"""Task grouping: features, fuzzy membership, clustering, quality, references, export."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from sklearn.metrics import adjusted_rand_score

from stg.errors import StgError
from stg.runs.export import export_grouping
from stg.grouping.features import isometric_coordinates, random_projection, task_coordinates, task_features
from stg.grouping.fuzzy import cluster_tasks, distances, fuzzy_membership
from stg.grouping.make import default_name, make_grouping, summary_lines
from stg.grouping.projection import project_tasks
from stg.grouping.quality import recommend_k, scan_k, stability
from stg.grouping.reference import compare, contingency, reference_labels, split_merge
from stg.runs.rundir import RunDir

N_SAMPLES = 1500


# -- helpers ------------------------------------------------------------------------------------
def planted_maps(n_groups: int = 20, per_group: int = 5, n: int = N_SAMPLES, noise: float = 0.05, seed: int = 0):
    """Data maps with planted groups: per-group random confidence + per-task noise. (T, n) float32."""
    rng = np.random.default_rng(seed)
    base_conf = rng.beta(2, 1, size=(n_groups, n))
    base_var = 0.3 * rng.random((n_groups, n))
    truth = np.repeat(np.arange(n_groups), per_group)
    conf = np.clip(base_conf[truth] + noise * rng.standard_normal((len(truth), n)), 0, 1)
    var = np.clip(base_var[truth] + noise / 2 * rng.standard_normal((len(truth), n)), 0, 0.7)
    corr = (conf > 0.5).astype(np.float32)
    return {"confidence": conf.astype(np.float32), "variability": var.astype(np.float32), "correctness": corr}, truth


def make_run(path: Path, maps: dict | None, names: list[str], references: dict | None = None, epochs=(3,)) -> RunDir:
    run = RunDir(path)
    run.path.mkdir(parents=True, exist_ok=True)
    run.write({"task_names": names, "references": references or {}, "config": {}, "status": "done"})
    if maps is not None:
        for e in epochs:
            run.write_datamap(e, maps)
    return run


def planted_run(path: Path, **kw) -> tuple[RunDir, np.ndarray]:
    maps, truth = planted_maps(**kw)
    names = [f"t{i:03d}" for i in range(len(truth))]
    ref = {f"g{g:02d}": [names[i] for i in np.flatnonzero(truth == g)] for g in np.unique(truth)}
    return make_run(path, maps, names, {"planted": ref}), truth


def snapshot(path: Path) -> dict[str, int]:
    return {str(p.relative_to(path)): p.stat().st_mtime_ns for p in sorted(path.rglob("*"))}


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    return planted_run(tmp_path_factory.mktemp("planted") / "run")


# -- membership formula -------------------------------------------------------------------------
@pytest.mark.parametrize("m", [2.0, 1.5])
def test_membership_matches_raw_formula(m):
    rng = np.random.default_rng(1)
    x, c = rng.random((30, 8)), rng.random((4, 8))
    d = np.sqrt(((x[:, None, :] - c[None]) ** 2).sum(-1)) + 1e-10
    p = d ** (-2.0 / (m - 1.0))
    raw = p / p.sum(1, keepdims=True)
    np.testing.assert_allclose(fuzzy_membership(x, c, m=m), raw, rtol=1e-12, atol=1e-14)
    # the classical 1 / sum_j (d_c / d_j)^(2/(m-1)) form as well
    alt = 1.0 / ((d[:, :, None] / d[:, None, :]) ** (2.0 / (m - 1.0))).sum(-1)
    np.testing.assert_allclose(fuzzy_membership(x, c, m=m), alt, rtol=1e-12)


@pytest.mark.parametrize("m", [1.001, 1.01, 1.07, 2.0, 10.0])
def test_membership_safe_near_one_and_zero_distance(m):
    rng = np.random.default_rng(2)
    x = rng.random((20, 5)) * 100
    c = np.vstack([x[0], x[1], x[1], rng.random(5)])  # zero distances and a duplicated centroid
    w = fuzzy_membership(x, c, m=m)
    assert w.shape == (20, 4) and np.isfinite(w).all()
    np.testing.assert_allclose(w.sum(1), 1.0, atol=1e-12)
    assert w[0, 0] > 0.99 and abs(w[1, 1] - w[1, 2]) < 1e-12


def test_distances_exact_zero():
    x = np.random.default_rng(3).random((5, 7))
    assert distances(x, x[[2]])[2, 0] == 0.0


# -- clustering ---------------------------------------------------------------------------------
def separated(seed=0, n_groups=4, per=6, dim=10):
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 20, (n_groups, dim))
    truth = np.repeat(np.arange(n_groups), per)
    return centers[truth] + rng.normal(0, 0.5, (len(truth), dim)), truth


@pytest.mark.parametrize("method", ["fuzzy-kmeans", "fcm", "kmeans"])
def test_stable_numbering_across_seeds(method):
    x, truth = separated()
    perm = np.random.default_rng(0).permutation(len(x))
    results = [cluster_tasks(x, k=4, method=method, seed=s, n_init=1) for s in range(6)]
    for r in results:
        np.testing.assert_array_equal(r.labels, results[0].labels)
        np.testing.assert_allclose(r.membership, results[0].membership, atol=1e-9)
        np.testing.assert_allclose(r.membership.sum(1), 1.0)
        first = [int(np.flatnonzero(r.labels == c)[0]) for c in range(4)]
        assert first == sorted(first)  # cluster numbers follow the first task that picks them
    assert adjusted_rand_score(truth, results[0].labels) == 1.0
    # shuffled task order: same partition
    shuffled = cluster_tasks(x[perm], k=4, method=method, seed=0)
    assert adjusted_rand_score(results[0].labels[perm], shuffled.labels) == 1.0


def test_fcm_converges_and_matches_fuzzy_kmeans():
    x, _ = separated(seed=4)
    fcm = cluster_tasks(x, k=4, m=1.5, method="fcm", seed=0, eps=1e-8)
    fkm = cluster_tasks(x, k=4, m=1.5, method="fuzzy-kmeans", seed=0)
    assert fcm.n_iter < 300
    np.testing.assert_array_equal(fcm.labels, fkm.labels)
    np.testing.assert_allclose(fcm.centroids, fkm.centroids, atol=0.1)


def test_kmeans_is_one_hot():
    x, _ = separated()
    r = cluster_tasks(x, k=4, method="kmeans")
    assert set(np.unique(r.membership)) == {0.0, 1.0}
    np.testing.assert_array_equal(r.membership.argmax(1), r.labels)


def test_isometric_coordinates_preserve_clustering():
    maps, truth = planted_maps(n_groups=6, per_group=4, n=800)
    x = np.concatenate([maps["confidence"], maps["variability"]], axis=1)
    y = isometric_coordinates(x)
    assert y.shape[0] == 24 and y.shape[1] <= 24
    np.testing.assert_allclose(distances(y, y), distances(x, x), atol=1e-6)
    a = cluster_tasks(x, k=6, seed=0)
    b = cluster_tasks(y, k=6, seed=0)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_allclose(a.membership, b.membership, atol=1e-6)


def test_random_projection_shape_seed_and_distances():
    rng = np.random.default_rng(5)
    x = rng.random((10, 9000)).astype(np.float32)
    p = random_projection(x, dim=1024, seed=7)
    assert p.shape == (10, 1024) and p.dtype == np.float32
    np.testing.assert_array_equal(p, random_projection(x, dim=1024, seed=7))
    assert not np.array_equal(p, random_projection(x, dim=1024, seed=8))
    ratio = distances(p, p)[np.triu_indices(10, 1)] / distances(x, x)[np.triu_indices(10, 1)]
    assert np.all(np.abs(ratio - 1) < 0.15)


# -- planted groups on a run --------------------------------------------------------------------
def test_planted_recovery_exact_and_projected(planted):
    run, truth = planted
    exact = make_grouping(run, k=20, save=False)
    proj = make_grouping(run, k=20, projection_dim=512, save=False)
    assert exact["scores"]["planted"]["ari"] >= 0.95
    assert adjusted_rand_score(truth, exact["labels"]) >= 0.95
    assert adjusted_rand_score(truth, proj["labels"]) >= 0.95
    assert adjusted_rand_score(exact["labels"], proj["labels"]) >= 0.95
    w = np.asarray(exact["membership"])
    assert w.shape == (100, 20) and np.isfinite(w).all()
    np.testing.assert_allclose(w.sum(1), 1.0, atol=1e-9)


def test_make_grouping_writes_file_and_cache(planted):
    run, _ = planted
    g = make_grouping(run, k=20, m=1.07)
    assert g["name"] == "fuzzy-kmeans-k20-m1.07" == default_name(method="fuzzy-kmeans", k=20, m=1.07)
    saved = run.read_grouping(g["name"])
    for key in ("k", "fuzziness", "method", "seed", "task_names", "membership", "labels", "scores", "features", "created"):
        assert key in saved
    assert saved["labels"] == g["labels"] and saved["fuzziness"] == 1.07
    assert any(p.name.startswith("coords_") for p in (run.path / "cache").iterdir())
    # cache hit returns the same coordinates; features match the data map
    np.testing.assert_array_equal(task_coordinates(run), task_coordinates(run, cache=False))
    x = task_features(run)
    assert x.shape == (100, 2 * N_SAMPLES) and x.dtype == np.float32
    lines = summary_lines(saved)
    assert lines[0].startswith("fuzzy-kmeans-k20-m1.07") and len(lines) == 1 + 20 + 1
    assert "planted" in lines[-1]


def test_cache_invalidated_when_datamap_changes(tmp_path):
    run, _ = planted_run(tmp_path / "run", n_groups=4, per_group=3, n=200)
    first = task_coordinates(run)
    maps = run.load_datamap()
    maps["confidence"] = maps["confidence"][::-1].copy()
    run.write_datamap(3, maps)
    second = task_coordinates(run)
    assert not np.allclose(np.abs(first), np.abs(second))


def test_epochs_option(tmp_path):
    maps, truth = planted_maps(n_groups=3, per_group=3, n=100)
    run = make_run(tmp_path / "run", maps, [f"t{i}" for i in range(9)], epochs=(2, 5))
    assert task_features(run, epochs="all").shape == (9, 400)
    assert task_features(run, epochs="2").shape == (9, 200)
    for bad in ("7", "x,y", ""):
        with pytest.raises(StgError):
            task_features(run, epochs=bad)


def test_complement_identical_rows_and_random_task_alone(tmp_path):
    maps, truth = planted_maps(n_groups=4, per_group=4, n=1000)
    rng = np.random.default_rng(9)
    conf = np.vstack([maps["confidence"], maps["confidence"][2], rng.random((1, 1000), dtype=np.float32)])
    var = np.vstack([maps["variability"], maps["variability"][2], 0.3 * rng.random((1, 1000), dtype=np.float32)])
    names = [f"t{i}" for i in range(16)] + ["not_t2", "random"]
    run = make_run(tmp_path / "run", {"confidence": conf, "variability": var, "correctness": conf}, names)
    g = make_grouping(run, k=5, save=False)
    w = np.asarray(g["membership"])
    np.testing.assert_allclose(w[16], w[2], atol=1e-9)
    labels = np.asarray(g["labels"])
    assert (labels == labels[17]).sum() == 1 and w[17].max() > 0.99
    assert adjusted_rand_score(truth, labels[:16]) == 1.0


# -- quality ------------------------------------------------------------------------------------
def test_scan_and_stability(planted):
    run, truth = planted
    y = task_coordinates(run)
    scan = scan_k(y, ks=[10, 20, 30])
    assert [r["k"] for r in scan] == [10, 20, 30]
    assert recommend_k(scan) == 20
    for r in scan:
        assert 1 / r["k"] <= r["partition_coefficient"] <= 1 + 1e-12 and r["inertia"] > 0
        # Xie-Beni from its definition: sum_tc w_tc^m ||y_t - C_c||^2 / (T * min_{c != c'} ||C_c - C_c'||^2),
        # with the clustering scan_k makes (its defaults: fuzzy-kmeans, m = 1.07, seed 0, n_init 10)
        res = cluster_tasks(y, k=r["k"], m=1.07, method="fuzzy-kmeans", seed=0, n_init=10)
        d2 = ((y[:, None, :] - res.centroids[None, :, :]) ** 2).sum(-1)
        c2 = ((res.centroids[:, None, :] - res.centroids[None, :, :]) ** 2).sum(-1)
        want = (res.membership ** 1.07 * d2).sum() / (len(y) * c2[~np.eye(r["k"], dtype=bool)].min())
        assert r["xie_beni"] == pytest.approx(want, rel=1e-9) and r["xie_beni"] > 0
    # by hand: two hard clusters {0, 1} and {10, 11}: centroids 0.5 and 10.5, compactness 4 * 0.25,
    # separation 10^2 -> 1 / (4 * 100)
    line = np.array([[0.0], [1.0], [10.0], [11.0]])
    assert scan_k(line, ks=[2], method="kmeans")[0]["xie_beni"] == pytest.approx(0.0025, rel=1e-12)
    assert scan[0]["inertia"] > scan[1]["inertia"] > scan[2]["inertia"]
    st = stability(y, k=20, seeds=[0, 1, 2])
    assert st["consensus"].shape == (100, 100) and st["mean_ari"] == pytest.approx(1.0)
    np.testing.assert_allclose(st["per_task"], 1.0)
    assert np.isnan(scan_k(y[:5], ks=[5])[0]["silhouette"])
    with pytest.raises(StgError):
        recommend_k(scan_k(y[:5], ks=[5]))


# -- references ---------------------------------------------------------------------------------
NAMES = ["a", "b", "c", "d", "e", "f"]
REF = {"x": ["a", "b", "c"], "y": ["d", "e"], "z": ["f"]}


def test_reference_metrics_by_hand():
    np.testing.assert_array_equal(reference_labels(REF, NAMES), [0, 0, 0, 1, 1, 2])
    labels = [0, 0, 1, 1, 1, 2]  # c moved into y's cluster
    s = compare(labels, REF, NAMES)
    assert s["purity"] == pytest.approx((2 + 2 + 1) / 6)
    assert s["ari"] == pytest.approx(adjusted_rand_score([0, 0, 0, 1, 1, 2], labels))
    same = compare([5, 5, 5, 3, 3, 0], REF, NAMES)  # identical partition, other numbers
    assert same["ari"] == pytest.approx(1.0) and same["nmi"] == pytest.approx(1.0) and same["purity"] == 1.0
    perm = compare([2, 2, 0, 0, 0, 1], REF, NAMES)  # relabelled clusters: same scores
    for key in ("ari", "nmi", "purity"):
        assert perm[key] == pytest.approx(s[key])
    table = contingency(labels, REF, NAMES, k=4)
    assert table.values.sum() == 6 and table.shape == (3, 4)
    assert table.loc["x", 0] == 2 and table.loc["x", 1] == 1
    sm = split_merge(labels, REF, NAMES)
    assert {"kind": "split", "group": "x", "clusters": {0: ["a", "b"], 1: ["c"]}} in sm
    assert {"kind": "merge", "cluster": 1, "groups": {"x": ["c"], "y": ["d", "e"]}} in sm
    assert len(sm) == 2


def test_reference_missing_task():
    with pytest.raises(StgError, match="missing"):
        compare([0, 0, 1, 1, 1, 2], {"x": ["a", "b"]}, NAMES)
    with pytest.raises(StgError):
        reference_labels({"x": ["a"], "y": ["a"]}, ["a"])
    partial = compare([0, 0, 1, 1, 1, 2], {"x": ["a", "b"], "y": ["d"]}, NAMES, missing="ignore")
    assert partial["n_tasks"] == 3 and partial["purity"] == 1.0


# -- export -------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["json", "csv", "yaml"])
def test_export_round_trip(planted, fmt):
    run, _ = planted
    g = make_grouping(run, k=20, save=False)
    refs = run.read()["references"]
    text = export_grouping(g, refs, fmt=fmt)
    if fmt == "csv":
        rows = list(csv.DictReader(io.StringIO(text)))
        member = [[float(r[f"membership_{c}"]) for c in range(20)] for r in rows]
    else:
        doc = json.loads(text) if fmt == "json" else yaml.safe_load(text)
        assert doc["grouping"]["k"] == 20 and "membership" not in doc["grouping"]
        rows = doc["tasks"]
        member = [[r[f"membership_{c}"] for c in range(20)] for r in rows]
    assert len(rows) == 100
    assert rows[7]["task"] == "t007" and rows[7]["planted"] == "g01"
    assert int(rows[7]["cluster"]) == g["labels"][7]
    np.testing.assert_allclose(np.sum(member, axis=1), 1.0, atol=1e-9)


# -- projection ---------------------------------------------------------------------------------
def _pca_scores(x: np.ndarray) -> np.ndarray:
    """The first two principal-component scores of x from numpy's SVD, each axis's sign fixed so
    its largest entry is positive (project_tasks's convention)."""
    xc = x - x.mean(axis=0)
    u, sv, _ = np.linalg.svd(xc, full_matrices=False)
    scores = u[:, :2] * sv[:2]
    signs = np.sign(scores[np.argmax(np.abs(scores), axis=0), [0, 1]])
    return scores * signs


def test_project_tasks_pca():
    from sklearn.decomposition import PCA

    x, _ = separated()
    p = project_tasks(x)
    assert p.shape == (len(x), 2) and np.isfinite(p).all()
    np.testing.assert_allclose(p, _pca_scores(x), atol=1e-9 * np.abs(p).max())
    ref = PCA(n_components=2, svd_solver="full").fit_transform(x)
    for axis in range(2):  # scikit-learn's scores, up to each axis's sign
        sign = np.sign(ref[:, axis] @ p[:, axis])
        np.testing.assert_allclose(p[:, axis], sign * ref[:, axis], atol=1e-9 * np.abs(p).max())
    assert np.all(np.abs(p).max(axis=0) == p.max(axis=0))  # each axis's largest entry is positive
    # two tasks: one component, +-half their distance; the missing second axis is zeros
    two = project_tasks(x[:2])
    np.testing.assert_allclose(np.sort(two[:, 0]), np.array([-1, 1]) * np.linalg.norm(x[0] - x[1]) / 2)
    np.testing.assert_array_equal(two[:, 1], 0.0)
    np.testing.assert_array_equal(project_tasks(x[:1]), np.zeros((1, 2)))
    np.testing.assert_array_equal(p, project_tasks(x))
    assert project_tasks(x[:2]).shape == (2, 2) and project_tasks(x[:1]).shape == (1, 2)
    with pytest.raises(StgError):
        project_tasks(x, method="tsne")


@pytest.mark.slow
def test_project_tasks_umap():
    pytest.importorskip("umap")
    x, _ = separated()
    p = project_tasks(x, method="umap", seed=0)
    assert p.shape == (len(x), 2) and np.isfinite(p).all()
    assert project_tasks(x[:3], method="umap").shape == (3, 2)


# -- bad input ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs",
    [dict(k=1), dict(k=0), dict(k=101), dict(k=5, m=1.0), dict(k=5, m=0.5), dict(k=5, method="spectral"),
     dict(k=5, name="../evil"), dict(k=5, epochs="9"), dict(k=5, projection_dim=0)],
)
def test_bad_grouping_input_raises_and_writes_nothing(tmp_path, kwargs):
    run, _ = planted_run(tmp_path / "run", n=200)
    before = snapshot(run.path)
    with pytest.raises(StgError) as err:
        make_grouping(run, **kwargs)
    assert "\n" not in str(err.value)
    assert snapshot(run.path) == before


def test_nan_datamap_and_missing_datamap(tmp_path):
    maps, _ = planted_maps(n_groups=2, per_group=3, n=50)
    maps["variability"][4, 10] = np.nan
    names = [f"t{i}" for i in range(6)]
    run = make_run(tmp_path / "nan", maps, names)
    before = snapshot(run.path)
    with pytest.raises(StgError, match="epoch_003.npz"):
        make_grouping(run, k=2)
    assert snapshot(run.path) == before
    empty = make_run(tmp_path / "empty", None, names)
    before = snapshot(empty.path)
    with pytest.raises(StgError, match="no data map"):
        make_grouping(empty, k=2)
    with pytest.raises(StgError, match="no data map"):
        task_features(empty)
    assert snapshot(empty.path) == before


def test_bad_cluster_and_export_input(planted):
    run, _ = planted
    x = np.random.default_rng(0).random((6, 3))
    for kwargs in (dict(k=1), dict(k=7), dict(k=2, m=1.0), dict(k=2, method="nope"), dict(k=2, method="fcm", m=0.9)):
        with pytest.raises(StgError):
            cluster_tasks(x, **kwargs)
    cluster_tasks(x, k=2, method="kmeans", m=1.0)  # m unused by hard k-means
    bad = x.copy()
    bad[1, 1] = np.nan
    with pytest.raises(StgError, match="NaN"):
        cluster_tasks(bad, k=2)
    with pytest.raises(StgError):
        fuzzy_membership(x, x[:2], m=1.0)
    before = snapshot(run.path)
    with pytest.raises(StgError, match="unknown grouping"):
        run.read_grouping("no-such-grouping")
    g = make_grouping(run, k=20, save=False)
    with pytest.raises(StgError, match="format"):
        export_grouping(g, {}, fmt="xml")
    assert snapshot(run.path) == before


def test_default_n_init_keeps_the_work_of_300_restarts_at_100_tasks():
    from stg.grouping.fuzzy import N_INIT, default_n_init

    assert default_n_init(100, 20) == N_INIT  # where 300 restarts were measured to agree across seeds
    assert default_n_init(13, 3) == N_INIT
    assert default_n_init(200, 20) == N_INIT // 4  # work ~ T^2 k
    assert default_n_init(1000, 100) == 10  # floor: the old default
