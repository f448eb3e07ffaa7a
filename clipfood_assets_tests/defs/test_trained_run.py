"""After a real fine-tuning run on the synthetic zone: search finds the right dish, the report shows it."""

import io

import dagster as dg
import pandas as pd
import pytest
from PIL import Image

from clipfood_assets.cli import DEMO_RUN_CONFIG, main, materialize, write_synthetic_zone
from clipfood_assets.lake import LocalLake
from clipfood_assets.lake.layout import FINE_TUNING_ZONE, REPORT_PREFIX, TEST_PAIRS_KEY, TRAIN_PAIRS_KEY
from clipfood_assets.synthetic import dish_components

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from clipfood_assets.modeling.base_model import DEFAULT_PRETRAIN_STEPS, build_base_model

    root = tmp_path_factory.mktemp("trained")
    mp = pytest.MonkeyPatch()
    mp.delenv("MINIO_ENDPOINT", raising=False)
    mp.setenv("CLIPFOOD_LAKE_DIR", str(root / "lake"))
    lake = LocalLake(root / "lake")
    write_synthetic_zone(lake, n_recipes=80, seed=42)
    base = build_base_model(root / "base", seed=0, pretrain_steps=DEFAULT_PRETRAIN_STEPS)
    materialize("demo", DEMO_RUN_CONFIG, base_model=str(base), instance=dg.DagsterInstance.ephemeral())
    yield lake
    mp.undo()


def _dish(title: str) -> str:
    return dish_components(title).dish.name


def test_search_returns_the_right_dish(trained, capsys):
    lake = trained
    train = pd.read_csv(io.BytesIO(lake.get_bytes(FINE_TUNING_ZONE, TRAIN_PAIRS_KEY)))
    titles = sorted(set(train["caption"]))[:8]
    right = 0
    for title in titles:
        assert main(["search", title, "--run", "demo", "--k", "3"]) == 0
        lines = capsys.readouterr().out.strip().splitlines()
        assert len(lines) == 3 and lines[0].startswith("1. ")
        top_caption = lines[0].split("  ", 2)[2]
        right += _dish(top_caption) == _dish(title)
    # Chance of a matching dish among ~25 dish types is a few percent; the tuned model gets most.
    assert right >= 6, f"only {right}/8 top hits were the queried dish"


def test_search_by_image_and_bad_arguments(trained, capsys, tmp_path):
    lake = trained
    test = pd.read_csv(io.BytesIO(lake.get_bytes(FINE_TUNING_ZONE, TEST_PAIRS_KEY)))
    photo = tmp_path / "query.jpg"
    photo.write_bytes(lake.get_bytes(FINE_TUNING_ZONE, test["image_key"].iloc[0]))
    assert main(["search", "--image", str(photo), "--run", "demo"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 5
    assert main(["search", "--run", "demo"]) == 2
    assert "give a text query" in capsys.readouterr().err
    assert main(["search", "soup", "--run", "no-such-run"]) == 2
    assert "incomplete or was never written" in capsys.readouterr().err


def test_report_pngs_are_real_plots(trained):
    lake = trained
    for name in ("learning_curves.png", "metric_bars.png", "efficiency.png", "retrieval_examples.png"):
        image = Image.open(io.BytesIO(lake.get_bytes(FINE_TUNING_ZONE, REPORT_PREFIX + name)))
        image.load()
        assert image.width >= 400 and image.height >= 200, name
        assert len(set(image.convert("L").getdata())) > 10, f"{name} looks blank"
    report = lake.get_bytes(FINE_TUNING_ZONE, REPORT_PREFIX + "report.md").decode()
    assert "demo" in report and "H1" in report
