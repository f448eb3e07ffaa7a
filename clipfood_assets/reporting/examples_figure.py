"""Retrieval examples: M0 and the best run side by side on the same queries, hits green, misses red.

text→image rows show the query caption and the top-5 images as thumbnails; image→text rows
show the query image and the top-5 captions. Thumbnails that cannot be loaded become grey
placeholder tiles: a missing photo never stops the report.
"""

from __future__ import annotations

import logging
import textwrap
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from PIL import Image, ImageDraw, ImageOps

from clipfood_assets.data.decode import decode_rgb
from clipfood_assets.reporting.artifacts import BASELINE_LABEL, DIRECTION_LABELS, DIRECTIONS, as_number, as_rank
from clipfood_assets.reporting.plotting import (
    HIT_COLOR,
    MISS_COLOR,
    message_png,
    new_figure,
    plain_label,
    plot_style,
    to_png,
)

logger = logging.getLogger(__name__)

TOP_K = 5
TILE_PX = 72
BORDER_PX = 5
GAP_PX = 6
# Refuse to decode larger images for a thumbnail (decompression bombs, absurd uploads).
MAX_SOURCE_PIXELS = 40_000_000
PLACEHOLDER_RGB = (190, 190, 190)

ImageLoader = Callable[[str], bytes]


@dataclass(frozen=True)
class RetrievedItem:
    """One of the top-k results: an image key or a caption, and whether it belongs to the query's recipe."""

    key: str
    score: float | None
    hit: bool


@dataclass(frozen=True)
class RetrievalExample:
    """One query with its top-k results under one model."""

    direction: str
    query: str
    top: tuple[RetrievedItem, ...]
    first_hit_rank: int | None


def _retrieved_item(entry: Any, query_recipe_id: Any) -> RetrievedItem | None:
    if not isinstance(entry, Mapping) or entry.get("key") is None:
        return None
    hit = entry.get("hit")
    if not isinstance(hit, bool):  # fall back on the recipe ids when the flag is missing
        hit = query_recipe_id is not None and str(entry.get("recipe_id")) == str(query_recipe_id)
    return RetrievedItem(key=str(entry["key"]), score=as_number(entry.get("score")), hit=hit)


def parse_examples(examples: Any) -> dict[str, dict[str, RetrievalExample]]:
    """examples_top5.json -> {direction: {query: example}}, in file order; the first of repeated queries wins."""
    parsed: dict[str, dict[str, RetrievalExample]] = {direction: {} for direction in DIRECTIONS}
    if not isinstance(examples, Sequence) or isinstance(examples, (str, bytes)):
        return parsed
    for record in examples:
        if not isinstance(record, Mapping) or record.get("direction") not in DIRECTIONS or record.get("query") is None:
            continue
        top = record.get("top") if isinstance(record.get("top"), list) else []
        items = [_retrieved_item(entry, record.get("query_recipe_id")) for entry in top[:TOP_K]]
        example = RetrievalExample(
            direction=record["direction"],
            query=str(record["query"]),
            top=tuple(item for item in items if item is not None),
            first_hit_rank=as_rank(record.get("first_hit_rank")),
        )
        parsed[example.direction].setdefault(example.query, example)
    return parsed


class ThumbnailCache:
    """Square thumbnails by image key, loaded once each; None for images that cannot be shown."""

    def __init__(self, load_image: ImageLoader | None, size: int = TILE_PX) -> None:
        self._load_image = load_image
        self._size = size
        self._tiles: dict[str, Image.Image | None] = {}

    @property
    def missing(self) -> list[str]:
        """Keys drawn as placeholders, sorted."""
        return sorted(key for key, tile in self._tiles.items() if tile is None)

    def get(self, key: str) -> Image.Image:
        """The thumbnail of `key`, or a grey placeholder tile."""
        if key not in self._tiles:
            self._tiles[key] = self._load(key)
        tile = self._tiles[key]
        return tile if tile is not None else self._placeholder()

    def _load(self, key: str) -> Image.Image | None:
        if self._load_image is None:
            return None
        try:
            data = self._load_image(key)
            if not isinstance(data, (bytes, bytearray, memoryview)):
                raise TypeError(f"load_image returned {type(data).__name__}, not bytes")
            # The platform's one decoder: a transparent photo shows on the same background as
            # the model saw it; JPEGs are decoded at reduced scale for a thumbnail.
            image = decode_rgb(bytes(data), max_pixels=MAX_SOURCE_PIXELS, min_short_side=self._size)
            return ImageOps.fit(image, (self._size, self._size))
        except Exception as error:  # any unreadable image becomes a placeholder, by design
            logger.debug("thumbnail %r unavailable: %s", key, error)
            return None

    def _placeholder(self) -> Image.Image:
        tile = Image.new("RGB", (self._size, self._size), PLACEHOLDER_RGB)
        draw = ImageDraw.Draw(tile)
        draw.line((0, 0, self._size, self._size), fill=(160, 160, 160), width=2)
        draw.line((0, self._size, self._size, 0), fill=(160, 160, 160), width=2)
        return tile


def _hex_rgb(color: str) -> tuple[int, int, int]:
    return tuple(int(color[i: i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]


def _strip(tiles: Sequence[tuple[Image.Image, bool]]) -> np.ndarray:
    """The top-k thumbnails in a row, each framed green (hit) or red (miss)."""
    cell = TILE_PX + 2 * BORDER_PX
    canvas = Image.new("RGB", (TOP_K * cell + (TOP_K - 1) * GAP_PX, cell), "white")
    draw = ImageDraw.Draw(canvas)
    for index, (tile, hit) in enumerate(tiles[:TOP_K]):
        left = index * (cell + GAP_PX)
        draw.rectangle((left, 0, left + cell - 1, cell - 1), fill=_hex_rgb(HIT_COLOR if hit else MISS_COLOR))
        canvas.paste(tile, (left + BORDER_PX, BORDER_PX))
    return np.asarray(canvas)


def _first_hit_text(label: str, example: RetrievalExample) -> str:
    rank = example.first_hit_rank
    return f"{label}: first hit at rank {rank}" if rank is not None else f"{label}: first hit rank unknown"


def _draw_images_cell(axes: Axes, label: str, example: RetrievalExample, thumbnails: ThumbnailCache) -> None:
    """text→image: the top-k images of one model as a framed strip with scores underneath."""
    axes.imshow(_strip([(thumbnails.get(item.key), item.hit) for item in example.top]), interpolation="nearest")
    axes.set_anchor("W")  # strips start under their column title rather than floating in the middle
    axes.set_axis_off()
    axes.set_title(plain_label(_first_hit_text(label, example), 70), fontsize=8, loc="left")
    cell = TILE_PX + 2 * BORDER_PX
    for index, item in enumerate(example.top[:TOP_K]):
        score = f" · {item.score:.2f}" if item.score is not None else ""
        axes.text(index * (cell + GAP_PX) + cell / 2, cell + 3, f"#{index + 1}{score}", ha="center", va="top",
                  fontsize=7, color=HIT_COLOR if item.hit else MISS_COLOR)


def _draw_captions_cell(axes: Axes, label: str, example: RetrievalExample) -> None:
    """image→text: the top-k captions of one model, one line each, green for hits and red for misses."""
    axes.set_axis_off()
    axes.set_title(plain_label(_first_hit_text(label, example), 70), fontsize=8, loc="left")
    for index, item in enumerate(example.top[:TOP_K]):
        mark = "✓" if item.hit else "✗"
        score = f" ({item.score:.2f})" if item.score is not None else ""
        axes.text(0.0, 1.0 - index / TOP_K, plain_label(f"{index + 1}. {mark} {item.key}{score}", 70),
                  transform=axes.transAxes, va="top", fontsize=8, color=HIT_COLOR if item.hit else MISS_COLOR)


def _draw_query_cell(axes: Axes, direction: str, query: str, thumbnails: ThumbnailCache) -> None:
    axes.set_title(DIRECTION_LABELS[direction] + " query", fontsize=8, loc="left", color="#555555")
    if direction == "image_to_text":
        axes.imshow(np.asarray(thumbnails.get(query)), interpolation="nearest")
        axes.set_anchor("W")
        axes.set_axis_off()
        return
    axes.set_axis_off()
    wrapped = "\n".join(textwrap.wrap(plain_label(query, 80), width=24)[:4])
    axes.text(0.0, 1.0, wrapped, transform=axes.transAxes, va="top", fontsize=9, fontweight="bold")


def select_queries(
    baseline: Mapping[str, RetrievalExample], run: Mapping[str, RetrievalExample] | None, limit: int
) -> list[str]:
    """Up to `limit` queries in M0's order, preferring those the run also has so both are shown on the same query."""
    if run:
        shared = [query for query in baseline if query in run]
        if shared:
            return shared[:limit]
    return list(baseline)[:limit]


def retrieval_examples_png(
    baseline_examples: Any,
    best_run: tuple[str, Any] | None,
    load_image: ImageLoader | None,
    queries_per_direction: int = 3,
) -> tuple[bytes, list[str]]:
    """The examples grid and the image keys drawn as placeholders.

    `best_run` is (run key, that run's examples) or None when there are no runs.
    """
    m0 = parse_examples(baseline_examples)
    run = parse_examples(best_run[1]) if best_run is not None else None
    columns = [BASELINE_LABEL] + ([f"M1 {best_run[0]}"] if best_run is not None else [])
    rows = [
        (direction, query)
        for direction in DIRECTIONS
        for query in select_queries(m0[direction], run[direction] if run else None, queries_per_direction)
    ]
    if not rows:
        return message_png("Retrieval examples", "no retrieval examples for M0"), []
    thumbnails = ThumbnailCache(load_image)
    with plot_style():
        figure = new_figure(3 + 5.5 * len(columns), 0.8 + 1.45 * len(rows))
        grid = figure.add_gridspec(len(rows), 1 + len(columns), width_ratios=[1.5] + [5] * len(columns),
                                   hspace=0.75, wspace=0.08)
        for row, (direction, query) in enumerate(rows):
            _draw_query_cell(figure.add_subplot(grid[row, 0]), direction, query, thumbnails)
            for column, label in enumerate(columns, start=1):
                axes = figure.add_subplot(grid[row, column])
                source = m0 if column == 1 else run
                example = source[direction].get(query) if source else None
                if example is None:
                    axes.set_axis_off()
                    axes.text(0.0, 0.5, plain_label(f"{label}: query not among its examples", 70),
                              transform=axes.transAxes, fontsize=8, color="#777777")
                elif direction == "text_to_image":
                    _draw_images_cell(axes, label, example, thumbnails)
                else:
                    _draw_captions_cell(axes, label, example)
        title = "Retrieval examples: " + " vs ".join(plain_label(c, 40) for c in columns)
        figure.suptitle(title + "  (green = query's recipe, red = other recipe)", fontsize=11)
        figure.subplots_adjust(left=0.02, right=0.99, top=1 - 0.55 / (0.8 + 1.45 * len(rows)), bottom=0.03)
        png = to_png(figure, palette=True)
    missing = thumbnails.missing
    if missing:  # expected without a loader; worth a warning when the loader failed
        log = logger.info if load_image is None else logger.warning
        log("%d thumbnail(s) unavailable, drawn as grey placeholders", len(missing))
    return png, missing
