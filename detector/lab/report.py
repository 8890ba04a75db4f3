"""The backtest's HTML report: one self-contained file (plotly.js inlined once, no network).

Plotly makes the plots: they zoom and show values on hover, which a day of one-minute windows
needs, and its figures are built in Python without a browser or image exporter. Imported only
by ``detector backtest`` (plotly is the heaviest import of the lab tools).

Each plotted alert gets two panels over the same time axis: its signal in its cohort
(observed and expected per window), and the window's score with the band the threshold draws
(|score| below the threshold: nothing fires); the alert's span is shaded by severity, segment
by segment, and a line marks its start with the suspected change.

>>> _when(0.0), _when("2026-01-05T01:02:00.000Z")
('1970-01-01 00:00:00', '2026-01-05 01:02:00')
"""

from __future__ import annotations

import html
from datetime import UTC, datetime
from typing import Any

from detector.lab.backtest import (
    AlertSpan,
    ConfigRun,
    Diff,
    Series,
    SweepRow,
    by_severity,
    by_signal,
    sweep_table,
)
from detector.lab.evaluate import SEVERITIES, render

__all__ = ["SEVERITY_COLOURS", "render_html"]

SEVERITY_COLOURS = {"sev1": "#d62728", "sev2": "#ff7f0e", "sev3": "#bcbd22", "sev4": "#1f77b4"}

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin: .5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 2px 8px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
pre { background: #f6f6f6; padding: .5em; overflow-x: auto; }
.sev { color: #fff; padding: 0 6px; border-radius: 3px; }
"""


def _when(t: float | str) -> str:
    """A time as plotly reads it on a date axis (UTC, no zone suffix)."""
    if isinstance(t, str):
        return t.replace("T", " ").removesuffix("Z")[:19]
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _e(x: object) -> str:
    return html.escape(str(x))


def _sev(s: str) -> str:
    return f'<span class="sev" style="background:{SEVERITY_COLOURS[s]}">{s}</span>'


def _cohort(c: dict[str, str]) -> str:
    return _e(", ".join(f"{k}={v}" for k, v in c.items()))


def _table(head: list[str], rows: list[list[str]]) -> str:
    """An HTML table; ``rows`` cells are already escaped."""
    th = "".join(f"<th>{_e(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{th}</tr>{body}</table>"


def _counts(run: ConfigRun) -> str:
    rows = [[_e(sig), *(str(n[s]) for s in SEVERITIES)] for sig, n in by_signal(run.alerts).items()]
    total = by_severity(run.alerts)
    rows.append(["<b>all</b>", *(f"<b>{total[s]}</b>" for s in SEVERITIES)])
    return _table(["signal", *SEVERITIES], rows)


def _alert_rows(alerts: list[AlertSpan]) -> list[list[str]]:
    return [[_e(a.signal), _cohort(a.cohort), _sev(a.severity), _when(a.start), _when(a.end)]
            for a in alerts]


def _diff(d: Diff, base: str, new: str) -> str:
    head = ["signal", "cohort", "severity", "from", "to"]
    parts = [f"<h2>What {_e(new)} pages differently from {_e(base)}</h2>",
             f"<p>{len(d.new)} new, {len(d.lost)} lost, {len(d.changed)} at another severity, "
             f"{d.same} the same.</p>"]
    if d.new:
        parts += ["<h3>New</h3>", _table(head, _alert_rows(d.new))]
    if d.lost:
        parts += ["<h3>Lost</h3>", _table(head, _alert_rows(d.lost))]
    if d.changed:
        rows = [[_e(c.new.signal), _cohort(c.new.cohort),
                 f"{_sev(c.base.severity)} → {_sev(c.new.severity)}",
                 _when(c.new.start), _when(c.new.end)] for c in d.changed]
        parts += ["<h3>Changed severity</h3>", _table(head, rows)]
    return "\n".join(parts)


def _figure(a: AlertSpan, s: Series) -> Any:
    from plotly.subplots import make_subplots

    x = [_when(t) for t in s.window_start]
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.6, 0.4],
                        vertical_spacing=0.06)
    fig.add_scatter(x=x, y=s.observed, name="observed", mode="lines+markers",
                    marker={"size": 3}, line={"color": "#222"}, row=1, col=1)
    fig.add_scatter(x=x, y=s.expected, name="expected", mode="lines",
                    line={"color": "#2ca02c", "dash": "dash"}, row=1, col=1)
    fig.add_scatter(x=x, y=[-t for t in s.threshold], mode="lines", line={"width": 0},
                    showlegend=False, hoverinfo="skip", row=2, col=1)
    fig.add_scatter(x=x, y=s.threshold, name="threshold band", mode="lines", fill="tonexty",
                    fillcolor="rgba(120,120,120,0.18)", line={"width": 0}, row=2, col=1)
    fig.add_scatter(x=x, y=s.score, name="score", mode="lines",
                    line={"color": "#9467bd"}, row=2, col=1)
    for i, seg in enumerate(a.segments):
        end = a.segments[i + 1].start if i + 1 < len(a.segments) else a.end
        fig.add_vrect(x0=_when(seg.start), x1=_when(max(end, seg.start + 1)),
                      fillcolor=SEVERITY_COLOURS[seg.severity], opacity=0.25, line_width=0,
                      layer="below", row="all", col=1)
    change = a.suspected_change
    label = (f"suspected: {change.get('field')} {change.get('baseline')} → {change.get('now')}"
             if change else "start (no suspected change)")
    fig.add_shape(type="line", x0=_when(a.start), x1=_when(a.start), y0=0, y1=1,
                  xref="x", yref="paper", line={"color": "#000", "dash": "dot", "width": 1})
    fig.add_annotation(x=_when(a.start), y=1.0, xref="x", yref="paper", text=html.escape(label),
                       showarrow=False, xanchor="left", yanchor="bottom", font={"size": 11})
    fig.update_yaxes(title_text=a.signal, row=1, col=1)
    fig.update_yaxes(title_text="score", row=2, col=1)
    fig.update_layout(height=420, margin={"l": 60, "r": 20, "t": 40, "b": 30},
                      plot_bgcolor="#fff", legend={"orientation": "h", "y": -0.12})
    return fig


def _plots(run: ConfigRun, start: int) -> tuple[str, int]:
    parts = []
    n = start
    for a in sorted(run.alerts, key=lambda a: (SEVERITIES.index(a.severity), a.start)):
        s = run.series.get(a.id)
        if s is None:
            continue
        n += 1
        div = _figure(a, s).to_html(full_html=False, include_plotlyjs=False,
                                    div_id=f"plot-{n}", config={"displaylogo": False})
        parts.append(f"<h3>{_sev(a.severity)} {_e(a.signal)} — {_cohort(a.cohort)}, "
                     f"{_when(a.start)} to {_when(a.end)}</h3>"
                     f"<p>{_e(a.summary)}</p>{div}")
    unplotted = len(run.alerts) - (n - start)
    if unplotted:
        parts.append(f"<p>Not plotted: {unplotted} alert(s) (a hard rule has no window "
                     "series; more than --max-plots).</p>")
    return "\n".join(parts), n


def render_html(runs: list[ConfigRun], d: Diff | None, rows: list[SweepRow]) -> str:
    """The whole report as one HTML document."""
    from plotly.offline import get_plotlyjs

    body = ["<h1>Backtest</h1>"]
    for r in runs:
        body += [f"<h2>Would have paged: {_e(r.name)}</h2>", _counts(r)]
    if d is not None:
        body.append(_diff(d, runs[0].name, runs[1].name))
    if rows:
        body += ["<h2>Sweep</h2>", f"<pre>{_e(sweep_table(rows))}</pre>"]
    for r in runs:
        if r.evaluation is not None:
            body += [f"<h2>Against the labels: {_e(r.name)}</h2>",
                     f"<pre>{_e(render(r.evaluation))}</pre>"]
    n = 0
    for r in runs:
        plots, n = _plots(r, n)
        body += [f"<h2>Alerts: {_e(r.name)}</h2>", plots]
    return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Backtest</title>"
            f"<style>{_STYLE}</style><script>{get_plotlyjs()}</script></head>"
            f"<body>{''.join(body)}</body></html>\n")
