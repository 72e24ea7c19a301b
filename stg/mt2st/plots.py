"""The weight curves of MT2ST schedules as a Plotly figure (for the dashboard, before launching)."""

from __future__ import annotations

from typing import Sequence

import plotly.graph_objects as go

from stg.mt2st.schedules import AuxSchedule

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b")


def weight_curves(schedules: Sequence[AuxSchedule], *, epochs: int, steps_per_epoch: int = 1,
                  title: str | None = None) -> go.Figure:
    """One line per schedule: the auxiliary tasks' factor a(t) at every epoch (every step for a
    per-step schedule), x = epochs trained (0 = the first step), plus the primary tasks' constant
    weight 1 as a dotted line. The factor is drawn as the loop uses it: 0 below eps."""
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[0, epochs], y=[1, 1], mode="lines", name="primary tasks",
                             line={"color": "#444", "dash": "dot"}))
    for i, s in enumerate(schedules):
        t, a = s.curve(epochs, steps_per_epoch)
        # a step function: the weight holds from one write to the next
        fig.add_trace(go.Scatter(x=list(t) + [epochs], y=list(a) + [a[-1] if len(a) else 0.0], mode="lines",
                                 line={"shape": "hv", "color": PALETTE[i % len(PALETTE)]},
                                 name=f"auxiliary: {s.slug()}", hovertemplate="t=%{x:.2f} epochs<br>a=%{y:.4g}"))
    fig.update_layout(height=320, margin={"l": 40, "r": 10, "t": 40 if title else 10, "b": 40}, title=title,
                      xaxis_title="epochs trained", yaxis_title="loss weight",
                      legend={"orientation": "h", "y": -0.25})
    top = max([1.0] + [float(s.curve(epochs, steps_per_epoch)[1].max(initial=0)) for s in schedules])
    fig.update_yaxes(range=[-0.03, top * 1.05])
    return fig
