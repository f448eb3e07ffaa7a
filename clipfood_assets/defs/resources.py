"""Resources: the lake (MinIO or local), the compute device, and the experiment settings."""

from pathlib import Path

import dagster as dg
from pydantic import Field

from clipfood_assets.deployment import platform_base_model
from clipfood_assets.lake import Lake, lake_from_settings
from clipfood_assets.modeling.config import load_experiment_config
from clipfood_assets.paths import AUGMENTATION_CONFIG, EXPERIMENT_CONFIG, resolve_project_path
from clipfood_assets.settings import ClipfoodSettings


class LakeResource(dg.ConfigurableResource):
    """MinIO when MINIO_ENDPOINT is set in the environment, else the embedded local lake.

    Credentials are read from the environment when the lake is opened and are never part
    of the resource's config, so they never reach the UI, logs or metadata.
    """

    local_dir: str | None = Field(
        default=None, description="Embedded lake folder (overrides CLIPFOOD_LAKE_DIR) when MinIO is not configured."
    )

    def get_lake(self) -> Lake:
        settings = ClipfoodSettings.from_env()
        if self.local_dir:
            settings = settings.model_copy(update={"lake_dir": Path(self.local_dir)})
        return lake_from_settings(settings)


class ComputeResource(dg.ConfigurableResource):
    """Where training and evaluation run: CUDA when present, CPU otherwise."""

    device: str = Field(default="auto", description="auto | cuda | mps | cpu")
    precision: str = Field(default="auto", description="auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16 | fp16")
    eval_batch_size: int | None = Field(default=None, description="Overrides evaluation.batch_size when set.")
    io_workers: int = Field(default=16, description="Parallel object-storage requests (copies, image reads).")

    def torch_device(self):
        from clipfood_assets.modeling.clip import resolve_device

        return resolve_device(self.device)

    def describe(self) -> str:
        from clipfood_assets.modeling.clip import describe_device

        return describe_device(self.torch_device())


class ExperimentSettings(dg.ConfigurableResource):
    """The platform-wide experiment defaults that every run starts from."""

    experiment_config: str = Field(default=str(EXPERIMENT_CONFIG), description="Base experiment config (YAML).")
    augmentation_config: str = Field(default=str(AUGMENTATION_CONFIG), description="Augmentation config (YAML).")
    base_model: str = Field(
        default="",
        description="The platform's base CLIP (hub id or local folder), shared by M0 and every M1 run. Filled in "
        "when the definitions load, from $CLIPFOOD_BASE_MODEL, else .clipfood/deployment.yaml (written by "
        "`clipfood base-model` / `clipfood demo`), else model.name of the experiment config.",
    )

    def experiment_config_path(self) -> Path:
        return resolve_project_path(self.experiment_config)

    def augmentation_config_path(self) -> Path:
        return resolve_project_path(self.augmentation_config)

    def resolve_base_model(self) -> str:
        """M0 and M1 share this one base model; a local folder is made absolute."""
        if self.base_model:
            return self.base_model
        return platform_base_model(load_experiment_config(self.experiment_config_path()).model.name).name
