"""The deployment's base model: one resolution for every process, and bad state files are clear errors."""

import pytest

from clipfood_assets.deployment import deployment_file, platform_base_model, record_base_model


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("CLIPFOOD_HOME", str(tmp_path / "state"))
    monkeypatch.delenv("CLIPFOOD_BASE_MODEL", raising=False)
    return tmp_path / "state"


def test_environment_then_recorded_then_configured(tmp_path, monkeypatch):
    assert platform_base_model("org/configured").source == "model.name in the experiment config"
    model = tmp_path / "model"
    model.mkdir()
    record_base_model(str(model))
    assert platform_base_model("org/configured").name == str(model)
    monkeypatch.setenv("CLIPFOOD_BASE_MODEL", "  org/from-env ")
    assert platform_base_model("org/configured").describe() == "org/from-env (from $CLIPFOOD_BASE_MODEL)"
    monkeypatch.setenv("CLIPFOOD_BASE_MODEL", "")  # empty is unset, not a model called ""
    assert platform_base_model("org/configured").name == str(model)


def test_recording_keeps_other_settings_and_replaces_atomically(home):
    home.mkdir(parents=True)
    deployment_file().write_text("other: kept\nbase_model: old\n")
    record_base_model("org/new")
    text = deployment_file().read_text()
    assert "other: kept" in text and "org/new" in text and not list(home.glob("*.tmp"))


@pytest.mark.parametrize("content, message", [
    ("base_model: [unclosed\n", "not valid YAML"),
    ("- a\n- list\n", "expected a mapping"),
    ("base_model: 42\n", "expected a mapping with a string 'base_model'"),
])
def test_a_malformed_deployment_file_is_a_clear_error(home, content, message):
    home.mkdir(parents=True)
    deployment_file().write_text(content)
    with pytest.raises(ValueError, match=message) as error:
        platform_base_model("org/configured")
    assert "deployment.yaml" in str(error.value)
    with pytest.raises(ValueError, match="fix or delete it"):
        record_base_model("org/new")
    assert deployment_file().read_text() == content  # what the person wrote is not thrown away
