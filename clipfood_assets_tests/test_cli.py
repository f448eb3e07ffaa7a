"""The `clipfood` command: bad arguments and bad run configs get one clear line, exit code 2."""

import pytest

from clipfood_assets.cli import main


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.delenv("MINIO_ENDPOINT", raising=False)
    monkeypatch.setenv("CLIPFOOD_LAKE_DIR", str(tmp_path / "lake"))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))


def _error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith("clipfood: error: ") and "Traceback" not in err
    return last


def test_synth_rejects_too_few_recipes(capsys):
    assert "at least 2" in _error(capsys, ["synth", "--recipes", "1"])


def test_base_model_rejects_negative_pretraining(capsys, tmp_path):
    assert "--pretrain-steps" in _error(capsys, ["base-model", "--out", str(tmp_path / "m"), "--pretrain-steps", "-1"])


def test_materialize_argument_errors(capsys, tmp_path):
    assert "needs --run" in _error(capsys, ["materialize", "--config", "x.yaml"])
    assert "no such config file" in _error(capsys, ["materialize", "--run", "a", "--config", str(tmp_path / "nope.yaml")])
    assert "invalid experiment run key" in _error(capsys, ["materialize", "--run", "../escape"])


@pytest.mark.parametrize(
    "text, named",
    [
        ("lora:\n  rank: 8\n", "lora.rank"),  # unknown key
        ("training:\n  epochs: many\n", "training.epochs"),  # wrong type
        ("training:\n  learning_rate: -1\n", "training.learning_rate"),  # out of range
        ("- just\n- a list\n", "mapping"),  # not a mapping
        ("lora: [unclosed\n", "YAML"),  # malformed
    ],
)
def test_bad_run_config_fails_before_anything_runs_and_names_the_key(capsys, tmp_path, text, named):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    err = _error(capsys, ["materialize", "--run", "bad", "--config", str(path)])
    assert named in err
    assert not (tmp_path / "lake" / "fine-tuning-zone" / "experiments").exists()


def test_missing_trusted_zone_is_a_clear_error(capsys, tmp_path):
    err = _error(capsys, ["materialize", "--base-model", str(tmp_path / "nowhere")])
    assert "recipes.jsonl" in err


def test_search_needs_a_query(capsys):
    assert "give a text query" in _error(capsys, ["search", "--run", "demo"])
    assert "no such image" in _error(capsys, ["search", "--run", "demo", "--image", "/nonexistent.jpg"])
