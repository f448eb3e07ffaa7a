"""The Dagster face of the platform: `dagster dev -w workspace.yaml` loads `defs`."""

from clipfood_assets.defs.definitions import build_definitions

defs = build_definitions()
