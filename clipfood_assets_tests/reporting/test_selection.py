"""Selection on validation, claims on test; Holm–Bonferroni when H1 is judged over several runs."""

import pytest

from clipfood_assets.modeling.metrics import holm_adjusted, paired_bootstrap_diff
from clipfood_assets.reporting import RunArtifacts, build_comparison_report
from clipfood_assets.reporting.analysis import analyse, build_summary


def _run(test_r1: float, p_value: float, validation: tuple[float, float] | None, ci=(0.01, 0.2)) -> RunArtifacts:
    logs = {"best_validation": {"epoch": 3, "score": list(validation)}} if validation else {}
    results = {
        "metrics": {"text_to_image": {"R@1": test_r1, "MRR": test_r1}},
        "comparison_to_baseline": {
            "text_to_image": {"R@1": {"m0": 0.1, "m1": test_r1, "diff": test_r1 - 0.1, "ci": list(ci),
                                      "p_value": p_value}},
            "h1_supported": ci[0] > 0,
        },
    }
    return RunArtifacts(results=results, training_logs=logs)


BASELINE = {"metrics": {"text_to_image": {"R@1": 0.1, "MRR": 0.1}}}


def test_the_selected_run_is_the_best_on_validation_not_on_test():
    runs = {
        "lucky-on-test": _run(0.40, 0.001, validation=(0.20, 0.30)),
        "best-on-validation": _run(0.30, 0.01, validation=(0.35, 0.40)),
        "no-validation": _run(0.50, 0.001, validation=None),
    }
    summary = build_summary(analyse(BASELINE, runs))
    assert summary["selection"]["run"] == summary["best_run"] == "best-on-validation"
    assert summary["selection"]["basis"] == "validation" and summary["selection"]["epoch"] == 3
    roles = {k: v["role"] for k, v in summary["runs"].items()}
    assert roles == {"lucky-on-test": "exploratory", "best-on-validation": "selected", "no-validation": "exploratory"}
    assert summary["h1_supported_by_selected_run"] is True


def test_without_validation_the_test_choice_is_said_to_be_optimistic():
    runs = {"a": _run(0.2, 0.2, None, ci=(-0.1, 0.2)), "b": _run(0.3, 0.01, None)}
    findings = analyse(BASELINE, runs)
    assert findings.selection.run == "b" and findings.selection.basis == "test"
    report = build_comparison_report(BASELINE, [], runs, load_image=None)
    assert "chosen on the test set because no run has validation results" in report.markdown
    assert "optimistic" in report.markdown


def test_h1_over_several_runs_is_holm_corrected():
    runs = {"r1": _run(0.3, 0.010, (0.3, 0.3)), "r2": _run(0.3, 0.020, (0.2, 0.2)),
            "r3": _run(0.3, 0.040, (0.1, 0.1))}
    summary = build_summary(analyse(BASELINE, runs))
    adjusted = {k: v["holm_adjusted_p"] for k, v in summary["runs"].items()}
    assert adjusted == pytest.approx({"r1": 0.03, "r2": 0.04, "r3": 0.04})
    assert summary["family_wise"]["supported_runs"] == ["r1", "r2", "r3"]
    runs["r2"] = _run(0.3, 0.030, (0.2, 0.2))
    runs["r3"] = _run(0.3, 0.2, (0.1, 0.1))
    summary = build_summary(analyse(BASELINE, runs))
    # 0.03 alone would pass; corrected for three runs (x2 after the smallest) it does not.
    assert summary["family_wise"]["supported_runs"] == ["r1"]
    report = build_comparison_report(BASELINE, [], runs, load_image=None)
    assert "Holm–Bonferroni" in report.markdown and "supports H1 for r1" in report.markdown


def test_holm_is_monotone_and_capped():
    assert holm_adjusted({"a": 0.04, "b": 0.01, "c": 0.03}) == pytest.approx({"b": 0.03, "c": 0.06, "a": 0.06})
    assert holm_adjusted({"a": 0.9, "b": 0.8}) == {"b": 1.0, "a": 1.0}
    assert holm_adjusted({}) == {}


def test_bootstrap_p_value_is_small_when_m1_always_wins_and_large_when_it_never_does():
    better = paired_bootstrap_diff([1] * 30, [5] * 30, ks=(1,), n_samples=200)
    worse = paired_bootstrap_diff([5] * 30, [1] * 30, ks=(1,), n_samples=200)
    assert better["R@1"]["p_value"] == pytest.approx(1 / 201)
    assert worse["R@1"]["p_value"] == 1.0
    # Rank metrics: lower is better, so the same ranks give the mirrored p-value.
    assert better["MeanRank"]["p_value"] == pytest.approx(1 / 201)


def test_a_sweep_gets_a_table_and_a_validation_plot():
    from io import BytesIO

    from PIL import Image

    runs = {"s-r4": _run(0.3, 0.01, (0.2, 0.2)), "s-r8": _run(0.2, 0.2, (0.4, 0.4))}
    sweeps = {"s": [("s-r4", {"lora.r": 4}), ("s-r8", {"lora.r": 8}), ("s-r16", {"lora.r": 16})]}
    report = build_comparison_report(BASELINE, [], runs, load_image=None, sweeps=sweeps)
    assert "## Sweeps" in report.markdown and "| s-r8 | 8 | 0.400 | 0.200 | selected |" in report.markdown
    assert "| s-r16 | 16 | – | – | not run yet |" in report.markdown
    plot = Image.open(BytesIO(report.files["sweep_validation.png"]))
    assert plot.size[0] > 500 and len(set(plot.convert("L").getdata())) > 2
    assert "](sweep_validation.png)" in report.markdown
    assert "sweep_validation.png" not in build_comparison_report(BASELINE, [], runs, load_image=None).files
