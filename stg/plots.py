"""Plotly figure builders for the dashboard and exports: pure functions returning ``go.Figure``.

Numerical helpers (binning, subsampling, ordering, gains) are small functions of their own, tested
without a browser. Data maps follow Dataset Cartography: x = variability, y = confidence.
The all-tasks grid is server-binned (a 2-D histogram per task, tens of KB); only the detail view
sends points, subsampled, as WebGL (``go.Scattergl``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from stg.errors import StgError
from stg.grouping.order import similarity_order

VARIABILITY_MAX = 0.5  # std of a probability in [0, 1] never exceeds 0.5
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf", "#393b79", "#e7ba52", "#ad494a", "#637939", "#7b4173", "#3182bd")
CORRECTNESS_COLORS = ("#d62728", "#ff7f0e", "#bcbd22", "#2ca02c")  # low .. high correctness


# -- numerical helpers ----------------------------------------------------------------------------
def datamap_histograms(confidence: np.ndarray, variability: np.ndarray, *, bins: int = 32) -> np.ndarray:
    """Per-task 2-D histograms of the data map.

    confidence, variability: (T, N) -> counts (T, bins, bins) int32, indexed [task, confidence bin,
    variability bin]; confidence spans [0, 1], variability [0, 0.5] (values outside are clipped
    into the edge bins, NaN dropped). Each task's counts sum to its number of finite samples.
    """
    conf = np.asarray(confidence, dtype=np.float32)
    var = np.asarray(variability, dtype=np.float32)
    if conf.shape != var.shape or conf.ndim != 2:
        raise StgError(f"confidence and variability must share a (T, N) shape, got {conf.shape} and {var.shape}")
    if bins < 1:
        raise StgError(f"bins must be at least 1, got {bins}")
    n_tasks = conf.shape[0]
    ok = np.isfinite(conf) & np.isfinite(var)
    all_ok = bool(ok.all())
    ci = _bin_index(conf if all_ok else np.where(ok, conf, 0), bins / 1.0, bins)
    vi = _bin_index(var if all_ok else np.where(ok, var, 0), bins / VARIABILITY_MAX, bins)
    flat = (np.arange(n_tasks, dtype=np.int32)[:, None] * bins + ci) * bins + vi
    counts = np.bincount(flat.ravel() if all_ok else flat[ok], minlength=n_tasks * bins * bins)
    return counts.reshape(n_tasks, bins, bins).astype(np.int32)


def _bin_index(x: np.ndarray, scale: float, bins: int) -> np.ndarray:
    """floor(x * scale) clipped to 0 .. bins-1, as int32 (same shape as x)."""
    out = np.multiply(x, np.float32(scale), dtype=np.float32)
    np.clip(out, 0, bins - 1, out=out)
    return out.astype(np.int32)


def bin_centers(bins: int, high: float) -> np.ndarray:
    """Centres of ``bins`` equal bins over [0, high]: (bins,) float64."""
    return (np.arange(bins) + 0.5) * (high / bins)


def subsample_indices(n: int, max_points: int, *, seed: int = 0) -> np.ndarray:
    """At most ``max_points`` sorted row indices out of n, uniformly without replacement (all if n fits)."""
    if n <= max_points:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=max_points, replace=False))


def correctness_bucket(correctness: np.ndarray, *, buckets: int = 4) -> np.ndarray:
    """Correctness in [0, 1] -> bucket index in 0 .. buckets-1: (N,) int."""
    c = np.nan_to_num(np.asarray(correctness, dtype=np.float64), nan=0.0)
    return np.clip((c * buckets).astype(np.int64), 0, buckets - 1)


def membership_order(membership: np.ndarray) -> np.ndarray:
    """Task order that shows clusters as blocks: by hard cluster, then by decreasing membership.

    membership: (T, k) -> (T,) int permutation.
    """
    w = np.asarray(membership, dtype=np.float64)
    labels = w.argmax(axis=1)
    return np.lexsort((-w[np.arange(len(w)), labels], labels))


def grid_shape(n: int, *, max_cols: int = 10) -> tuple[int, int]:
    """(rows, cols) for n small multiples, close to square, at most max_cols wide."""
    cols = max(1, min(max_cols, math.ceil(math.sqrt(n))))
    return max(1, math.ceil(n / cols)), cols


def gains_vs_baseline(metrics: Mapping[str, Any], *, metric: str = "balanced_accuracy",
                      model: str = "grouped", baseline: str = "mtl") -> dict[str, float]:
    """Per-task ``model - baseline`` of ``metric`` from a groups metrics.json: {task: gain}."""
    models = metrics.get("models", {})
    if model not in models or baseline not in models:
        return {}
    a, b = models[model]["per_task"], models[baseline]["per_task"]
    return {t: float(a[t][metric]) - float(b[t][metric]) for t in a if t in b and metric in a[t] and metric in b[t]}


def results_rows(metrics: Mapping[str, Any], *, metric: str = "balanced_accuracy") -> list[dict[str, Any]]:
    """One row per task: {"task", <model>: value, ...} for every model in metrics.json."""
    models = metrics.get("models", {})
    tasks: list[str] = []
    for m in models.values():
        tasks.extend(t for t in m.get("per_task", {}) if t not in tasks)
    rows = []
    for t in tasks:
        row: dict[str, Any] = {"task": t}
        for name, m in models.items():
            v = m.get("per_task", {}).get(t, {}).get(metric)
            row[name] = None if v is None else float(v)
        rows.append(row)
    return rows


# -- figures --------------------------------------------------------------------------------------
def _layout(fig: go.Figure, *, height: int, title: str | None = None) -> go.Figure:
    fig.update_layout(height=height, margin=dict(l=40, r=20, t=50 if title else 20, b=40), title=title,
                      template="plotly_white")
    return fig


def datamap_grid(
    confidence: np.ndarray,
    variability: np.ndarray,
    task_names: Sequence[str],
    *,
    bins: int = 24,
    max_cols: int = 10,
    title: str | None = None,
) -> go.Figure:
    """All tasks' data maps as small-multiple heatmaps of log counts in one figure.

    confidence, variability: (T, N). Axes: x = variability [0, 0.5], y = confidence [0, 1].
    """
    counts = datamap_histograms(confidence, variability, bins=bins)
    n_tasks = counts.shape[0]
    rows, cols = grid_shape(n_tasks, max_cols=max_cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=[str(t) for t in task_names],
                        horizontal_spacing=0.02, vertical_spacing=min(0.08, 0.3 / rows),
                        shared_xaxes=True, shared_yaxes=True)
    xs, ys = bin_centers(bins, VARIABILITY_MAX), bin_centers(bins, 1.0)
    z_all = np.log10(1.0 + counts.astype(np.float32))
    zmax = float(z_all.max()) if z_all.size else 1.0
    for t in range(n_tasks):
        z = np.where(counts[t] > 0, z_all[t], np.nan).astype(np.float32)
        fig.add_trace(
            go.Heatmap(z=z, x=xs.astype(np.float32), y=ys.astype(np.float32), zmin=0, zmax=max(zmax, 1e-6),
                       customdata=counts[t], colorscale="Viridis", showscale=(t == 0), name=str(task_names[t]),
                       colorbar=dict(title="log10(1+n)", thickness=10, len=0.6), hoverongaps=False,
                       hovertemplate=f"{task_names[t]}<br>%{{customdata:,}} samples<br>variability %{{x:.3f}}"
                                     f"<br>confidence %{{y:.3f}}<extra></extra>"),
            row=t // cols + 1, col=t % cols + 1,
        )
    fig.update_xaxes(range=[0, VARIABILITY_MAX], showticklabels=False)
    fig.update_yaxes(range=[0, 1], showticklabels=False)
    small = dict(font=dict(size=10), standoff=2)
    for col in range(1, cols + 1):  # the lowest map of each column carries the x axis's ticks and title
        last_row = (n_tasks - col) // cols + 1 if col <= n_tasks else 0
        if last_row:
            fig.update_xaxes(showticklabels=True, tickvals=[0, 0.2, 0.4], title=dict(text="variability", **small),
                             row=last_row, col=col)
        for row in range(last_row + 1, rows + 1):  # cells past the last task: no empty axes
            fig.update_xaxes(visible=False, row=row, col=col)
            fig.update_yaxes(visible=False, row=row, col=col)
    fig.update_yaxes(showticklabels=True, tickvals=[0, 0.5, 1], title=dict(text="confidence", **small), col=1)
    fig.update_annotations(font_size=10)
    return _layout(fig, height=max(260, 170 * rows + 60), title=title)


def datamap_scatter(
    confidence: np.ndarray,
    variability: np.ndarray,
    correctness: np.ndarray,
    *,
    task: str,
    max_points: int = 20_000,
    seed: int = 0,
    webgl: bool = True,
    height: int = 420,
) -> go.Figure:
    """One task's data map, one point per sample coloured by correctness bucket.

    confidence, variability, correctness: (N,). At most ``max_points`` points (uniform subsample),
    float32, as WebGL unless ``webgl`` is False.
    """
    conf, var, corr = (np.asarray(a, dtype=np.float32).ravel() for a in (confidence, variability, correctness))
    idx = subsample_indices(len(conf), max_points, seed=seed)
    bucket = correctness_bucket(corr[idx], buckets=len(CORRECTNESS_COLORS))
    trace = go.Scattergl if webgl else go.Scatter
    fig = go.Figure()
    n = len(CORRECTNESS_COLORS)
    for b in range(n):
        sel = idx[bucket == b]
        fig.add_trace(trace(x=var[sel], y=conf[sel], mode="markers", name=f"correct {b / n:.2f}-{(b + 1) / n:.2f}",
                            marker=dict(size=4, color=CORRECTNESS_COLORS[b], opacity=0.6),
                            hoverinfo="skip" if len(idx) > 10_000 else None))
    fig.update_xaxes(title="variability", range=[0, VARIABILITY_MAX])
    fig.update_yaxes(title="confidence", range=[0, 1])
    fig.update_layout(legend=dict(orientation="h", yanchor="top", y=-0.2, x=0, font=dict(size=10)))  # not over the map
    shown = f"{len(idx):,} of {len(conf):,} samples" if len(idx) < len(conf) else f"{len(conf):,} samples"
    return _layout(fig, height=height, title=f"{task} ({shown})")


def task_map(
    coords: np.ndarray,
    task_names: Sequence[str],
    groups: Sequence[Any],
    *,
    color_title: str = "cluster",
    highlight: Sequence[str] = (),
    title: str | None = None,
) -> go.Figure:
    """Tasks as points in 2-D, one trace per group (colour), task names on hover and as labels.

    coords: (T, 2); groups: (T,) a cluster index or reference group name per task;
    highlight: task names drawn larger with a black outline.
    """
    xy = np.asarray(coords, dtype=np.float64)
    names = [str(t) for t in task_names]
    keys = list(dict.fromkeys(str(g) for g in groups))
    fig = go.Figure()
    show_text = len(names) <= 40
    for i, key in enumerate(keys):
        sel = [j for j, g in enumerate(groups) if str(g) == key]
        big = [names[j] in highlight for j in sel]
        fig.add_trace(go.Scatter(
            x=xy[sel, 0], y=xy[sel, 1], mode="markers+text" if show_text else "markers",
            text=[names[j] for j in sel], textposition="top center", textfont=dict(size=10),
            name=f"{color_title} {key}" if color_title == "cluster" else key,
            marker=dict(size=[16 if b else 10 for b in big], color=PALETTE[i % len(PALETTE)],
                        line=dict(width=[2 if b else 0 for b in big], color="black")),
            hovertemplate="%{text}<extra>" + key + "</extra>",
        ))
    fig.update_xaxes(title="component 1", zeroline=False)
    fig.update_yaxes(title="component 2", zeroline=False)
    return _layout(fig, height=480, title=title)


def membership_heatmap(membership: np.ndarray, task_names: Sequence[str], *, coords: np.ndarray | None = None,
                       title: str | None = None) -> go.Figure:
    """Membership (T, k) as a heatmap, each cluster's tasks as a block.

    coords: (T, r) task coordinates; when given, tasks are ordered by similarity
    (``similarity_order``), otherwise by decreasing membership within each block.
    """
    w = np.asarray(membership, dtype=np.float64)
    order = membership_order(w) if coords is None else similarity_order(coords, w.argmax(axis=1))
    names = [str(task_names[i]) for i in order]
    fig = go.Figure(go.Heatmap(
        z=w[order].astype(np.float32), x=[f"cluster {c}" for c in range(w.shape[1])], y=names,
        zmin=0, zmax=1, colorscale="Blues", colorbar=dict(title="membership", thickness=12),
        hovertemplate="%{y}<br>%{x}: %{z:.3f}<extra></extra>",
        # the values in the cells while they stay legible (up to 40 tasks x 10 clusters)
        texttemplate="%{z:.2f}" if w.shape[0] <= 40 and w.shape[1] <= 10 else None,
    ))
    fig.update_yaxes(autorange="reversed", tickfont=dict(size=9 if len(names) > 30 else 11))
    return _layout(fig, height=min(1600, max(300, 16 * len(names) + 80)), title=title)


def contingency_heatmap(table: Any, *, title: str | None = None) -> go.Figure:
    """A reference-groups x clusters count table (pandas DataFrame from stg.grouping.reference.contingency)."""
    z = np.asarray(table.values, dtype=np.int32)
    rows = [str(r) for r in table.index]
    cols = [f"cluster {c}" for c in table.columns]
    fig = go.Figure(go.Heatmap(z=z, x=cols, y=rows, colorscale="Greens", text=z, texttemplate="%{text}",
                               colorbar=dict(title="tasks", thickness=12),
                               hovertemplate="%{y} / %{x}: %{z} tasks<extra></extra>"))
    fig.update_yaxes(autorange="reversed")
    return _layout(fig, height=max(260, 28 * len(rows) + 100), title=title)


def k_scan_figure(scan: Sequence[Mapping[str, float]], *, recommended: int | None = None) -> go.Figure:
    """Silhouette, partition coefficient and Xie-Beni against k (rows from stg.grouping.quality.scan_k)."""
    ks = [int(r["k"]) for r in scan]
    fig = make_subplots(rows=1, cols=3, subplot_titles=("silhouette (higher is better)",
                                                        "partition coefficient", "Xie-Beni (lower is better)"))
    for col, key in enumerate(("silhouette", "partition_coefficient", "xie_beni"), start=1):
        ys = [float(r[key]) if np.isfinite(r[key]) else None for r in scan]
        fig.add_trace(go.Scatter(x=ks, y=ys, mode="lines+markers", name=key, showlegend=False), row=1, col=col)
        if recommended is not None:
            fig.add_vline(x=recommended, line_dash="dot", line_color="gray", row=1, col=col)
    fig.update_xaxes(title="k", dtick=1)
    return _layout(fig, height=300)


def gain_bars(metrics: Mapping[str, Any], *, metric: str = "balanced_accuracy", model: str = "grouped",
              baselines: Sequence[str] = ("mtl", "random", "stl")) -> go.Figure:
    """Per-task gain of ``model`` over each baseline in the results: one row of bars per baseline
    (green up, red down), tasks in one order throughout (by gain over the first baseline), each
    row titled with its mean gain and how many tasks gain or lose."""
    rows = [(b, gains_vs_baseline(metrics, metric=metric, model=model, baseline=b)) for b in baselines]
    rows = [(b, g) for b, g in rows if g]
    if not rows:
        return _layout(go.Figure(), height=200, title=f"no {model} results next to {', '.join(baselines)}")
    first = rows[0][1]
    tasks = sorted(first, key=lambda t: first[t], reverse=True)
    titles = []
    for b, g in rows:
        vals = [g[t] for t in tasks if t in g]
        titles.append(f"{model} - {b}: mean {np.mean(vals):+.4f}; {sum(v > 0 for v in vals)} tasks gain, "
                      f"{sum(v < 0 for v in vals)} lose")
    fig = make_subplots(rows=len(rows), cols=1, shared_xaxes=True, subplot_titles=titles,
                        vertical_spacing=min(0.12, 0.5 / len(rows)))
    for i, (b, g) in enumerate(rows, start=1):
        ys = [g.get(t) for t in tasks]
        fig.add_trace(go.Bar(x=tasks, y=ys, name=f"vs {b}", showlegend=False,
                             marker_color=["#2ca02c" if (v or 0) >= 0 else "#d62728" for v in ys],
                             hovertemplate=f"%{{x}}: %{{y:+.4f}} vs {b}<extra></extra>"), row=i, col=1)
        fig.add_hline(y=0, line_color="black", line_width=1, row=i, col=1)
        fig.update_yaxes(title=dict(text=f"gain vs {b}", font=dict(size=11)), row=i, col=1)
    fig.update_annotations(font_size=12)
    return _layout(fig, height=120 + 220 * len(rows), title=f"{metric}: {model} against each baseline")


def training_curves(history: Sequence[Mapping[str, Any]], *, title: str | None = None) -> go.Figure:
    """Train loss and validation balanced accuracy per epoch (run.json history)."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("train loss", "val balanced accuracy"))
    epochs = [int(h["epoch"]) for h in history]
    fig.add_trace(go.Scatter(x=epochs, y=[h.get("loss") for h in history], mode="lines+markers",
                             name="loss", showlegend=False), row=1, col=1)
    fig.add_trace(go.Scatter(x=epochs, y=[h.get("val_balanced_accuracy") for h in history], mode="lines+markers",
                             name="val balanced accuracy", showlegend=False), row=1, col=2)
    fig.update_xaxes(title="epoch", dtick=1)
    return _layout(fig, height=280, title=title)


def affinity_heatmap(affinity: np.ndarray, task_names: Sequence[str], *, labels: Sequence[int] | None = None,
                     title: str | None = None) -> go.Figure:
    """A (T, T) source x target affinity as a heatmap (rows: source task i, columns: target task j,
    cell: Z[i -> j]), tasks ordered by ``labels`` (T,) so each group reads as a block. The colour
    scale is symmetric around 0: blue helps, red hurts. The diagonal (a task onto itself) is blank."""
    a = np.asarray(affinity, dtype=np.float64).copy()
    if a.ndim != 2 or a.shape[0] != a.shape[1] or a.shape[0] != len(task_names):
        raise StgError(f"affinity must be ({len(task_names)}, {len(task_names)}), got {a.shape}")
    np.fill_diagonal(a, np.nan)
    order = np.arange(len(a)) if labels is None else np.argsort(np.asarray(labels), kind="stable")
    a = a[np.ix_(order, order)]
    names = [str(task_names[i]) for i in order]
    finite = np.abs(a[np.isfinite(a)])
    scale = float(np.quantile(finite, 0.98)) if finite.size else 1.0
    fig = go.Figure(go.Heatmap(
        z=a.astype(np.float32), x=names, y=names, zmid=0, zmin=-scale or -1, zmax=scale or 1, colorscale="RdBu",
        colorbar=dict(title="affinity", thickness=12),
        hovertemplate="source %{y}<br>target %{x}: %{z:.4g}<extra></extra>",
    ))
    small = len(names) > 30
    fig.update_yaxes(autorange="reversed", title="source", tickfont=dict(size=8 if small else 11))
    fig.update_xaxes(title="target", tickfont=dict(size=8 if small else 11))
    side = min(1400, max(360, 14 * len(names) + 140))
    return _layout(fig, height=side, title=title)


# -- the data-map explorer (stg_app/views/9_explore.py) -------------------------------------------
REGION_COLORS = {"easy": "#2ca02c", "ambiguous": "#1f77b4", "hard": "#d62728", "other": "#9a9a9a"}


def explorer_scatter(
    confidence: np.ndarray,
    variability: np.ndarray,
    correctness: np.ndarray,
    codes: np.ndarray,
    *,
    rows: np.ndarray,
    dataset_index: np.ndarray,
    class_text: Sequence[str],
    labels: np.ndarray,
    thresholds: tuple[float, float, float] | None,
    highlight: np.ndarray | None = None,
    title: str | None = None,
    webgl: bool = True,
    height: int = 520,
) -> go.Figure:
    """One task's data map for the explorer: the samples ``rows`` (a subsample), one trace per
    cartography region, the region boundaries drawn, and the samples of ``highlight`` (rows of a
    selection carried over from another task) outlined in black.

    confidence, variability, correctness, codes (from ``stg.datamap.regions.classify``), labels:
    (N,) of one task; dataset_index: (N,); class_text: (N,) class name per sample. Each point's
    customdata is [row, dataset index, label, correctness], so a Plotly selection event names the
    samples (``stg.datamap.regions.selected_rows``). thresholds: (c_high, c_low, v) of this task.
    """
    from stg.datamap.regions import REGION_LABELS, REGIONS

    conf, var, corr = (np.asarray(a, dtype=np.float32).ravel() for a in (confidence, variability, correctness))
    lab = np.asarray(labels, dtype=np.float32).ravel()
    rows = np.asarray(rows, dtype=np.int64)
    trace = go.Scattergl if webgl else go.Scatter
    fig = go.Figure()
    hover = ("sample %{customdata[1]}: %{text}<br>label %{customdata[2]}, correctness %{customdata[3]:.2f}"
             "<br>confidence %{y:.3f}, variability %{x:.3f}<extra>%{fullData.name}</extra>")

    def points(sel: np.ndarray) -> dict[str, Any]:
        custom = np.column_stack([sel, dataset_index[sel], lab[sel], corr[sel]]).astype(np.float64)
        return dict(x=var[sel], y=conf[sel], customdata=custom, text=[class_text[i] for i in sel.tolist()])

    for code, region in enumerate(REGIONS):
        sel = rows[codes[rows] == code]
        fig.add_trace(trace(mode="markers", name=f"{REGION_LABELS[region]} ({len(sel):,})",
                            marker=dict(size=5, color=REGION_COLORS[region], opacity=0.65),
                            hovertemplate=hover, **points(sel)))
    if highlight is not None and len(highlight):
        hl = np.asarray(highlight, dtype=np.int64)
        hl = hl[np.isfinite(conf[hl]) & np.isfinite(var[hl])]
        fig.add_trace(trace(mode="markers", name=f"carried selection ({len(hl):,})",
                            marker=dict(size=9, color="rgba(0,0,0,0)", line=dict(width=1.5, color="black")),
                            hovertemplate=hover, **points(hl)))
    if thresholds is not None and all(np.isfinite(t) for t in thresholds):
        c_high, c_low, v = (float(t) for t in thresholds)
        line = dict(color="#444", width=1, dash="dash")
        fig.add_shape(type="line", x0=v, x1=v, y0=0, y1=1, line=line)
        fig.add_shape(type="line", x0=0, x1=v, y0=c_high, y1=c_high, line=line)
        fig.add_shape(type="line", x0=0, x1=v, y0=c_low, y1=c_low, line=line)
        for x, y, text in ((v / 2, min(1.0, c_high + 0.04), "easy-to-learn"),
                           (v / 2, max(0.0, c_low - 0.04), "hard-to-learn"),
                           (min(VARIABILITY_MAX, v + (VARIABILITY_MAX - v) / 2), 0.5, "ambiguous")):
            fig.add_annotation(x=x, y=y, text=text, showarrow=False, font=dict(size=11, color="#333"),
                               bgcolor="rgba(255,255,255,0.6)")
    fig.update_xaxes(title="variability", range=[0, VARIABILITY_MAX])
    fig.update_yaxes(title="confidence", range=[0, 1.0])
    # no dragmode / clickmode here: Streamlit's selection sets them (a click selects a point while
    # the drag mode is pan; the toolbar's lasso and box select many)
    fig.update_layout(legend=dict(orientation="h", y=-0.18))
    return _layout(fig, height=height, title=title)


def curves_overlay(histories: Mapping[str, Sequence[Mapping[str, Any]]], *, title: str | None = None) -> go.Figure:
    """Train loss and validation balanced accuracy per epoch of several runs, one colour per run.

    histories: {run name: run.json history}."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("train loss", "val balanced accuracy"))
    for i, (name, history) in enumerate(histories.items()):
        color = PALETTE[i % len(PALETTE)]
        epochs = [int(h["epoch"]) for h in history]
        losses = [h.get("loss") for h in history]
        losses = [float(np.mean(v)) if isinstance(v, (list, tuple)) else v for v in losses]
        fig.add_trace(go.Scatter(x=epochs, y=losses, mode="lines+markers", name=str(name), legendgroup=str(name),
                                 line=dict(color=color)), row=1, col=1)
        fig.add_trace(go.Scatter(x=epochs, y=[h.get("val_balanced_accuracy") for h in history],
                                 mode="lines+markers", name=str(name), legendgroup=str(name), showlegend=False,
                                 line=dict(color=color)), row=1, col=2)
    fig.update_xaxes(title="epoch", dtick=1)
    fig.update_layout(legend=dict(orientation="h", yanchor="top", y=-0.3, x=0))  # under the curves: they keep the width
    return _layout(fig, height=360, title=title)
