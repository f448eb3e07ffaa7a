"""The code location: every definition under `clipfood_assets/defs/` (autoloaded, as `dg` projects
are) bound to this environment's resources. What `dagster dev -w workspace.yaml`, `dg` (`[tool.dg]`
in pyproject.toml), the deployment's code server, the CLI and the tests load."""

from pathlib import Path

import dagster as dg

import clipfood_assets
from clipfood_assets.defs.io_manager import ZoneIOManager
from clipfood_assets.defs.resources import ComputeResource, ExperimentSettings, lake_resource


def load_defs_folder() -> dg.Definitions:
    """Every asset, check, job and sensor of `clipfood_assets/defs/`, as `dg.load_from_defs_folder`
    loads them. From the module rather than through pyproject.toml, which an installed wheel (the
    deployment's image) does not have."""
    import clipfood_assets.defs

    package_dir = Path(clipfood_assets.__file__).parent
    return dg.ComponentTree.from_module(defs_module=clipfood_assets.defs, project_root=package_dir.parent).build_defs()


def build_resources(lake_dir: str | None = None, base_model: str = "", device: str = "auto") -> dict:
    """The resources every process builds alike, for this environment: the lake backend is chosen and
    the base model resolved here, so the UI shows both."""
    lake = lake_resource(lake_dir)
    settings = ExperimentSettings()
    return {
        "lake": lake,
        "io_manager": ZoneIOManager(lake=lake),
        "compute": ComputeResource(device=device),
        "settings": ExperimentSettings(base_model=base_model or settings.resolve_base_model()),
    }


def build_definitions(**resource_overrides) -> dg.Definitions:
    """The defs folder with resources built by `build_resources(**resource_overrides)`."""
    return dg.Definitions.merge(load_defs_folder(), dg.Definitions(resources=build_resources(**resource_overrides)))


@dg.definitions
def defs() -> dg.Definitions:
    return build_definitions()
