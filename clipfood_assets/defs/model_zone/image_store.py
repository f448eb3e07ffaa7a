"""The packed, preprocessed image store of the fine-tuning zone, and how the model assets open it."""


from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import dagster as dg

from clipfood_assets.defs.resources import ComputeResource, ExperimentSettings, LakeResource
from clipfood_assets.lake.base import Lake
from clipfood_assets.lake.layout import (
    AUGMENTED_IMAGES_PREFIX,
    FINE_TUNING_ZONE,
    IMAGES_PREFIX,
    PREPROCESSED_IMAGES_PREFIX,
)

GROUP = "model_zone"
# Failed images listed in the metadata table (all of them are in failures.csv).
_FAILURES_SHOWN = 20


@dg.asset(
    group_name=GROUP,
    deps=["fine_tuning_images", "augmented_training_pairs"],
    metadata={"zone": FINE_TUNING_ZONE, "zone_prefix": PREPROCESSED_IMAGES_PREFIX},
    description=f"Every image under {FINE_TUNING_ZONE}/{IMAGES_PREFIX} and {AUGMENTED_IMAGES_PREFIX} decoded once "
    "with the base model's preprocessing (resize, centre crop) into uint8 [N, 3, H, W] .npy shards plus index.csv, "
    f"under {PREPROCESSED_IMAGES_PREFIX}<signature digest>/. Updated incrementally (only new or changed images are "
    "decoded); training and evaluation read pixels from it instead of decoding JPEGs. Images that cannot be decoded "
    "are listed in failures.csv and the metadata.",
    kinds={"numpy", "pillow"},
    code_version="1",
)
def preprocessed_images(
    context: dg.AssetExecutionContext,
    lake: LakeResource,
    compute: ComputeResource,
    settings: ExperimentSettings,
) -> dg.MaterializeResult:
    from clipfood_assets.modeling.clip import load_processor
    from clipfood_assets.modeling.image_store import update_image_store

    base_model = settings.resolve_base_model()
    processor = load_processor(base_model)
    device = compute.torch_device()
    reported = {"next": 0}

    def progress(done: int, total: int) -> None:
        if done >= reported["next"] or done == total:
            context.log.info(f"decoded {done}/{total} images")
            reported["next"] = done + max(1, total // 10)

    result = update_image_store(lake.get_lake(), processor, device=device, io_workers=compute.io_workers,
                                progress=progress)
    by_reason = result.failures_by_reason()
    if result.failures:
        context.log.warning(f"{len(result.failures)} image(s) could not be decoded ({by_reason}); "
                            "they are left out of the store, see failures.csv")
    failed = [{"image_key": f.key, "reason": f.reason, "detail": f.detail[:120]}
              for f in result.failures[:_FAILURES_SHOWN]]
    return dg.MaterializeResult(
        metadata={
            "uri": dg.MetadataValue.path(result.uri),
            "signature digest": result.digest,
            "images": result.images,
            "new": result.new,
            "changed": result.changed,
            "reused": result.reused,
            "removed": result.removed,
            "moved by compaction": result.moved,
            "shards": result.shards,
            "shards written": len(result.shards_written),
            "size_bytes": result.bytes,
            "bytes written": result.bytes_written,
            "decode img/s": round(result.decode_images_per_s, 1),
            "decoder": result.decoder,
            "failures": len(result.failures),
            "failures by reason": dg.MetadataValue.json(by_reason),
            "failed images": dg.MetadataValue.md(_table(failed) if failed else "_none_"),
            "base model": base_model,
            "signature": dg.MetadataValue.json(result.signature),
        }
    )


def _table(rows: list[dict]) -> str:
    header = "| image | reason | detail |\n|---|---|---|\n"
    cell = lambda text: str(text).replace("|", "\\|").replace("\n", " ")
    return header + "".join(f"| {cell(r['image_key'])} | {r['reason']} | {cell(r['detail'])} |\n" for r in rows)


@contextmanager
def opened_images(context, zone_lake: Lake, processor, keys: Sequence[str]) -> Iterator:
    """What the model assets pass as ``images``: the packed store of ``processor``'s preprocessing, or,
    when that store is missing or lacks some of ``keys`` (another base model's run, a store not rebuilt
    since the data zone changed), the JPEG loader, with a warning. The store is closed on exit."""
    from clipfood_assets.modeling.image_store import ImageStoreError, PackedImageStore

    def loader(key: str) -> bytes:
        return zone_lake.get_bytes(FINE_TUNING_ZONE, key)

    try:
        images = PackedImageStore.open(zone_lake, processor)
    except (ImageStoreError, ValueError) as exc:
        context.log.warning(f"no preprocessed images to read ({exc}); decoding the JPEGs instead")
        yield loader
        return
    try:
        missing = sorted({k for k in keys if k not in images})
        if missing:
            context.log.warning(f"{len(missing)} image(s) are not in {images.uri} (e.g. {missing[0]!r}); "
                                "decoding the JPEGs instead: materialize preprocessed_images")
            yield loader
        else:
            context.log.info(f"reading pixels from {images!r}")
            yield images
    finally:
        images.close()
