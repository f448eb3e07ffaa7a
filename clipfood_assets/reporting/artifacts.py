"""Inputs and output of the comparison report, and tolerant readers of the results schema.

The results, examples and training logs are JSON written by the evaluation and training
steps. The report must survive partial or odd inputs (a run that was never compared, a
missing number, a NaN), so every read goes through the small accessors here, which
return None instead of raising.
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

DIRECTIONS = ("text_to_image", "image_to_text")
DIRECTION_LABELS = {"text_to_image": "text→image", "image_to_text": "image→text"}
ALL_METRICS = ("R@1", "R@5", "R@10", "MRR", "MedianRank", "MeanRank")
# Metrics on a [0, 1] scale, higher is better: the ones plotted as bars.
SCORE_METRICS = ("R@1", "R@5", "R@10", "MRR")
PRIMARY_METRIC = "text_to_image/R@1"
HYPERPARAMETERS = (
    "peft.method",
    "lora.r",
    "lora.lora_alpha",
    "training.epochs",
    "training.learning_rate",
    "training.loss",
)
BASELINE_LABEL = "M0"


@dataclass(frozen=True)
class RunArtifacts:
    """Everything one M1 (LoRA) run left in the fine-tuning zone that the report reads."""

    results: Mapping[str, Any]
    examples: Sequence[Mapping[str, Any]] = ()
    training_logs: Mapping[str, Any] | None = None
    config: Mapping[str, Any] | None = None


_FIGURE_LINK = re.compile(r"\]\(([A-Za-z0-9_.-]+\.png)\)")


@dataclass(frozen=True)
class Report:
    """The comparison report: files to store (name -> bytes), a JSON-safe summary, report.md text."""

    files: dict[str, bytes] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    markdown: str = ""

    def figure_data_uri(self, name: str) -> str:
        """`name`'s PNG as a `data:` URI: it renders wherever the markdown is shown (the Dagster UI
        loads no relative paths and cannot reach the lake)."""
        return "data:image/png;base64," + base64.b64encode(self.files[name]).decode("ascii")

    def markdown_with_inline_figures(self) -> str:
        """report.md with every figure link `](name.png)` replaced by the figure's data URI."""
        return _FIGURE_LINK.sub(
            lambda m: f"]({self.figure_data_uri(m.group(1))})" if m.group(1) in self.files else m.group(0),
            self.markdown,
        )


def as_number(value: Any) -> float | None:
    """`value` as a finite float, or None (bools, strings, NaN and infinities are not numbers here)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def as_rank(value: Any) -> int | None:
    """`value` as a 1-based rank, or None when it is not a positive integral number."""
    number = as_number(value)
    if number is None or number < 1 or not number.is_integer():
        return None
    return int(number)


def lookup(mapping: Any, *path: str) -> Any:
    """Nested `mapping[path[0]][path[1]]...`, None as soon as a level is missing or not a mapping."""
    current = mapping
    for key in path:
        if not isinstance(current, Mapping) or key not in current:
            return None
        current = current[key]
    return current


def metric_value(results: Mapping[str, Any], direction: str, metric: str) -> float | None:
    """One retrieval metric of a results dict, or None."""
    return as_number(lookup(results, "metrics", direction, metric))


def as_interval(value: Any) -> tuple[float, float] | None:
    """A `[lo, hi]` pair of finite numbers with lo <= hi, or None."""
    if not isinstance(value, Sequence) or isinstance(value, (str, bytes)) or len(value) != 2:
        return None
    lo, hi = as_number(value[0]), as_number(value[1])
    if lo is None or hi is None or lo > hi:
        return None
    return lo, hi


def metric_interval(results: Mapping[str, Any], direction: str, metric: str) -> tuple[float, float] | None:
    """The 95 % confidence interval of one metric of a results dict, or None."""
    return as_interval(lookup(results, "confidence_intervals", direction, metric))


def config_value(config: Mapping[str, Any] | None, dotted: str) -> Any:
    """A hyper-parameter by dotted name (`lora.r`), nested or as a flat dotted key; None if absent."""
    if not isinstance(config, Mapping):
        return None
    nested = lookup(config, *dotted.split("."))
    return nested if nested is not None else config.get(dotted)


def parse_metric_path(path: Any) -> tuple[str, str]:
    """`"text_to_image/R@1"` -> ("text_to_image", "R@1"); the default primary metric if malformed."""
    if isinstance(path, str) and path.count("/") == 1:
        direction, metric = path.split("/")
        if direction in DIRECTIONS and metric in ALL_METRICS:
            return direction, metric
    direction, metric = PRIMARY_METRIC.split("/")
    return direction, metric


def metric_label(direction: str, metric: str) -> str:
    """Human label such as `text→image R@1`."""
    return f"{DIRECTION_LABELS.get(direction, direction)} {metric}"
