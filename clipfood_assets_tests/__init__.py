"""The test suite; mirrors the package."""

from pathlib import Path

# The checkout the tests run from (workspace.yaml, docker/, the compose file).
REPO_ROOT = Path(__file__).resolve().parent.parent
