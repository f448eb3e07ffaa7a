"""Pure data logic of the data zone (no dagster).

trusted: parse recipes.jsonl / image keys / image bytes with quarantine; pairs: positive
pairs and the recipe-level split; augment_*: image and text augmentation; negatives: labelled
negatives; checks: data-quality checks returning (passed, details).
"""
