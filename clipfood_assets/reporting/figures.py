"""The report's quantitative figures: learning curves, metric bars, M1 - M0 differences, efficiency.

Each function takes the parsed inputs and returns PNG bytes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.ticker import MaxNLocator

from clipfood_assets.reporting.analysis import metric_comparison
from clipfood_assets.reporting.artifacts import (
    config_value,
    BASELINE_LABEL,
    DIRECTION_LABELS,
    DIRECTIONS,
    SCORE_METRICS,
    RunArtifacts,
    as_number,
    lookup,
    metric_interval,
    metric_value,
)
from clipfood_assets.reporting.plotting import (
    BASELINE_COLOR,
    HIT_COLOR,
    RUN_COLORS,
    new_figure,
    plain_label,
    plot_style,
    show_message,
    to_png,
)

# Beyond this many points a curve is thinned: the picture is the same and the PNG stays small.
MAX_CURVE_POINTS = 4000


def _curve(steps: Sequence[Any], field: str) -> tuple[np.ndarray, np.ndarray]:
    """(step, value) arrays of one logged field, skipping entries that lack it."""
    xs, ys = [], []
    for index, entry in enumerate(steps):
        if not isinstance(entry, Mapping):
            continue
        value = as_number(entry.get(field))
        if value is None:
            continue
        step = as_number(entry.get("step"))
        xs.append(step if step is not None else float(index))
        ys.append(value)
    x, y = np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)
    if len(x) > MAX_CURVE_POINTS:
        keep = np.linspace(0, len(x) - 1, MAX_CURVE_POINTS).round().astype(int)
        x, y = x[keep], y[keep]
    return x, y


def _validation_curve(logs: Any) -> tuple[list[int], list[float]]:
    epochs, values = [], []
    for entry in lookup(logs, "validation") or []:
        value = as_number(lookup(entry, "metrics", "text_to_image", "R@1"))
        if isinstance(lookup(entry, "epoch"), int) and value is not None:
            epochs.append(entry["epoch"])
            values.append(value)
    return epochs, values


def learning_curves_png(runs: Mapping[str, RunArtifacts], colors: Mapping[str, str]) -> bytes:
    """Training loss and temperature per optimizer step, and validation text→image R@1 per epoch
    (the best epoch marked), one line per run."""
    with plot_style():
        figure = new_figure(15, 4)
        loss_axes, temperature_axes, validation_axes = figure.subplots(1, 3)
        drawn = {"loss": 0, "temperature": 0, "validation": 0}
        for key, run in runs.items():
            steps = lookup(run.training_logs, "steps")
            for field, axes in (("loss", loss_axes), ("temperature", temperature_axes)):
                x, y = _curve(steps, field) if isinstance(steps, list) else ([], [])
                if len(x):
                    axes.plot(x, y, color=colors[key], linewidth=1.2, label=plain_label(key, 40))
                    drawn[field] += 1
            epochs, values = _validation_curve(run.training_logs)
            if epochs:
                validation_axes.plot(epochs, values, color=colors[key], marker="o", markersize=3, linewidth=1.2,
                                     label=plain_label(key, 40))
                best = lookup(run.training_logs, "best_validation", "epoch")
                if best in epochs:
                    validation_axes.plot([best], [values[epochs.index(best)]], marker="*", markersize=12,
                                         color=colors[key])
                drawn["validation"] += 1
        for field, axes, title, xlabel in (
            ("loss", loss_axes, "Training loss per step", "optimizer step"),
            ("temperature", temperature_axes, "Temperature per step", "optimizer step"),
            ("validation", validation_axes, "Validation text→image R@1 (★ best)", "epoch"),
        ):
            axes.set_title(title)
            if not drawn[field]:
                show_message(axes, "no M1 runs yet" if not runs else f"no {field} in the training logs")
                continue
            axes.set_xlabel(xlabel)
            axes.xaxis.set_major_locator(MaxNLocator(integer=True))
            axes.set_ylabel("R@1" if field == "validation" else field)
            axes.grid(alpha=0.3)
            axes.legend(loc="best")
        figure.tight_layout()
        return to_png(figure)


def sweep_png(sweeps: Mapping[str, Sequence[tuple[str, Mapping[str, Any]]]], runs: Mapping[str, RunArtifacts],
              selected: str | None) -> bytes:
    """Best validation text→image R@1 of every point of every sweep, labelled by its values."""
    with plot_style():
        figure = new_figure(12, 3.6 * max(1, len(sweeps)))
        panels = np.atleast_1d(figure.subplots(max(1, len(sweeps)), 1))
        for axes, (name, points) in zip(panels, sweeps.items()):
            labels, values, colors = [], [], []
            for run_key, point_values in points:
                labels.append(plain_label(", ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in point_values.items()),
                                          30))
                score = lookup(runs.get(run_key).training_logs if run_key in runs else None, "best_validation",
                               "score")
                values.append(float(score[0]) if isinstance(score, list) and score else np.nan)
                colors.append(HIT_COLOR if run_key == selected else RUN_COLORS[0])
            positions = np.arange(len(points))
            axes.bar(positions, np.nan_to_num(values), color=colors)
            for x, value in zip(positions, values):
                axes.annotate("not run" if np.isnan(value) else f"{value:.3f}", (x, 0 if np.isnan(value) else value),
                              ha="center", va="bottom", fontsize=8)
            axes.set_xticks(positions, labels, rotation=20, ha="right")
            axes.set_ylim(0, 1.05)
            axes.set_ylabel("validation t2i R@1")
            axes.set_title(f"Sweep {plain_label(name, 40)} (green: the selected run)")
            axes.grid(axis="y", alpha=0.3)
        figure.tight_layout()
        return to_png(figure)


def _models(baseline: Mapping[str, Any], runs: Mapping[str, RunArtifacts], colors: Mapping[str, str]):
    """(label, results, colour) of M0 then every run."""
    return [(BASELINE_LABEL, baseline, BASELINE_COLOR)] + [
        (f"M1 {key}", run.results, colors[key]) for key, run in runs.items()
    ]


def _error_bars(value: float, interval: tuple[float, float] | None) -> tuple[float, float]:
    """Asymmetric error-bar lengths below and above `value`; zero where there is no interval."""
    if interval is None or math.isnan(value):
        return 0.0, 0.0
    lo, hi = interval
    return max(value - lo, 0.0), max(hi - value, 0.0)


def metric_bars_png(baseline: Mapping[str, Any], runs: Mapping[str, RunArtifacts], colors: Mapping[str, str]) -> bytes:
    """R@1/R@5/R@10/MRR of M0 and each run, both directions, with 95 % CI error bars."""
    models = _models(baseline, runs, colors)
    width = 0.8 / len(models)
    with plot_style():
        figure = new_figure(12, 4.8)
        panels = figure.subplots(1, 2, sharey=True)
        for axes, direction in zip(panels, DIRECTIONS, strict=True):
            positions = np.arange(len(SCORE_METRICS), dtype=float)
            for index, (label, results, color) in enumerate(models):
                values = [metric_value(results, direction, m) for m in SCORE_METRICS]
                heights = np.array([v if v is not None else np.nan for v in values])
                errors = np.array(
                    [_error_bars(h, metric_interval(results, direction, m)) for h, m in zip(heights, SCORE_METRICS)]
                ).T
                axes.bar(positions + (index - (len(models) - 1) / 2) * width, np.nan_to_num(heights), width,
                         yerr=errors, color=color, capsize=2 if len(models) <= 6 else 0,
                         error_kw={"elinewidth": 0.9}, label=plain_label(label, 40))
            axes.set_xticks(positions, list(SCORE_METRICS))
            axes.set_ylim(0, 1.05)
            axes.set_title(DIRECTION_LABELS[direction])
            axes.grid(axis="y", alpha=0.3)
        panels[0].set_ylabel("score (95 % CI)")
        handles, labels = panels[0].get_legend_handles_labels()
        figure.legend(handles, labels, loc="lower center", ncol=min(len(models), 5), frameon=False)
        figure.tight_layout(rect=(0, 0.06 + 0.04 * math.ceil(len(models) / 5), 1, 1))
        return to_png(figure)


def metric_differences_png(runs: Mapping[str, RunArtifacts], colors: Mapping[str, str]) -> bytes:
    """M1 - M0 per metric and run with the paired-bootstrap 95 % CI; a CI right of 0 is a real gain."""
    compared = [
        (key, run.results["comparison_to_baseline"])
        for key, run in runs.items()
        if isinstance(lookup(run.results, "comparison_to_baseline"), Mapping)
    ]
    with plot_style():
        figure = new_figure(12, 1.8 + 0.5 * len(SCORE_METRICS) * max(1, min(len(compared), 9)) ** 0.5)
        panels = figure.subplots(1, 2, sharey=True)
        for axes, direction in zip(panels, DIRECTIONS, strict=True):
            axes.set_title(f"{DIRECTION_LABELS[direction]}: M1 − M0")
            if not compared:
                show_message(axes, "no M1 runs yet" if not runs else "no run compared to M0 yet")
                continue
            spread = 0.7 / len(compared)
            for index, (key, comparison) in enumerate(compared):
                _plot_differences(axes, comparison, direction, (index - (len(compared) - 1) / 2) * spread,
                                  colors[key], plain_label(key, 40))
            axes.axvline(0.0, color="black", linewidth=1, linestyle="--")
            axes.set_yticks(np.arange(len(SCORE_METRICS)), list(SCORE_METRICS))
            axes.set_ylim(len(SCORE_METRICS) - 0.5, -0.5)
            axes.set_xlabel("difference (95 % paired-bootstrap CI)")
            axes.grid(axis="x", alpha=0.3)
        if compared:
            handles, labels = panels[0].get_legend_handles_labels()
            figure.legend(handles, labels, loc="lower center", ncol=min(len(compared), 5), frameon=False)
            figure.tight_layout(rect=(0, 0.08 + 0.04 * math.ceil(len(compared) / 5), 1, 1))
        else:
            figure.tight_layout()
        return to_png(figure)


def _plot_differences(axes: Axes, comparison: Mapping[str, Any], direction: str, offset: float,
                      color: str, label: str) -> None:
    """One run's differences as points with horizontal CI bars."""
    labelled = False
    for row, metric in enumerate(SCORE_METRICS):
        entry = metric_comparison(comparison, direction, metric)
        if entry is None or entry.diff is None:
            continue
        below, above = _error_bars(entry.diff, entry.ci)
        axes.errorbar(entry.diff, row + offset, xerr=[[below], [above]], fmt="o", color=color, capsize=3,
                      markersize=4, label=None if labelled else label)
        labelled = True


def _efficiency(results: Mapping[str, Any], run: RunArtifacts | None, name: str) -> float | None:
    value = as_number(lookup(results, "efficiency", name))
    if value is None and name == "training_time_s" and run is not None:
        value = as_number(lookup(run.training_logs, "total_time_s"))
    return value


def efficiency_rows(baseline: Mapping[str, Any], runs: Mapping[str, RunArtifacts]) -> list[dict[str, Any]]:
    """Per model (M0 first) the efficiency figures the report shows; None where not measured."""
    rows = []
    for label, results, run in [(BASELINE_LABEL, baseline, None)] + [
        (key, r.results, r) for key, r in runs.items()
    ]:
        row = {name: _efficiency(results, run, name) for name in (
            "training_time_s", "peak_memory_bytes", "images_per_s", "texts_per_s",
            "trainable_parameters", "total_parameters")}
        kind, device = lookup(results, "efficiency", "peak_memory_kind"), lookup(results, "efficiency", "device")
        row["peak_memory_kind"] = str(kind) if kind is not None else None
        row["device"] = str(device) if device is not None else None
        trainable, total = row["trainable_parameters"], row["total_parameters"]
        row["trainable_percent"] = 100.0 * trainable / total if trainable is not None and total else None
        row["model"] = label
        # Runs configured before the peft section existed were LoRA.
        row["method"] = None if run is None else str(config_value(run.config, "peft.method") or "lora")
        rows.append(row)
    return rows


def _compact(value: float) -> str:
    """1234567 -> '1.23M': short bar annotations."""
    for threshold, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= threshold:
            return f"{value / threshold:.3g}{suffix}"
    return f"{value:.3g}"


def efficiency_png(baseline: Mapping[str, Any], runs: Mapping[str, RunArtifacts], colors: Mapping[str, str]) -> bytes:
    """Training time, peak memory, images/s, texts/s, trainable parameters and share, per model."""
    rows = efficiency_rows(baseline, runs)
    kinds = sorted({row["peak_memory_kind"] for row in rows if row["peak_memory_kind"]})
    memory_title = "Peak memory (MiB" + (f", {plain_label(kinds[0], 24)})" if len(kinds) == 1 else
                                          ", kinds differ)" if kinds else ")")
    panels: list[tuple[str, Callable[[dict[str, Any]], float | None], bool]] = [
        ("Training time (s)", lambda r: r["training_time_s"], False),
        (memory_title, lambda r: None if r["peak_memory_bytes"] is None else r["peak_memory_bytes"] / 2**20, False),
        ("Inference images/s", lambda r: r["images_per_s"], False),
        ("Inference texts/s", lambda r: r["texts_per_s"], False),
        ("Trainable parameters (log)", lambda r: r["trainable_parameters"], True),
        ("Trainable share (%)", lambda r: r["trainable_percent"], False),
    ]
    bar_colors = [BASELINE_COLOR] + [colors[key] for key in runs]
    labels = [plain_label(BASELINE_LABEL, 24)] + [plain_label(key, 24) for key in runs]
    with plot_style():
        figure = new_figure(12, 2.0 + 0.5 * len(rows) * 2)
        grid = figure.subplots(2, 3, sharey=True)
        positions = np.arange(len(rows))
        for axes, (title, read, log_scale) in zip(grid.ravel(), panels, strict=True):
            values = [read(row) for row in rows]
            present = [v is not None and (v > 0 or not log_scale) for v in values]
            widths = [v if ok else 0.0 for v, ok in zip(values, present)]
            if log_scale and any(present):
                axes.set_xscale("log")
                widths = [w if ok else np.nan for w, ok in zip(widths, present)]
            axes.barh(positions, widths, color=bar_colors, height=0.6)
            for y, value, ok in zip(positions, values, present):
                if ok and value is not None:  # value at the end of its bar
                    axes.annotate(_compact(value), (value, y), xytext=(3, 0), textcoords="offset points",
                                  va="center", fontsize=8, color="#222222")
                else:
                    axes.annotate("n/a", (0, y), xycoords=("axes fraction", "data"), xytext=(3, 0),
                                  textcoords="offset points", va="center", fontsize=8, color="#777777")
            if any(present):
                axes.margins(x=0.3)
            else:  # nothing measured: an empty 0..1 axis instead of matplotlib's ±0.06 default
                axes.set_xlim(0, 1)
                axes.set_xticks([])
            axes.set_title(title)
            axes.set_yticks(positions, labels)
            axes.set_ylim(len(rows) - 0.5, -0.5)
            axes.grid(axis="x", alpha=0.3)
        figure.tight_layout()
        return to_png(figure)
