"""Small helpers that turn results into metadata the Dagster UI can show and plot."""


from typing import Any

import dagster as dg
import pandas as pd

def preview(df: pd.DataFrame, rows: int = 5) -> dg.MetadataValue:
    return dg.MetadataValue.md(df.head(rows).to_markdown(index=False) if len(df) else "_empty_")


def counts(df: pd.DataFrame) -> dict[str, Any]:
    meta: dict[str, Any] = {"rows": len(df)}
    if "recipe_id" in df:
        meta["recipes"] = int(df["recipe_id"].nunique())
    if "image_key" in df:
        meta["images"] = int(df["image_key"].nunique())
    return meta


def rounded(value: Any, digits: int = 3) -> Any:
    """`value` (JSON-like) with every float rounded, for metadata a person reads."""
    if isinstance(value, float):
        return round(value, digits)
    if isinstance(value, dict):
        return {k: rounded(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [rounded(v, digits) for v in value]
    return value


def metric_values(results: dict, suffix: str = "") -> dict[str, float]:
    """Flatten {"metrics": {direction: {metric: value}}} into plottable floats rounded to 3 decimals,
    one number per entry (so the UI plots it over materializations), e.g. `t2i R@1`."""
    short = {"text_to_image": "t2i", "image_to_text": "i2t"}
    out = {}
    for direction, metrics in results.get("metrics", {}).items():
        for name, value in metrics.items():
            out[f"{short.get(direction, direction)} {name}{suffix}"] = round(float(value), 3)
    return out


# Run tags read by the instance (docker/dagster.yaml): the run queue lets one data-zone writer run at
# a time, and run monitoring fails a run that outlives its job's dagster/max_runtime (seconds).
DATA_ZONE_WRITER_TAGS = {"clipfood/writes": "data_zone"}
# Training's concurrency pool: one run at a time per deployment (granularity run, limit 1). The limit
# is set on the instance before the daemon starts (docker-compose.yml, `clipfood dev`): a pool the
# instance has never seen is not limited in the queue's first pass, so two runs queued together on a
# fresh instance would both start.
GPU_POOL = "gpu"
GPU_POOL_LIMIT = 1


def max_runtime(hours: float) -> dict[str, str]:
    """The tag that bounds how long a run of a job may stay STARTED before monitoring fails it."""
    return {"dagster/max_runtime": str(int(hours * 3600))}
