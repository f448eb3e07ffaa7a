"""The comparison report of M0 against the M1 runs: figures, verdicts, failure cases, odd inputs."""

from __future__ import annotations

import copy
import csv
import io
import json
import re
import struct
import zlib

import numpy as np
import pytest
from PIL import Image
from clipfood_assets_tests.reporting.reporting_inputs import DIRECTIONS, Inputs, make_inputs, queries

from clipfood_assets.reporting import REPORT_FILES, Report, RunArtifacts, build_comparison_report
from clipfood_assets.reporting.analysis import analyse
from clipfood_assets.reporting.figures import efficiency_rows
from clipfood_assets.reporting.markdown import render_markdown
from clipfood_assets.reporting.plotting import BASELINE_COLOR, HIT_COLOR, MISS_COLOR, run_colors

UNESCAPED_PIPE = re.compile(r"(?<!\\)\|")


def table_blocks(markdown: str) -> list[list[str]]:
    """Runs of consecutive table lines."""
    blocks: list[list[str]] = []
    previous = False
    for line in markdown.splitlines():
        is_table = line.startswith("|")
        if is_table and not previous:
            blocks.append([])
        if is_table:
            blocks[-1].append(line)
        previous = is_table
    return blocks


def build(inputs: Inputs, runs: dict[str, RunArtifacts] | None = None, load_image=None, **options) -> Report:
    return build_comparison_report(inputs.baseline, inputs.baseline_examples,
                                   inputs.runs if runs is None else runs, load_image, **options)


def markdown_only(inputs: Inputs, runs: dict[str, RunArtifacts], max_failure_rows: int = 15) -> str:
    """report.md without drawing figures: the cheap path for markdown-only checks."""
    findings = analyse(inputs.baseline, runs)
    return render_markdown(findings, efficiency_rows(inputs.baseline, findings.runs), [], max_failure_rows)


def verdict_line(markdown: str, run: str) -> str:
    lines = [line for line in markdown.splitlines() if line.startswith(f"- Run {run}:")]
    assert len(lines) == 1, lines
    return lines[0]


def with_results(run: RunArtifacts, **changes) -> RunArtifacts:
    results = copy.deepcopy(dict(run.results))
    for key, value in changes.items():
        if value is None:
            results.pop(key, None)
        else:
            results[key] = value
    return RunArtifacts(results=results, examples=run.examples, training_logs=run.training_logs, config=run.config)


def assert_png_ok(data: bytes, name: str) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG", name
        pixels = np.asarray(image.convert("RGB"), dtype=float)
    assert pixels.shape[1] >= 400 and pixels.shape[0] >= 150, (name, pixels.shape)
    assert pixels.var() > 0, f"{name} is blank"
    assert len(data) < 600_000, (name, len(data))
    return pixels


@pytest.fixture(scope="module")
def report(inputs: Inputs) -> Report:
    return build(inputs, load_image=inputs.load_image)


def test_report_holds_every_file_and_every_png_is_a_real_picture(report: Report) -> None:
    assert set(report.files) == set(REPORT_FILES)
    pngs = [name for name in report.files if name.endswith(".png")]
    assert {"learning_curves.png", "metric_bars.png", "efficiency.png", "retrieval_examples.png"} <= set(pngs)
    for name in pngs:
        assert_png_ok(report.files[name], name)
    assert report.files["report.md"].decode("utf-8") == report.markdown
    assert json.loads(report.files["summary.json"]) == report.summary


def has_color(pixels: np.ndarray, hex_color: str, tolerance: int = 12) -> bool:
    rgb = np.array([int(hex_color[i: i + 2], 16) for i in (1, 3, 5)], dtype=float)
    return bool(np.any(np.all(np.abs(pixels - rgb) <= tolerance, axis=-1)))


def test_figures_draw_each_model_and_mark_hits_and_misses(report: Report) -> None:
    colors = {"M0": BASELINE_COLOR, **run_colors(["better", "worse"])}
    bars = assert_png_ok(report.files["metric_bars.png"], "metric_bars.png")
    assert all(has_color(bars, c) for c in colors.values())
    curves = assert_png_ok(report.files["learning_curves.png"], "learning_curves.png")
    assert has_color(curves, colors["better"]) and has_color(curves, colors["worse"])
    differences = assert_png_ok(report.files["metric_differences.png"], "metric_differences.png")
    assert has_color(differences, colors["better"]) and has_color(differences, colors["worse"])
    examples = assert_png_ok(report.files["retrieval_examples.png"], "retrieval_examples.png")
    assert has_color(examples, HIT_COLOR) and has_color(examples, MISS_COLOR)


def test_markdown_links_every_figure_by_relative_name(report: Report) -> None:
    for name in (n for n in report.files if n.endswith(".png")):
        assert f"]({name})" in report.markdown


def test_verdicts_follow_the_confidence_intervals(inputs: Inputs, report: Report) -> None:
    for run, word in (("better", "**H1 supported**"), ("worse", "**H1 not supported**")):
        lo, hi = inputs.runs[run].results["comparison_to_baseline"]["text_to_image"]["R@1"]["ci"]
        line = verdict_line(report.markdown, run)
        assert word in line
        assert f"the 95 % CI of the text→image R@1 difference is [{lo:.3f}, {hi:.3f}]" in line
    assert report.summary["runs"]["better"]["h1_supported"] is True
    assert report.summary["runs"]["worse"]["h1_supported"] is False
    assert report.summary["runs"]["better"]["primary"]["ci"][0] > 0
    assert report.summary["best_run"] == "better"
    assert (report.summary["n_runs"], report.summary["n_supported"], report.summary["n_compared"]) == (2, 1, 2)
    assert "H1 is supported by 1 of 2 compared run(s)" in report.markdown


def test_metric_table_shows_each_model_value_with_its_interval(inputs: Inputs, report: Report) -> None:
    results = inputs.runs["worse"].results
    value = results["metrics"]["image_to_text"]["MRR"]
    lo, hi = results["confidence_intervals"]["image_to_text"]["MRR"]
    assert f"{value:.3f} [{lo:.3f}, {hi:.3f}]" in report.markdown
    assert "| M1 worse |" in report.markdown and "| M0 |" in report.markdown
    # Hyper-parameters of each run appear in the configuration table.
    assert "| better | – | 8 | 16 | 2 | 5e-05 | infonce |" in report.markdown  # no peft.method: older run
    assert "| worse | – | 4 | 8 | 2 | 0.001 | infonce |" in report.markdown


def test_failure_cases_are_exactly_the_queries_whose_rank_got_worse(inputs: Inputs, report: Report) -> None:
    rows = list(csv.DictReader(io.StringIO(report.files["failure_cases.csv"].decode("utf-8"))))
    for run in ("better", "worse"):
        for direction in DIRECTIONS:
            m0, m1 = inputs.ranks["M0"][direction], inputs.ranks[run][direction]
            expected = {q for q, a, b in zip(queries(direction), m0, m1) if b > a}
            listed = {r["query"] for r in rows if r["run"] == run and r["direction"] == direction}
            assert listed == expected
            assert report.summary["runs"][run]["failure_cases"][direction]["n_worse"] == len(expected)
    # The better run made three queries per direction worse; the markdown names each of them.
    better = report.markdown.split("### Run better")[1].split("### Run worse")[0]
    for query in (q for q, a, b in zip(queries("text_to_image"), inputs.ranks["M0"]["text_to_image"],
                                        inputs.ranks["better"]["text_to_image"]) if b > a):
        assert f"| {query} |" in better
    # The worse run has more failures than the table shows; the rest are pointed to.
    assert "more in failure_cases.csv" in report.markdown.split("### Run worse")[1]


def test_same_inputs_give_the_same_bytes_whatever_the_run_order(inputs: Inputs, report: Report) -> None:
    reordered = dict(reversed(list(inputs.runs.items())))
    again = build(inputs, runs=reordered, load_image=inputs.load_image)
    assert again.markdown == report.markdown
    assert again.files["summary.json"] == report.files["summary.json"]
    assert again.files == report.files


def test_zero_runs_reports_the_baseline_alone(inputs: Inputs) -> None:
    alone = build(inputs, runs={}, load_image=inputs.load_image)
    assert "No M1 runs yet: this report shows the M0 baseline alone." in alone.markdown
    assert alone.summary["n_runs"] == 0 and alone.summary["best_run"] is None
    assert alone.summary["h1_supported_by_any_run"] is False
    assert set(alone.files) == set(REPORT_FILES)
    for name in (n for n in alone.files if n.endswith(".png")):
        assert_png_ok(alone.files[name], name)
    assert alone.files["failure_cases.csv"].decode().strip() == "run,direction,query,m0_rank,m1_rank,rank_change"


def png_header_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims a huge image (a decompression bomb's first bytes)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


@pytest.mark.parametrize("loader", ["none", "raises", "garbage", "huge"])
def test_missing_thumbnails_become_grey_tiles(inputs: Inputs, report: Report, loader: str) -> None:
    def raising(key: str) -> bytes:
        raise FileNotFoundError(key)

    loaders = {"none": None, "raises": raising, "garbage": lambda key: b"not a jpeg" if "r0" in key else 42,
               "huge": lambda key: png_header_claiming(8000, 8000)}
    degraded = build(inputs, load_image=loaders[loader])
    pixels = assert_png_ok(degraded.files["retrieval_examples.png"], "retrieval_examples.png")
    assert degraded.files["retrieval_examples.png"] != report.files["retrieval_examples.png"]
    assert degraded.summary["thumbnails_missing"] > 0
    assert report.summary["thumbnails_missing"] == 0
    assert "drawn as grey tiles" in degraded.markdown
    # The placeholder grey (190, 190, 190) is on the page.
    assert np.any(np.all(np.abs(pixels - 190) <= 3, axis=-1))


def test_run_without_comparison_is_marked_not_compared(inputs: Inputs) -> None:
    runs = dict(inputs.runs, plain=with_results(inputs.runs["worse"], comparison_to_baseline=None))
    markdown = markdown_only(inputs, runs)
    assert "**not compared**" in verdict_line(markdown, "plain")
    assert "| plain | not compared |" in markdown
    summary = build(inputs, runs=runs).summary
    assert summary["runs"]["plain"]["status"] == "not compared"
    assert summary["runs"]["plain"]["h1_supported"] is None
    assert (summary["n_compared"], summary["n_not_compared"]) == (2, 1)


def test_positive_point_estimate_with_a_ci_touching_zero_is_not_supported(inputs: Inputs) -> None:
    comparison = copy.deepcopy(inputs.runs["better"].results["comparison_to_baseline"])
    comparison["text_to_image"]["R@1"].update(diff=0.2, ci=[0.0, 0.4])
    comparison["h1_supported"] = True  # what a point-estimate reading would say
    runs = {"edge": with_results(inputs.runs["better"], comparison_to_baseline=comparison)}
    line = verdict_line(markdown_only(inputs, runs), "edge")
    assert "**H1 not supported**" in line and "[0.000, 0.400]" in line and "includes 0" in line
    assert "this report follows the CI" in line
    comparison["text_to_image"]["R@1"].update(diff=0.0008, ci=[0.0001, 0.002])
    line = verdict_line(markdown_only(inputs, runs), "edge")
    assert "**H1 supported**" in line and "[0.0001, 0.002]" in line  # a tiny positive bound is not printed as 0
    comparison["text_to_image"]["R@1"].pop("ci")
    line = verdict_line(markdown_only(inputs, runs), "edge")
    assert "**H1 not supported**" in line and "no 95 % CI" in line


def test_queries_that_do_not_align_skip_failure_analysis_with_a_note(inputs: Inputs) -> None:
    shifted = copy.deepcopy(inputs.runs["worse"].results["first_hit_ranks"])
    shifted["text_to_image"]["queries"] = [q + "x" for q in shifted["text_to_image"]["queries"]]
    shuffled_with_repeats = copy.deepcopy(inputs.runs["worse"].results["first_hit_ranks"])
    block = shuffled_with_repeats["image_to_text"]
    block["queries"] = list(reversed(block["queries"][:-1])) + [block["queries"][0]]
    runs = {"shifted": with_results(inputs.runs["worse"], first_hit_ranks=shifted),
            "repeats": with_results(inputs.runs["worse"], first_hit_ranks=shuffled_with_repeats)}
    markdown = markdown_only(inputs, runs)
    assert "text→image: failure analysis skipped: queries differ from M0's (30 only in M0, 30 only in the run)" \
        in markdown
    assert "image→text: failure analysis skipped: queries repeat" in markdown
    findings = analyse(inputs.baseline, runs)
    assert not findings.failures["shifted"]["text_to_image"].analysed
    assert findings.failures["shifted"]["image_to_text"].analysed  # the other direction still aligns
    assert findings.failures["repeats"]["text_to_image"].analysed


def test_same_queries_in_another_order_are_aligned_by_query(inputs: Inputs) -> None:
    ranks = copy.deepcopy(inputs.runs["better"].results["first_hit_ranks"])
    block = ranks["text_to_image"]
    block["queries"], block["ranks"] = block["queries"][::-1], block["ranks"][::-1]
    findings = analyse(inputs.baseline, {"reversed": with_results(inputs.runs["better"], first_hit_ranks=ranks)})
    original = analyse(inputs.baseline, {"better": inputs.runs["better"]})
    assert findings.failures["reversed"]["text_to_image"].worse == original.failures["better"]["text_to_image"].worse


def test_hostile_text_cannot_break_tables_or_figures(inputs: Inputs) -> None:
    hostile = "a|b\n<script>alert(1)</script> $5 and $x^{2 [link](http://x) `code`"
    examples = copy.deepcopy(inputs.baseline_examples)
    examples[0]["query"] = hostile
    examples[-1]["top"][0]["key"] = hostile
    ranks = copy.deepcopy(inputs.runs["worse"].results["first_hit_ranks"])
    ranks["text_to_image"]["queries"][0] = hostile
    baseline = copy.deepcopy(inputs.baseline)
    baseline["first_hit_ranks"]["text_to_image"]["queries"][0] = hostile
    run = RunArtifacts(results={**inputs.runs["worse"].results, "first_hit_ranks": ranks},
                       examples=examples, training_logs=inputs.runs["worse"].training_logs,
                       config={"lora": {"r": hostile}, "training": {"loss": {"nested": [1, 2]}}})
    hostile_inputs = Inputs(baseline, examples, {"x|y_$z": run}, inputs.ranks, inputs.load_image)
    result = build(hostile_inputs, load_image=inputs.load_image)
    assert "<script>" not in result.markdown and "&lt;script&gt;" in result.markdown
    for block in table_blocks(result.markdown):
        widths = {len(UNESCAPED_PIPE.findall(line)) for line in block}
        assert len(widths) == 1, block
    assert "x\\|y\\_\\$z" in result.markdown
    for name in (n for n in result.files if n.endswith(".png")):
        assert_png_ok(result.files[name], name)


def test_missing_and_non_finite_numbers_show_as_dashes(inputs: Inputs) -> None:
    results = copy.deepcopy(dict(inputs.runs["better"].results))
    results["metrics"]["text_to_image"]["R@5"] = float("nan")
    results["confidence_intervals"]["text_to_image"]["R@1"] = [0.9, 0.1]  # lo > hi: not an interval
    del results["efficiency"]
    run = RunArtifacts(results=results, examples="not a list", training_logs={"steps": "oops"}, config=None)
    report = build(inputs, runs={"odd": run})
    json.loads(report.files["summary.json"])  # strict JSON: no NaN leaked
    table = [line for line in report.markdown.splitlines() if line.startswith("| M1 odd |")][0]
    assert table.split(" | ")[2] == "–"
    assert "| odd | – | – | – | – | – |" in report.markdown
    assert_png_ok(report.files["efficiency.png"], "efficiency.png")


def test_oversized_rank_lists_are_cut_in_markdown_but_complete_in_csv(inputs: Inputs) -> None:
    n = 3000
    many = [f"q{i}" for i in range(n)]
    rng = np.random.default_rng(7)
    base = rng.integers(1, 50, n)
    baseline = copy.deepcopy(inputs.baseline)
    baseline["first_hit_ranks"]["text_to_image"] = {"queries": many, "ranks": base.tolist()}
    ranks = copy.deepcopy(inputs.runs["worse"].results["first_hit_ranks"])
    ranks["text_to_image"] = {"queries": many, "ranks": (base + 1).tolist()}
    runs = {"big": with_results(inputs.runs["worse"], first_hit_ranks=ranks)}
    big_inputs = Inputs(baseline, inputs.baseline_examples, runs, inputs.ranks, inputs.load_image)
    markdown = markdown_only(big_inputs, runs, max_failure_rows=10)
    assert f"{n} of {n} queries ranked worse" in markdown
    assert f"… and {n - 10} more in failure_cases.csv." in markdown
    assert len(markdown) < 40_000
    findings = analyse(baseline, runs)
    assert len(findings.failures["big"]["text_to_image"].worse) == n


def test_bad_baseline_or_runs_are_refused_with_a_clear_error(inputs: Inputs) -> None:
    with pytest.raises(ValueError, match="metrics"):
        build_comparison_report({"model": "M0"}, [], {}, None)
    with pytest.raises(TypeError, match="RunArtifacts"):
        build_comparison_report(inputs.baseline, [], {"raw": {"metrics": {}}}, None)
    with pytest.raises(ValueError, match="twice"):
        build_comparison_report(inputs.baseline, [], {1: inputs.runs["better"], "1": inputs.runs["worse"]}, None)


def test_inputs_are_not_modified(inputs: Inputs) -> None:
    fresh = make_inputs()
    build(fresh, load_image=fresh.load_image)
    assert fresh.baseline == make_inputs().baseline
    assert fresh.runs["better"].results == make_inputs().runs["better"].results
