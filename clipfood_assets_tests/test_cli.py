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


def test_base_model_use_records_it_for_every_process_and_show_says_where(capsys, tmp_path, monkeypatch):
    from clipfood_assets.definitions import build_definitions

    monkeypatch.setenv("CLIPFOOD_HOME", str(tmp_path / "state"))
    monkeypatch.delenv("CLIPFOOD_BASE_MODEL", raising=False)
    assert main(["base-model", "--show"]) == 0
    assert "openai/clip-vit-base-patch32 (from model.name in the experiment config)" in capsys.readouterr().out
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text("{}")
    assert main(["base-model", "--use", str(model)]) == 0
    capsys.readouterr()
    assert main(["base-model", "--show"]) == 0
    assert f"{model} (from {tmp_path / 'state' / 'deployment.yaml'})" in capsys.readouterr().out
    # What a newly started `dagster dev` (or run worker) builds shows the same model in the UI.
    settings = build_definitions().resources["settings"]
    assert settings.base_model == str(model)
    monkeypatch.setenv("CLIPFOOD_BASE_MODEL", "org/other")
    assert build_definitions().resources["settings"].base_model == "org/other"


def test_base_model_use_refuses_a_folder_that_is_no_model(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("CLIPFOOD_HOME", str(tmp_path / "state"))
    (tmp_path / "empty").mkdir()
    assert "config.json missing" in _error(capsys, ["base-model", "--use", str(tmp_path / "empty")])
    assert not (tmp_path / "state" / "deployment.yaml").exists()


def test_an_unreachable_hub_model_fails_with_the_products_message_first(capsys, tmp_path, monkeypatch):
    import huggingface_hub.constants

    from clipfood_assets.cli import write_synthetic_zone
    from clipfood_assets.lake import LocalLake

    monkeypatch.setenv("CLIPFOOD_HOME", str(tmp_path / "state"))
    monkeypatch.delenv("CLIPFOOD_BASE_MODEL", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    write_synthetic_zone(LocalLake(tmp_path / "lake"), n_recipes=6, seed=1)
    err = _error(capsys, ["materialize"])
    # Which model, why, and how to set it come first; the library's own error only as the cause.
    assert "failed in preprocessed_images: Could not load CLIP model 'openai/clip-vit-base-patch32'" in err
    assert err.index("clipfood base-model --use") < err.index("(cause:")


def test_every_argument_of_every_command_says_what_it_is():
    import argparse

    from clipfood_assets.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    undocumented = [f"{name} {action.dest}" for name, sub in [("clipfood", parser), *commands.choices.items()]
                    for action in sub._actions
                    if not isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)) and not action.help]
    assert undocumented == []


def test_version_and_python_dash_m():
    import subprocess
    import sys
    from importlib.metadata import version

    done = subprocess.run([sys.executable, "-m", "clipfood_assets", "--version"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == f"clipfood {version('clipfood_assets')}"
    helped = subprocess.run([sys.executable, "-m", "clipfood_assets", "--help"], capture_output=True, text=True,
                            timeout=120)
    assert helped.returncode == 0 and "search" in helped.stdout
