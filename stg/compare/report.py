"""The comparison's statistics and its self-contained report (report.json, report.html, report.md).

Per candidate c, compare seed s and task t: ``BA[c, s, t]`` = test balanced accuracy;
``gain[c, s, t] = BA[c, s, t] - BA[mtl, s, t]`` (the same seed's mtl model). Reported:

- mean balanced accuracy: per seed the mean over tasks, then the mean over seeds with a 95%
  t-interval across seeds: ``mean +- t_{0.975, S-1} * sd / sqrt(S)`` (sd with ddof 1; none for S = 1);
- mean gain over mtl (the same interval on the per-seed mean gains) and, per task, the gain's mean
  and interval across seeds;
- ``losers``: tasks whose mean gain is < 0; ``significant_losers``: whose interval lies below 0;
- agreement: the adjusted Rand index between every pair of candidates' hard partitions, and each
  candidate's ARI with each reference grouping (over the tasks the reference lists);
- cost: seconds to produce the grouping (``stg.compare.plan``).

Figures (Plotly; the HTML embeds plotly.js once, so the file opens offline): gain per task per
method with intervals, the agreement matrix, and cost against gain.
"""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from stg.runs.rundir import atomic_write_bytes, atomic_write_json

KEY = "balanced_accuracy"


def t_interval(values: Sequence[float], confidence: float = 0.95) -> dict[str, Any]:
    """Mean and two-sided t-interval across seeds: {mean, lo, hi, n} (lo, hi None when n < 2)."""
    from scipy.stats import t as student_t

    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64)
    n = len(v)
    if n == 0:
        return {"mean": None, "lo": None, "hi": None, "n": 0}
    mean = float(v.mean())
    if n < 2:
        return {"mean": round(mean, 6), "lo": None, "hi": None, "n": 1}
    half = float(student_t.ppf(0.5 + confidence / 2, n - 1)) * float(v.std(ddof=1)) / math.sqrt(n)
    return {"mean": round(mean, 6), "lo": round(mean - half, 6), "hi": round(mean + half, 6), "n": n}


def adjusted_rand(a: np.ndarray, b: np.ndarray) -> float:
    from sklearn.metrics import adjusted_rand_score

    return float(adjusted_rand_score(a, b))


def _per_task(record: dict[str, Any], task_names: Sequence[str]) -> np.ndarray:
    return np.asarray([np.nan if record["per_task"][t][KEY] is None else record["per_task"][t][KEY]
                       for t in task_names], dtype=np.float64)


def build_report(plan, results: dict[str, dict[str, Any]], *, status: str) -> dict[str, Any]:
    """report.json's contents from the plan (``stg.compare.run.ComparePlan``) and the finished
    trainings ({key: models/<key>.json}); a candidate's statistics use the seeds finished so far."""
    from stg.compare.plan import candidates_for_seed, training_key
    from stg.compare.run import _budget
    from stg.grouping.reference import compare

    task_names = plan.task_names
    budget = _budget(plan.config)
    ba: dict[str, dict[int, np.ndarray]] = {c.name: {} for c in plan.candidates}  # name -> seed -> (T,)
    for s in plan.seeds:
        for c in candidates_for_seed(plan.candidates, s):
            rec = results.get(training_key(c.weights, c.combine, s, budget))
            if rec is not None:
                ba[c.name][s] = _per_task(rec, task_names)
    mtl = ba.get("mtl", {})
    rows: dict[str, Any] = {}
    for c in plan.candidates:
        seeds = sorted(ba[c.name])
        row: dict[str, Any] = {"seeds_done": len(seeds),
                               "mean_balanced_accuracy": t_interval([np.nanmean(ba[c.name][s]) for s in seeds])}
        paired = [s for s in seeds if s in mtl]
        if paired:
            gains = np.stack([ba[c.name][s] - mtl[s] for s in paired])  # (S, T)
            row["gain_vs_mtl"] = t_interval([float(np.nanmean(g)) for g in gains])
            per_task = {t: t_interval(gains[:, i].tolist()) for i, t in enumerate(task_names)}
            row["per_task_gain"] = per_task
            row["losers"] = [t for t in task_names if (per_task[t]["mean"] or 0.0) < 0]
            row["significant_losers"] = [t for t in task_names if per_task[t]["hi"] is not None and per_task[t]["hi"] < 0]
        row["per_task_balanced_accuracy"] = {t: t_interval([ba[c.name][s][i] for s in seeds])
                                             for i, t in enumerate(task_names)}
        rows[c.name] = row

    names = [c.name for c in plan.candidates]
    labels = {c.name: c.labels for c in plan.candidates}
    ari = [[round(adjusted_rand(labels[a], labels[b]), 6) for b in names] for a in names]
    references = plan.run.read().get("references") or {}
    vs_ref = {c.name: {ref: round(compare(c.labels, groups, task_names, missing="ignore")["ari"], 6)
                       for ref, groups in references.items()} for c in plan.candidates}
    return {
        "run": str(plan.run.path),
        "k": plan.k,
        "status": status,
        "seeds": plan.seeds,
        "budget": {**budget, "executor": plan.executor, "device": plan.device},
        "task_names": task_names,
        "trainings": {"done": sum(1 for t in plan.trainings if t.key in results), "total": len(plan.trainings)},
        "candidates": {c.name: c.to_meta(task_names) for c in plan.candidates},
        "results": rows,
        "agreement": {"names": names, "ari": ari},
        "vs_reference": vs_ref,
        "selection_seconds_all": round(plan.selection_seconds, 3),
        "training_seconds": round(sum(float(r.get("seconds", 0.0)) for r in results.values()), 3),
    }


# ------------------------------------------------------------------------------------------------
# Tables and figures
# ------------------------------------------------------------------------------------------------
def _fmt(ci: dict[str, Any] | None, digits: int = 4) -> str:
    if not ci or ci.get("mean") is None:
        return "n/a"
    if ci.get("lo") is None:
        return f"{ci['mean']:.{digits}f}"
    return f"{ci['mean']:.{digits}f} [{ci['lo']:.{digits}f}, {ci['hi']:.{digits}f}]"


def table_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per candidate: kind, k, seeds done, mean balanced accuracy and gain over mtl (95% CI
    across seeds), tasks that lose (significantly), ARI with each reference, cost in seconds."""
    out = []
    refs = sorted({r for v in report["vs_reference"].values() for r in v})
    for name, cand in report["candidates"].items():
        res = report["results"][name]
        row = {"method": name, "kind": cand["kind"], "k": cand["k"], "seeds": res["seeds_done"],
               "mean balanced accuracy [95% CI]": _fmt(res["mean_balanced_accuracy"]),
               "gain vs mtl [95% CI]": _fmt(res.get("gain_vs_mtl")),
               "tasks that lose (significantly)": (f"{len(res['losers'])} ({len(res['significant_losers'])})"
                                                   if "losers" in res else "n/a")}
        for ref in refs:
            row[f"ARI {ref}"] = f"{report['vs_reference'][name][ref]:.3f}"
        row["grouping cost s"] = f"{cand['total_cost_s']:.1f}"
        out.append(row)
    return out


def markdown_table(report: dict[str, Any]) -> str:
    rows = table_rows(report)
    if not rows:
        return ""
    head = list(rows[0])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(r[h]) for h in head) + " |" for r in rows]
    return "\n".join(lines)


def gain_figure(report: dict[str, Any]):
    """Per task, each method's gain in balanced accuracy over mtl (mean across seeds, 95% CI bars)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    tasks = report["task_names"]
    for name, res in report["results"].items():
        if name == "mtl" or "per_task_gain" not in res:
            continue
        g = [res["per_task_gain"][t] for t in tasks]
        mean = [x["mean"] for x in g]
        up = [None if x["hi"] is None else x["hi"] - x["mean"] for x in g]
        fig.add_bar(name=name, x=tasks, y=mean,
                    error_y=dict(type="data", array=up, visible=any(u is not None for u in up)))
    fig.update_layout(barmode="group", title="Gain in test balanced accuracy over mtl, per task (95% CI across seeds)",
                      yaxis_title="gain vs mtl", height=460, legend_title="method")
    return fig


def agreement_figure(report: dict[str, Any]):
    import plotly.graph_objects as go

    names, ari = report["agreement"]["names"], report["agreement"]["ari"]
    fig = go.Figure(go.Heatmap(z=ari, x=names, y=names, zmin=-0.2, zmax=1, colorscale="Viridis",
                               text=[[f"{v:.2f}" for v in row] for row in ari], texttemplate="%{text}"))
    fig.update_layout(title="Agreement between groupings (adjusted Rand index)", height=520,
                      yaxis_autorange="reversed")
    return fig


def cost_figure(report: dict[str, Any]):
    import plotly.graph_objects as go

    fig = go.Figure()
    for name, res in report["results"].items():
        g = res.get("gain_vs_mtl") or {}
        if g.get("mean") is None:
            continue
        cost = report["candidates"][name]["total_cost_s"]
        err = None if g["hi"] is None else [g["hi"] - g["mean"]]
        fig.add_scatter(x=[cost], y=[g["mean"]], mode="markers+text", text=[name], textposition="top center",
                        name=name, error_y=dict(type="data", array=err, visible=err is not None))
    fig.update_layout(title="Cost of producing the grouping vs mean gain over mtl", xaxis_title="seconds",
                      yaxis_title="mean gain in balanced accuracy", height=460, showlegend=False)
    return fig


FIGURES = (gain_figure, agreement_figure, cost_figure)


def html_report(report: dict[str, Any]) -> str:
    """A self-contained HTML page: the table, the three figures (plotly.js inline, once), the groupings."""
    parts = []
    for i, fig in enumerate(FIGURES):
        parts.append(fig(report).to_html(full_html=False, include_plotlyjs=(i == 0)))
    rows = table_rows(report)
    head = "".join(f"<th>{html.escape(h)}</th>" for h in (rows[0] if rows else []))
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in r.values()) + "</tr>" for r in rows)
    groupings = "".join(
        f"<li><b>{html.escape(n)}</b>: " + " | ".join(html.escape(", ".join(g)) for g in c["groups"]) + "</li>"
        for n, c in report["candidates"].items() if c["kind"] != "control" or n == "random")
    b = report["budget"]
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>stg compare k={report['k']}</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse}} td,th{{border:1px solid #ccc;padding:4px 8px}}</style>
</head><body><h1>Which grouping method? {html.escape(report['run'])}, k = {report['k']}</h1>
<p>Status: {html.escape(report['status'])}; {report['trainings']['done']} of {report['trainings']['total']} trainings;
seeds {html.escape(str(report['seeds']))}; the same budget for every method: {html.escape(str(b))}.
Balanced accuracy on the test split; gain = method - mtl of the same seed; 95% t-intervals across seeds.</p>
<table><tr>{head}</tr>{body}</table>
{''.join(parts)}
<h2>Groupings</h2><ul>{groupings}</ul></body></html>"""


def write_report(out: Path, report: dict[str, Any]) -> None:
    """report.json, report.html (self-contained) and report.md (the table) in ``out``."""
    atomic_write_json(out / "report.json", report)
    atomic_write_bytes(out / "report.html", html_report(report).encode())
    md = (f"# stg compare: {report['run']}, k = {report['k']} ({report['status']})\n\n"
          f"Seeds {report['seeds']}, budget {report['budget']}.\n\n{markdown_table(report)}\n")
    atomic_write_bytes(out / "report.md", md.encode())
