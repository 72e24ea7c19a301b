"""Issue 15 item 7, readability: axis titles and hover counts on the data-map grid, tasks ordered by
similarity in the membership heatmap, gains against every baseline, the grouped-training progress
line. Each figure's numbers are checked against a plain computation."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from stg.grouping.order import similarity_order
from stg.plots import datamap_grid, gain_bars, membership_heatmap
from stg.runs.jobs import JobSnapshot, duration_text, progress_text
from stg.train.loop import Progress


# -- the data-map grid ----------------------------------------------------------------------------
def naive_counts(conf: np.ndarray, var: np.ndarray, bins: int) -> np.ndarray:
    """(bins, bins) counts [confidence bin, variability bin], one sample at a time."""
    out = np.zeros((bins, bins), dtype=np.int64)
    for c, v in zip(conf, var):
        out[min(int(c * bins), bins - 1), min(int(v / 0.5 * bins), bins - 1)] += 1
    return out


def test_grid_hover_shows_each_cells_count() -> None:
    rng = np.random.default_rng(0)
    conf, var = rng.random((5, 300)), rng.random((5, 300)) * 0.5
    fig = datamap_grid(conf, var, [f"t{i}" for i in range(5)], bins=8)
    for t, trace in enumerate(fig.data):
        np.testing.assert_array_equal(np.asarray(trace.customdata), naive_counts(conf[t], var[t], 8))
        assert "%{customdata:,} samples" in trace.hovertemplate
        assert trace.hoverongaps is False  # an empty cell has no hover


def test_grid_has_axis_titles_under_every_column_and_beside_every_row() -> None:
    n = 13  # 4 columns x 4 rows; the last row holds one map
    rng = np.random.default_rng(1)
    fig = datamap_grid(rng.random((n, 50)), rng.random((n, 50)) * 0.5, [f"t{i}" for i in range(n)])
    rows, cols = 4, 4
    for col in range(1, cols + 1):
        lowest = max(r for r in range(1, rows + 1) if (r - 1) * cols + col <= n)
        for row in range(1, rows + 1):
            axes = fig.get_subplot(row, col)
            if row == lowest:
                assert axes.xaxis.title.text == "variability" and axes.xaxis.showticklabels
            elif row > lowest:  # no task there: no empty frame either
                assert axes.xaxis.visible is False and axes.yaxis.visible is False
            else:
                assert not axes.xaxis.title.text and axes.xaxis.showticklabels is False
    for row in range(1, rows + 1):
        assert fig.get_subplot(row, 1).yaxis.title.text == "confidence"


# -- tasks ordered by similarity ------------------------------------------------------------------
def path_length(x: np.ndarray, order) -> float:
    return float(sum(np.linalg.norm(x[a] - x[b]) for a, b in zip(order[:-1], order[1:])))


def all_leaf_orders(z: np.ndarray, n: int):
    """Every order an average-linkage dendrogram allows: each node's two branches either way round."""
    def orders(node: int):
        if node < n:
            yield [node]
            return
        left, right = int(z[node - n, 0]), int(z[node - n, 1])
        for a, b in itertools.product(list(orders(left)), list(orders(right))):
            yield a + b
            yield b + a
    return list(orders(2 * n - 2))


@pytest.mark.parametrize("seed", range(5))
def test_within_a_cluster_the_order_is_the_shortest_the_dendrogram_allows(seed: int) -> None:
    from scipy.cluster.hierarchy import linkage
    from scipy.spatial.distance import pdist

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(7, 4))
    order = similarity_order(x, np.zeros(7, dtype=int))
    assert sorted(order.tolist()) == list(range(7))
    best = min(path_length(x, o) for o in all_leaf_orders(linkage(pdist(x), method="average"), 7))
    assert path_length(x, order) == pytest.approx(best, rel=1e-12)


def test_clusters_stay_blocks_in_centroid_order_and_a_line_is_recovered() -> None:
    rng = np.random.default_rng(3)
    # three clusters far apart on a line (centres 0, 10, 20); inside each, tasks along a short line
    pos = np.concatenate([c + np.linspace(0, 3, 6) for c in (0.0, 10.0, 20.0)])
    x = np.stack([pos, rng.normal(scale=1e-3, size=len(pos))], axis=1)
    labels = np.repeat([2, 0, 1], 6)  # cluster ids unrelated to position
    shuffle = rng.permutation(len(x))
    order = shuffle[similarity_order(x[shuffle], labels[shuffle])]
    blocks = [labels[order[i:i + 6]] for i in range(0, 18, 6)]
    assert all(len(set(b)) == 1 for b in blocks)  # each cluster contiguous
    p = pos[order]
    assert np.all(np.diff(p) > 0) or np.all(np.diff(p) < 0)  # the line, one way or the other


def test_membership_heatmap_rows_follow_the_similarity_order() -> None:
    rng = np.random.default_rng(4)
    x = rng.normal(size=(10, 3))
    w = rng.dirichlet(np.ones(3), size=10)
    names = [f"t{i}" for i in range(10)]
    fig = membership_heatmap(w, names, coords=x)
    order = similarity_order(x, w.argmax(axis=1))
    assert list(fig.data[0].y) == [names[i] for i in order]
    np.testing.assert_allclose(np.asarray(fig.data[0].z), w[order], rtol=1e-6)
    with pytest.raises(Exception, match="coords must be"):
        membership_heatmap(w, names, coords=x[:5])


# -- gains against every baseline -----------------------------------------------------------------
def fake_metrics(models: dict[str, dict[str, float]]) -> dict:
    tasks = list(next(iter(models.values())))
    return {"task_names": tasks, "grouping": "g",
            "models": {m: {"per_task": {t: {"balanced_accuracy": v, "f1": v / 2} for t, v in per.items()},
                           "mean": {"balanced_accuracy": float(np.mean(list(per.values())))}}
                       for m, per in models.items()}}


def test_gain_bars_one_row_per_baseline_in_one_task_order() -> None:
    rng = np.random.default_rng(5)
    tasks = [f"t{i}" for i in range(6)]
    vals = {m: dict(zip(tasks, rng.random(6).round(4))) for m in ("grouped", "grouped_argmax", "mtl", "random", "stl")}
    metrics = fake_metrics(vals)
    fig = gain_bars(metrics, model="grouped_argmax")
    assert len(fig.data) == 3
    x0 = list(fig.data[0].x)
    assert x0 == sorted(tasks, key=lambda t: vals["grouped_argmax"][t] - vals["mtl"][t], reverse=True)
    for trace, b in zip(fig.data, ("mtl", "random", "stl")):
        assert list(trace.x) == x0
        np.testing.assert_allclose(trace.y, [vals["grouped_argmax"][t] - vals[b][t] for t in x0])
        gains = [vals["grouped_argmax"][t] - vals[b][t] for t in tasks]
        title = next(a.text for a in fig.layout.annotations if a.text.startswith(f"grouped_argmax - {b}:"))
        assert f"mean {np.mean(gains):+.4f}" in title
        assert f"{sum(g > 0 for g in gains)} tasks gain, {sum(g < 0 for g in gains)} lose" in title
    only_stl = fake_metrics({m: vals[m] for m in ("grouped", "stl")})
    assert [t.name for t in gain_bars(only_stl).data] == ["vs stl"]
    assert len(gain_bars(fake_metrics({"grouped": vals["grouped"]})).data) == 0


# -- the grouped-training progress line ---------------------------------------------------------
@pytest.mark.parametrize("seconds, text", [(0, "0 s"), (44.6, "45 s"), (60, "1 min 00 s"), (185, "3 min 05 s"),
                                           (7620, "2 h 07 min"), (math.nan, "?"), (math.inf, "?"), (-1, "?")])
def test_duration_text(seconds: float, text: str) -> None:
    assert duration_text(seconds) == text


def snapshot(p: Progress | None) -> JobSnapshot:
    return JobSnapshot("/r", "groups", "running", p, (), None, 0.0, None)


def test_progress_text_names_stage_epoch_loss_and_time_left() -> None:
    step = Progress("step", 3, 5, 70, 150, loss=0.41234, eta_s=80.2, message="random (stage 2/3)")
    assert progress_text(snapshot(step)) == "random (stage 2/3), epoch 3/5, loss 0.4123, about 1 min 20 s left"
    done = Progress("epoch", 3, 5, 75, 150, loss=0.4, eta_s=float("nan"), message="random (stage 2/3)")
    assert progress_text(snapshot(done)) == "random (stage 2/3), epoch 3/5 done, loss 0.4000"
    assert progress_text(snapshot(None)) == "starting"
    start = Progress("start", 0, 5, 0, 150, message="training grouped, mtl for grouping g")
    assert progress_text(snapshot(start)) == "starting"
