"""Resources: the lake (MinIO or local, chosen per environment), the compute device, and the experiment settings."""

from pathlib import Path

import dagster as dg
from pydantic import Field

from clipfood_assets.deployment import platform_base_model
from clipfood_assets.lake import Lake, LakeError, LocalLake, lake_from_settings, minio_lake
from clipfood_assets.modeling.config import load_experiment_config
from clipfood_assets.paths import AUGMENTATION_CONFIG, EXPERIMENT_CONFIG, resolve_user_path
from clipfood_assets.settings import ACCESS_KEY_ENVS, SECRET_KEY_ENVS, ClipfoodSettings, variable_in_use


class LakeResource(dg.ConfigurableResource):
    """The lake: MinIO (any S3 server) or the embedded local lake (a folder).

    The definitions choose the backend from the environment when they are built (see
    ``lake_resource``), so *Deployment → Resources → lake* shows which one is active and where.
    The MinIO keys are ``dg.EnvVar`` references: the UI shows the variables' names, never their
    values, and Dagster reads them when a run opens the lake. Without a backend (``LakeResource()``,
    what tests and scripts build) the environment decides each time the lake is opened.
    """

    backend: str | None = Field(
        default=None,
        description="minio (MINIO_ENDPOINT was set when the definitions were built) or local (the embedded lake). "
        "Unset: chosen from the environment each time the lake is opened.",
    )
    endpoint: str | None = Field(default=None, description="MinIO / S3 server, host:port (backend minio).")
    secure: bool = Field(
        default=False, description="TLS to the MinIO endpoint (MINIO_SECURE, or an https:// endpoint)."
    )
    region: str | None = Field(default=None, description="S3 region (MINIO_REGION), if the server needs one.")
    access_key: str | None = Field(
        default=None, description="MinIO access key, from the environment (MINIO_ACCESS_KEY or MINIO_USER)."
    )
    secret_key: str | None = Field(
        default=None, description="MinIO secret key, from the environment (MINIO_SECRET_KEY or MINIO_PASSWORD)."
    )
    local_dir: str | None = Field(
        default=None, description="Embedded lake folder (backend local; overrides CLIPFOOD_LAKE_DIR)."
    )

    def get_lake(self) -> Lake:
        if self.backend == "minio":
            return minio_lake(self.endpoint or "", self.access_key, self.secret_key, secure=self.secure,
                              region=self.region)
        settings = ClipfoodSettings.from_env()
        if self.local_dir:
            settings = settings.model_copy(update={"lake_dir": Path(self.local_dir)})
        if self.backend == "local":
            return LocalLake(settings.lake_dir)
        if self.backend is None:
            return lake_from_settings(settings)
        raise LakeError(f"lake backend {self.backend!r}: expected minio or local")


def _minio_key(variables: tuple[str, ...]) -> str | None:
    """An EnvVar of the variable that holds the key (the standard name first), or None when none does."""
    variable = variable_in_use(variables)
    return dg.EnvVar(variable) if variable else None


# One lake resource per backend, as a deployment's resources (hooli's pattern); the environment
# picks the backend when the definitions are built.
_LAKE_BY_BACKEND = {
    "minio": lambda settings, lake_dir: LakeResource(
        backend="minio",
        endpoint=settings.minio_endpoint,
        secure=settings.minio_tls,
        region=settings.minio_region,
        access_key=_minio_key(ACCESS_KEY_ENVS),
        secret_key=_minio_key(SECRET_KEY_ENVS),
    ),
    "local": lambda settings, lake_dir: LakeResource(
        backend="local", local_dir=str(Path(lake_dir) if lake_dir else settings.lake_dir)
    ),
}


def lake_resource(lake_dir: str | None = None) -> LakeResource:
    """The lake of this environment: MinIO when MINIO_ENDPOINT is set (``lake_dir`` is then unused),
    else the embedded lake in ``lake_dir`` or CLIPFOOD_LAKE_DIR."""
    settings = ClipfoodSettings.from_env()
    return _LAKE_BY_BACKEND[settings.lake_backend](settings, lake_dir)


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
        return resolve_user_path(self.experiment_config)

    def augmentation_config_path(self) -> Path:
        return resolve_user_path(self.augmentation_config)

    def resolve_base_model(self) -> str:
        """M0 and M1 share this one base model; a local folder is made absolute."""
        if self.base_model:
            return self.base_model
        return platform_base_model(load_experiment_config(self.experiment_config_path()).model.name).name
