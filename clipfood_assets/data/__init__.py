"""Pure data logic of the data zone (no dagster).

trusted: parse recipes.jsonl / image keys / image bytes with quarantine; decode: the one
image decoder (bytes -> upright 8-bit RGB) every path uses; pairs: positive pairs and the
recipe-level split; augment_*: image and text augmentation; negatives: labelled negatives;
checks: data-quality checks returning (passed, details); prepare: the data zone against the
lake (copies by source identity, the refresh guard).
"""
