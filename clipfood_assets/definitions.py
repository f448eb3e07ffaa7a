"""What `dagster dev -w workspace.yaml` loads."""

from clipfood_assets.defs.definitions import build_definitions

defs = build_definitions()
