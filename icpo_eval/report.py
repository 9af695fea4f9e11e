"""The HTML report: leaderboard, plots and browsable transcripts in one self-contained file.

Why one file: a report is mailed, attached to a pull request or opened from a CI artifact, often
offline. So nothing is fetched: the CSS is inline, the plots are PNGs embedded as base64 data
URIs, and transcripts collapse with plain ``<details>`` elements (no JavaScript).

The table is :func:`icpo_eval.leaderboard.table` over :func:`icpo_eval.leaderboard.collect`, so
the report refuses exactly what the leaderboard refuses (runs of one model, family and mode with
different settings) and reads each run once. Every figure is computed by
:mod:`icpo_eval.metrics`; this module only groups conversations by model and draws. Plots are
drawn on :class:`matplotlib.figure.Figure` objects with the Agg canvas, never through ``pyplot``,
so no global backend or figure state is touched.
"""

from __future__ import annotations

import base64
import io
import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from icpo_eval import __version__
from icpo_eval.compare import category_shares, formatted, interval_table
from icpo_eval.errors import IcpoError
from icpo_eval.leaderboard import RATE_COLUMNS, collect, table
from icpo_eval.metrics import (
    degradations,
    non_answer_share_by_progress,
    performance,
    scored,
)
from icpo_eval.paths import PROMPTS_DIR
from icpo_eval.records import Conversation, mode_key

TEMPLATE = "report.html.j2"
DEFAULT_MAX_TRANSCRIPTS = 200
BUCKETS = 5  # conversation-progress buckets (ICPO paper, Fig. 1)

#: One colour per series; models cycle through it in sorted order.
PALETTE = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3")


@dataclass
class Plot:
    """One figure of the report: its element id, caption and PNG as base64."""

    id: str
    title: str
    caption: str
    png_base64: str
    no_data: bool = False


def _by_model(convs: Sequence[Conversation]) -> dict[str, list[Conversation]]:
    out: dict[str, list[Conversation]] = defaultdict(list)
    for c in convs:
        out[c.model].append(c)
    return dict(sorted(out.items()))


# ---------------------------------------------------------------------------------------------
# Plots


def _png(fig: Figure) -> str:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _figure(title: str, width: float = 7.0, height: float = 3.6) -> tuple[Figure, Any]:
    fig = Figure(figsize=(width, height))
    ax = fig.add_subplot()
    ax.set_title(title, fontsize=11)
    ax.spines[["top", "right"]].set_visible(False)
    return fig, ax


def _no_data(title: str) -> str:
    fig, ax = _figure(title, height=2.4)
    ax.text(0.5, 0.5, "no data", ha="center", va="center", fontsize=14, color="#777")
    ax.set_axis_off()
    return _png(fig)


def _color(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def _grouped_bars(
    ax: Any,
    groups: Sequence[str],
    series: dict[str, Sequence[float | None]],
    fmt: str = "{:.1f}",
    na_text: str = "n/a",
) -> None:
    """Bars of each series side by side within each group; a missing value is drawn as text."""
    n = max(len(series), 1)
    width = 0.8 / n
    for i, (name, values) in enumerate(series.items()):
        xs = [g + (i - (n - 1) / 2) * width for g in range(len(groups))]
        heights = [0.0 if v is None else v for v in values]
        bars = ax.bar(xs, heights, width=width * 0.95, label=name, color=_color(i))
        for x, v, bar in zip(xs, values, bars):
            if v is None:
                ax.text(x, 0, na_text, ha="center", va="bottom", fontsize=8, color="#777")
            else:
                ax.annotate(
                    fmt.format(v),
                    (x, bar.get_height()),
                    ha="center",
                    va="bottom",
                    fontsize=7,
                    xytext=(0, 1),
                    textcoords="offset points",
                )
    ax.set_xticks(range(len(groups)))
    rotate = len(groups) > 4 or max((len(g) for g in groups), default=0) > 18
    ax.set_xticklabels(groups, rotation=30 if rotate else 0, ha="right" if rotate else "center")
    if len(series) > 1:
        ax.legend(fontsize=8, frameon=False)


def plot_p_by_mode(by_model: dict[str, list[Conversation]], title: str) -> Figure | None:
    modes = sorted({c.mode for cs in by_model.values() for c in cs}, key=mode_key)
    series = {
        mode: [performance(c for c in cs if c.mode == mode)["P"] for cs in by_model.values()]
        for mode in modes
    }
    if not any(v is not None for vs in series.values() for v in vs):
        return None
    fig, ax = _figure(title)
    _grouped_bars(ax, list(by_model), series)
    ax.set_ylabel("P (0-100)")
    ax.set_ylim(0, 105)
    return fig


def plot_degradation(by_model: dict[str, list[Conversation]], title: str) -> Figure | None:
    if not by_model:
        return None
    per_model = [degradations(cs) for cs in by_model.values()]
    series = {key: [d[key] for d in per_model] for key in ("sharded/full", "concat/full")}
    fig, ax = _figure(title)
    _grouped_bars(ax, list(by_model), series, fmt="{:.2f}")
    ax.axhline(1.0, color="#999", linewidth=0.8, linestyle="--")
    top = max([v for vs in series.values() for v in vs if v is not None] + [1.0])
    ax.set_ylim(0, top * 1.15)
    ax.set_ylabel("ratio")
    return fig


def plot_progress(by_model: dict[str, list[Conversation]], title: str) -> Figure | None:
    labels = [f"{100 * i // BUCKETS}-{100 * (i + 1) // BUCKETS}%" for i in range(BUCKETS)]
    lines = {}
    for model, cs in by_model.items():
        # All of the model's conversations go in: the metric keeps only sharded ones, and a full
        # or concat conversation gives old records (no n_shards) their exact shard count.
        shares = non_answer_share_by_progress(cs, buckets=BUCKETS)
        if any(s is not None for s in shares):
            lines[model] = shares
    if not lines:
        return None
    fig, ax = _figure(title)
    for i, (model, shares) in enumerate(lines.items()):
        ys = [math.nan if s is None else s for s in shares]
        ax.plot(range(BUCKETS), ys, marker="o", label=model, color=_color(i))
    ax.set_xticks(range(BUCKETS))
    ax.set_xticklabels(labels)
    ax.set_xlabel("shards revealed before the turn")
    ax.set_ylabel("share of non-answer turns")
    ax.set_ylim(-0.03, 1.03)
    ax.legend(fontsize=8, frameon=False)
    return fig


def plot_first_answer(by_model: dict[str, list[Conversation]], title: str) -> Figure | None:
    counts: dict[str, Counter[str]] = {}
    for model, cs in by_model.items():
        firsts = [c.first_answer_turn for c in scored(c for c in cs if c.mode == "sharded")]
        if firsts:
            counts[model] = Counter("never" if f is None else str(f) for f in firsts)
    if not counts:
        return None
    turns = sorted({int(k) for cnt in counts.values() for k in cnt if k != "never"})
    bins = [str(t) for t in range(1, max(turns, default=0) + 1)] + ["never"]
    series = {model: [float(cnt.get(b, 0)) for b in bins] for model, cnt in counts.items()}
    fig, ax = _figure(title)
    n = len(series)
    width = 0.8 / n
    for i, (model, values) in enumerate(series.items()):
        xs = [b + (i - (n - 1) / 2) * width for b in range(len(bins))]
        ax.bar(xs, values, width=width * 0.95, label=model, color=_color(i))
    ax.set_xticks(range(len(bins)))
    ax.set_xticklabels(bins)
    ax.set_xlabel("assistant turn of the first answer attempt")
    ax.set_ylabel("conversations")
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize=8, frameon=False)
    return fig


def plot_spread(by_model: dict[str, list[Conversation]], title: str) -> Figure | None:
    groups, a90, u = [], [], []
    for model, cs in by_model.items():
        for mode in sorted({c.mode for c in cs}, key=mode_key):
            perf = performance(c for c in cs if c.mode == mode)
            if perf["A90"] is None:
                continue
            groups.append(f"{model} · {mode}")
            a90.append(perf["A90"])
            u.append(perf["U90_10"])
    if not groups:
        return None
    fig, ax = _figure(title, width=max(7.0, 0.9 * len(groups)))
    _grouped_bars(ax, groups, {"A90": a90, "U90-10": u})
    ax.set_ylabel("0-100")
    ax.set_ylim(0, 105)
    return fig


#: (element id, figure title, drawing function, caption), in page order.
_PLOTS: tuple[tuple[str, str, Any, str], ...] = (
    (
        "plot-p-by-mode",
        "P by mode",
        plot_p_by_mode,
        "Mean score (0-100) per model and mode, averaged over instructions; failed "
        "conversations left out.",
    ),
    (
        "plot-degradation",
        "Degradation against full (P ratio; 1 = no loss)",
        plot_degradation,
        "P(sharded) / P(full) and P(concat) / P(full) per model; n/a where a mode is missing "
        "or P(full) is 0.",
    ),
    (
        "plot-progress",
        "Non-answer share by conversation progress (sharded)",
        plot_progress,
        f"Share of assistant turns that do not commit to an answer, by the share of shards "
        f"revealed before the turn ({BUCKETS} buckets, sharded conversations; ICPO Fig. 1).",
    ),
    (
        "plot-first-answer",
        "First answer attempt (sharded)",
        plot_first_answer,
        "Distribution of the assistant turn of the first answer attempt in sharded "
        "conversations; 'never' counts conversations without any (ICPO Fig. 2).",
    ),
    (
        "plot-spread",
        "Aptitude (A90) and unreliability (U90-10)",
        plot_spread,
        "A90 (90th percentile over runs) and U90-10 (90th minus 10th percentile) per model "
        "and mode, averaged over instructions (Laban et al. 2025, §4.2).",
    ),
)


def make_plots(convs: Sequence[Conversation]) -> list[Plot]:
    """The report's figures, in page order; one that has nothing to show says "no data"."""
    by_model = _by_model(convs)
    plots = []
    for plot_id, title, draw, caption in _PLOTS:
        fig = draw(by_model, title)
        png = _no_data(title) if fig is None else _png(fig)
        plots.append(Plot(plot_id, title, caption, png, no_data=fig is None))
    return plots


# ---------------------------------------------------------------------------------------------
# Table and transcripts


def _cell(column: str, value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        if column in RATE_COLUMNS:
            return f"{value:.3f}"
        return f"{value:.2f}" if column != "runs" else f"{value:g}"
    return str(value)


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:g}"


def _transcript(c: Conversation) -> dict[str, Any]:
    turns = [
        t.to_dict()
        | {
            "shards": ", ".join(str(s) for s in t.shards),
            "score": _fmt(t.score),
            "reward": _fmt(t.reward),
        }
        for t in c.turns
    ]
    return c.to_dict() | {
        "id": c.conversation_id,
        "final_score": _fmt(c.final_score),
        "turns": turns,
    }


def _share_out(ordered: list[Conversation], limit: int) -> list[Conversation]:
    """At most ``limit`` conversations, shared equally between the models (a model with fewer
    leaves its share to the others), in the given order: a comparison shows every model."""
    by_model = _by_model(ordered)
    quota = dict.fromkeys(by_model, 0)
    left = min(limit, len(ordered))
    while left:
        for model in by_model:
            if left and quota[model] < len(by_model[model]):
                quota[model] += 1
                left -= 1
    keep = {id(c) for model, cs in by_model.items() for c in cs[: quota[model]]}
    return [c for c in ordered if id(c) in keep]


def render(
    roots: Sequence[str | Path],
    max_transcripts: int = DEFAULT_MAX_TRANSCRIPTS,
    baseline: str | None = None,
    n_boot: int = 1000,
) -> str:
    """The report of every run under ``roots`` as one HTML string.

    ``n_boot`` > 0 adds the figures with bootstrap intervals (:mod:`icpo_eval.compare`), with
    every model's paired difference from ``baseline`` when one is named. Raises
    :class:`~icpo_eval.errors.IcpoError` for what the leaderboard refuses (a missing directory,
    no runs, mixed settings) and for a baseline that is not among the runs' models.
    """
    if max_transcripts < 0:
        raise ValueError(f"max_transcripts must be at least 0, got {max_transcripts}")
    if n_boot < 0:
        raise ValueError(f"n_boot must be at least 0, got {n_boot}")
    convs = collect(roots)
    models = sorted({c.model for c in convs})
    if baseline is not None and baseline not in models:
        raise IcpoError(
            f"baseline model {baseline!r} is not in these runs (they have: {', '.join(models)})"
        )
    intervals = formatted(interval_table(convs, baseline, n_boot)) if n_boot else []
    board = table(convs)
    ordered = sorted(
        convs, key=lambda c: (c.model, c.family, c.task_id, mode_key(c.mode), c.run_index)
    )
    shown = _share_out(ordered, max_transcripts)
    columns = list(board.columns)
    rows = [
        [_cell(col, v) for col, v in zip(columns, rec)]
        for rec in board.astype(object).where(board.notna(), None).itertuples(index=False)
    ]
    env = Environment(
        loader=FileSystemLoader(str(PROMPTS_DIR)),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return env.get_template(TEMPLATE).render(
        version=__version__,
        sources=[str(r) for r in roots],
        n_conversations=len(convs),
        n_failed=sum(c.error is not None for c in convs),
        models=models,
        columns=columns,
        rows=rows,
        intervals=intervals,
        baseline=baseline,
        n_boot=n_boot,
        categories=category_shares(convs),
        plots=make_plots(convs),
        transcripts=[_transcript(c) for c in shown],
        n_left_out=len(ordered) - len(shown),
        max_transcripts=max_transcripts,
    )


def write_report(
    roots: Sequence[str | Path],
    output: str | Path,
    max_transcripts: int = DEFAULT_MAX_TRANSCRIPTS,
    baseline: str | None = None,
    n_boot: int = 1000,
) -> Path:
    """Render the report (see :func:`render`) and write it to ``output``; return the path."""
    html = render(roots, max_transcripts=max_transcripts, baseline=baseline, n_boot=n_boot)
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(html, encoding="utf-8")
    return out
