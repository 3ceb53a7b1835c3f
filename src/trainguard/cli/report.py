"""``trainguard report RUN -o FILE.html``: one self-contained HTML file (inline SVG plots, no external
resources) telling a run's story - budget over time, the checkpoint timeline by state with fenced attempts,
decisions per checkpoint (a HOLD-only collapse stands out), reward and expectancy, and the event log."""

from __future__ import annotations

import argparse
import html
import io
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

from trainguard._os.optional import require
from trainguard.cli._common import ArgumentParser, add_location_args, out, registry_url
from trainguard.config.units import format_duration
from trainguard.errors import InvalidArgument
from trainguard.names import validate_name
from trainguard.registry import CheckpointRecord, CheckpointState, EventKind, EventRecord, Registry, RunRecord

_STATE_COLOURS = {
    CheckpointState.COMMITTED: "#4c78a8",
    CheckpointState.QUARANTINED: "#f58518",
    CheckpointState.EVICTED: "#bab0ac",
}
_ACTION_COLOURS = ["#b279a2", "#eeca3b", "#72b7b2", "#ff9da6", "#9d755d"]
# Trading actions get fixed colours, so a HOLD-only collapse is the same grey block in every report.
_NAMED_COLOURS = {"HOLD": "#9d9d9d", "BUY": "#54a24b", "SELL": "#e45756", "CLOSE": "#4c78a8"}
_NOISY = {EventKind.LEASE_RENEWED}


def _plt() -> Any:
    require("matplotlib", "trainguard report")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _svg(figure: Any) -> str:
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", bbox_inches="tight")
    _plt().close(figure)
    text = buffer.getvalue()
    return text[text.index("<svg") :]


def _when(ts: float) -> datetime:
    return datetime.fromtimestamp(ts)


def _budget_figure(run: RunRecord, events: list[EventRecord]) -> str:
    plt = _plt()
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 3.2))
    points = [(e.at, e.detail.get("episode")) for e in events if e.kind == EventKind.CHECKPOINT_COMMITTED]
    points += [
        (e.at, (e.detail.get("spent") or {}).get("episodes"))
        for e in events
        if e.kind == EventKind.GUARD_STOPPED
    ]
    points = sorted((t, v) for t, v in points if isinstance(v, int | float))
    if points:
        left.plot([_when(t) for t, _ in points], [v for _, v in points], marker=".", color="#4c78a8")
    if run.limits.get("max_episodes") is not None:
        left.axhline(run.limits["max_episodes"], color="#e45756", linestyle="--", label="budget")
        left.legend(loc="lower right")
    left.set_title(f"episodes: {run.episodes_spent} spent")
    runtime: list[tuple[float, float]] = []
    total, started = 0.0, None
    for event in events:
        if event.kind == EventKind.GUARD_STARTED:
            started = event.at
        elif event.kind == EventKind.GUARD_STOPPED and started is not None:
            runtime += [(started, total / 60), (event.at, (total + event.at - started) / 60)]
            total += event.at - started
            started = None
    if runtime:
        right.plot([_when(t) for t, _ in runtime], [v for _, v in runtime], color="#54a24b")
    if run.limits.get("max_runtime") is not None:
        right.axhline(run.limits["max_runtime"] / 60, color="#e45756", linestyle="--", label="budget")
        right.legend(loc="lower right")
    right.set_title(f"runtime: {format_duration(run.runtime_spent)} spent (minutes)")
    for axis in (left, right):
        axis.tick_params(axis="x", labelrotation=30, labelsize=7)
    return _svg(figure)


def _timeline_figure(
    checkpoints: list[CheckpointRecord], live: str | None, refused: list[EventRecord]
) -> str:
    plt = _plt()
    figure, axis = plt.subplots(figsize=(11, 3.4))
    for state, colour in _STATE_COLOURS.items():
        chosen = [c for c in checkpoints if c.state is state]
        if chosen:
            axis.scatter(
                [_when(c.created_at) for c in chosen],
                [c.episode for c in chosen],
                color=colour,
                s=28,
                label=state.value,
                zorder=3,
            )
    pinned = [c for c in checkpoints if c.pinned]
    if pinned:
        axis.scatter(
            [_when(c.created_at) for c in pinned],
            [c.episode for c in pinned],
            marker="*",
            s=160,
            color="#54a24b",
            label="pinned",
            zorder=4,
        )
    current = [c for c in checkpoints if c.name == live]
    if current:
        axis.scatter(
            [_when(c.created_at) for c in current],
            [c.episode for c in current],
            s=260,
            facecolors="none",
            edgecolors="#eeca3b",
            linewidths=2.5,
            label="live",
            zorder=5,
        )
    fenced = [(e.at, e.detail.get("episode")) for e in refused if isinstance(e.detail.get("episode"), int)]
    if fenced:
        axis.scatter(
            [_when(t) for t, _ in fenced],
            [v for _, v in fenced],
            marker="x",
            color="#e45756",
            s=30,
            label=f"refused commits ({len(fenced)})",
            zorder=2,
        )
    axis.set_ylabel("episode")
    axis.set_title("checkpoints by state")
    if axis.get_legend_handles_labels()[0]:  # a run without checkpoints has nothing to label
        axis.legend(loc="upper left", fontsize=8, ncol=3)
    axis.tick_params(axis="x", labelrotation=30, labelsize=7)
    return _svg(figure)


def _decisions_figure(checkpoints: list[CheckpointRecord]) -> str | None:
    shown = [c for c in checkpoints if isinstance(c.metrics.get("actions"), dict)][-30:]
    if not shown:
        return None
    plt = _plt()
    actions = sorted({a for c in shown for a in c.metrics["actions"]})
    figure, axis = plt.subplots(figsize=(11, 0.32 * len(shown) + 1.2))
    left = [0.0] * len(shown)
    labels = [f"{c.name} ({c.state})" for c in shown]
    for index, action in enumerate(actions):
        shares = []
        for c in shown:
            counts = c.metrics["actions"]
            total = sum(counts.values()) or 1
            shares.append(counts.get(action, 0) / total)
        axis.barh(
            labels,
            shares,
            left=left,
            color=_NAMED_COLOURS.get(action, _ACTION_COLOURS[index % len(_ACTION_COLOURS)]),
            label=action,
        )
        left = [a + b for a, b in zip(left, shares, strict=True)]
    axis.axvline(0.95, color="#e45756", linestyle=":", linewidth=1)
    axis.set_xlim(0, 1)
    axis.set_title("decisions per checkpoint (share of actions; dotted: a 95 % share is a collapse)")
    axis.legend(loc="lower right", fontsize=8, ncol=len(actions))
    axis.tick_params(axis="y", labelsize=7)
    return _svg(figure)


def _metrics_figure(checkpoints: list[CheckpointRecord]) -> str | None:
    names = [m for m in ("reward", "expectancy", "total_pips") if any(m in c.metrics for c in checkpoints)]
    if not names:
        return None
    plt = _plt()
    figure, axis = plt.subplots(figsize=(11, 3))
    for name in names:
        points = [
            (c.episode, c.metrics[name]) for c in checkpoints if isinstance(c.metrics.get(name), int | float)
        ]
        axis.plot([e for e, _ in points], [v for _, v in points], marker="o", label=name)
    axis.axhline(0, color="#999", linewidth=0.8)
    axis.set_xlabel("episode")
    axis.set_title("recorded metrics per checkpoint")
    axis.legend(fontsize=8)
    return _svg(figure)


def _event_rows(events: list[EventRecord], limit: int = 400) -> str:
    rows = []
    for event in [e for e in events if e.kind not in _NOISY][-limit:]:
        detail = html.escape(str(event.reason or "")[:200])
        rows.append(
            f"<tr class='{html.escape(event.kind)}'><td>{_when(event.at):%Y-%m-%d %H:%M:%S}</td>"
            f"<td>{html.escape(event.kind)}</td><td>{event.token if event.token is not None else ''}</td>"
            f"<td>{html.escape(event.checkpoint or '')}</td><td>{detail}</td>"
            f"<td>{event.actor_pid}</td></tr>"
        )
    return "\n".join(rows)


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1150px; color: #222; }
h1 { margin-bottom: 0.2em; } .sub { color: #666; margin-top: 0; }
.cards { display: flex; gap: 1em; flex-wrap: wrap; margin: 1em 0; }
.card { border: 1px solid #ddd; border-radius: 6px; padding: 0.6em 1em; min-width: 10em; }
.card b { display: block; font-size: 1.4em; }
.bad b { color: #c0392b; } svg { max-width: 100%; height: auto; }
table { border-collapse: collapse; font-size: 0.85em; width: 100%; }
td, th { border-bottom: 1px solid #eee; padding: 2px 6px; text-align: left; vertical-align: top; }
tr.commit_refused, tr.watchdog_stopped, tr.lease_revoked { background: #fdecea; }
tr.live_moved, tr.recovered { background: #eef7ee; }
"""


def build_report(registry: Registry, run: str) -> str:
    """The report page of ``run``: self-contained HTML."""
    info = registry.run(run)
    checkpoints = registry.checkpoints(run, states=None)
    events = registry.events(run)
    live = registry.live_pointer(run)
    refused = [e for e in events if e.kind == EventKind.COMMIT_REFUSED]
    kinds = Counter(e.kind for e in events)
    states = Counter(c.state for c in checkpoints)
    kills = kinds.get(EventKind.WATCHDOG_STOPPED, 0)
    cards = [
        ("episodes", f"{info.episodes_spent} / {info.limits.get('max_episodes', '-')}", False),
        ("runtime", format_duration(info.runtime_spent), False),
        ("checkpoints", ", ".join(f"{n} {s}" for s, n in sorted(states.items())) or "none", False),
        ("live", live or "none", live is None),
        ("refused commits", str(len(refused)), bool(refused)),
        ("watchdog stops", str(kills), bool(kills)),
    ]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>trainguard report: {html.escape(run)}</title><style>{_CSS}</style></head><body>",
        f"<h1>trainguard report: {html.escape(run)}</h1>",
        f"<p class='sub'>store {html.escape(info.store or '-')} &middot; "
        f"generated {datetime.now():%Y-%m-%d %H:%M} &middot; {len(events)} events</p>",
        "<div class='cards'>",
        *(
            f"<div class='card{' bad' if bad else ''}'>{label}<b>{html.escape(value)}</b></div>"
            for label, value, bad in cards
        ),
        "</div>",
        "<h2>Budget over time</h2>",
        _budget_figure(info, events),
        "<h2>Checkpoint timeline</h2>",
        _timeline_figure(checkpoints, live, refused),
    ]
    decisions = _decisions_figure(checkpoints)
    if decisions:
        parts += ["<h2>Decisions per checkpoint</h2>", decisions]
    metrics = _metrics_figure(checkpoints)
    if metrics:
        parts += ["<h2>Reward and expectancy</h2>", metrics]
    parts += [
        "<h2>Event log</h2>",
        "<p class='sub'>" + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())) + "</p>",
        "<table><tr><th>time</th><th>event</th><th>token</th><th>checkpoint</th><th>reason</th><th>pid</th></tr>",
        _event_rows(events),
        "</table></body></html>",
    ]
    return "\n".join(parts)


def register(commands: argparse._SubParsersAction[ArgumentParser]) -> None:
    report = commands.add_parser("report", help="a self-contained HTML report with plots of a run")
    add_location_args(report)
    report.add_argument("-o", "--output", required=True, metavar="FILE.html")
    report.set_defaults(handler=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    name = validate_name(args.run, "run")
    with Registry.open(registry_url(args), mode="read") as registry:
        page = build_report(registry, name)
    output = Path(args.output)
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(page)
    except OSError as error:  # /dev/full, a read-only directory, a path through a file
        why = error.strerror or str(error)
        raise InvalidArgument("--output", args.output, f"cannot be written: {why}") from None
    out().print(f"report: {output.resolve()} ({len(page) // 1024} kB, self-contained)")
    return 0


__all__ = ["build_report", "register"]
