"""CLIP + LoRA fine-tuning on food recipes as Dagster assets."""
