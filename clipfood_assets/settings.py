"""The environment the platform reads, in one place: every ``CLIPFOOD_*``, ``MINIO_*`` (and
``DAGSTER_HOME``) variable, its default and its meaning.

Read when a value is needed (``ClipfoodSettings.from_env()``), never frozen at import: the CLI
sets variables for the processes it starts, and tests change them. Pure: imports neither
dagster nor anything of this package, so lake/, data/ and modeling/ can all use it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_core import PydanticUseDefault
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

HOME_ENV = "CLIPFOOD_HOME"
LAKE_DIR_ENV = "CLIPFOOD_LAKE_DIR"
BASE_MODEL_ENV = "CLIPFOOD_BASE_MODEL"
CACHE_DIR_ENV = "CLIPFOOD_CACHE_DIR"
THREADS_ENV = "CLIPFOOD_TORCH_THREADS"
CHROMA_URL_ENV = "CLIPFOOD_CHROMA_URL"
CHROMA_DIR_ENV = "CLIPFOOD_CHROMA_DIR"
CHROMA_TIMEOUT_ENV = "CLIPFOOD_CHROMA_TIMEOUT"
DAGSTER_HOME_ENV = "DAGSTER_HOME"
MINIO_ENDPOINT_ENV = "MINIO_ENDPOINT"
# The original notebooks' MINIO_USER / MINIO_PASSWORD are accepted after the standard names.
ACCESS_KEY_ENVS = ("MINIO_ACCESS_KEY", "MINIO_USER")
SECRET_KEY_ENVS = ("MINIO_SECRET_KEY", "MINIO_PASSWORD")
MINIO_SECURE_ENV = "MINIO_SECURE"
MINIO_REGION_ENV = "MINIO_REGION"
SENSOR_SECONDS_ENV = "CLIPFOOD_SENSOR_SECONDS_PER_TICK"
SENSOR_OBJECTS_ENV = "CLIPFOOD_SENSOR_OBJECTS_PER_TICK"
SENSOR_SQS_URL_ENV = "CLIPFOOD_SENSOR_SQS_URL"
SHARDS_ENV = "CLIPFOOD_SHARDS"
# Shards of the data plane (image copy, packed store, embeddings): few, so a small zone is not split into
# steps that each cost more to start (a process, ~3 s) than their work; 13 million photos want ~64-256.
DEFAULT_SHARDS = 4


def _stripped(value):
    """Surrounding blanks dropped; blank is unset."""
    if isinstance(value, str):
        value = value.strip()
        return value or None
    return value


def _positive_int(value):
    """A thread count: a positive integer, anything else is unset (the next source decides)."""
    value = (value or "").strip() if isinstance(value, str) else value
    if isinstance(value, str):
        return int(value) if value.isdigit() and int(value) > 0 else None
    return value if isinstance(value, int) and value > 0 else None


class ClipfoodSettings(BaseSettings):
    """What the environment says; each field's alias is the variable it comes from.

    Secrets are ``SecretStr``: their repr never shows the value.
    """

    model_config = SettingsConfigDict(case_sensitive=True, env_ignore_empty=True, extra="ignore")

    home: Path = Field(
        default_factory=lambda: Path.cwd() / ".clipfood", validation_alias=HOME_ENV,
        description="The state folder (lake, base model, Dagster home, caches); default `.clipfood/` in the "
        "working directory.",
    )
    lake_dir: Path = Field(
        default_factory=lambda data: data["home"] / "lake", validation_alias=LAKE_DIR_ENV,
        description="Folder of the embedded lake, used when MINIO_ENDPOINT is unset; default `<home>/lake`.",
    )
    dagster_home: Path = Field(
        default_factory=lambda data: data["home"] / "dagster_home", validation_alias=DAGSTER_HOME_ENV,
        description="Dagster instance folder; the CLI defaults it to `<home>/dagster_home`.",
    )
    base_model: str | None = Field(
        default=None, validation_alias=BASE_MODEL_ENV,
        description="Overrides the platform's base CLIP (hub id or local folder) for every process that inherits it.",
    )
    cache_dir: Path = Field(
        default_factory=lambda data: data["home"] / "cache", validation_alias=CACHE_DIR_ENV,
        description="Folder of local caches of preprocessed images; default `<home>/cache`.",
    )
    torch_threads: int | None = Field(
        default=None, validation_alias=THREADS_ENV,
        description="torch CPU threads (a positive integer; default OMP_NUM_THREADS, else every core).",
    )
    omp_num_threads: int | None = Field(default=None, validation_alias="OMP_NUM_THREADS")
    chroma_url: str | None = Field(
        default=None, validation_alias=CHROMA_URL_ENV, description="An HTTP Chroma server for the exploitation index."
    )
    chroma_timeout_s: float = Field(
        default=30.0, validation_alias=CHROMA_TIMEOUT_ENV,
        description="Seconds the Chroma server may take to answer any request (connecting: at most 5 of them) "
        "before the index is reported unavailable; not a positive number: the default, 30.",
    )
    chroma_dir: Path = Field(
        default_factory=lambda data: data["home"] / "chroma", validation_alias=CHROMA_DIR_ENV,
        description="Folder of the embedded Chroma index (when no CLIPFOOD_CHROMA_URL); default `<home>/chroma`.",
    )
    minio_endpoint: str | None = Field(
        default=None, validation_alias=MINIO_ENDPOINT_ENV,
        description="`host:port` (or `http(s)://host:port`) of MinIO / any S3 server. Unset: the embedded local lake.",
    )
    minio_access_key: SecretStr | None = Field(default=None, validation_alias=AliasChoices(*ACCESS_KEY_ENVS))
    minio_secret_key: SecretStr | None = Field(default=None, validation_alias=AliasChoices(*SECRET_KEY_ENVS))
    minio_secure: bool = Field(
        default=False, validation_alias=MINIO_SECURE_ENV,
        description="TLS to MinIO (1/true/yes/on); an `https://` endpoint implies it.",
    )
    minio_region: str | None = Field(default=None, validation_alias=MINIO_REGION_ENV)
    sensor_seconds_per_tick: float = Field(
        default=3.0, validation_alias=SENSOR_SECONDS_ENV,
        description="Seconds the trusted-zone sensor lists per tick before it pauses its pass over the zone "
        "(resumed next tick), half of them at least after the listing's first object; not a positive number: "
        "the default, 3.",
    )
    sensor_objects_per_tick: int = Field(
        default=200_000, validation_alias=SENSOR_OBJECTS_ENV,
        description="Objects the trusted-zone sensor lists per tick at most (a multiple of 1,000 keeps S3 pages "
        "whole); not a positive integer: the default, 200,000.",
    )
    sensor_sqs_url: str | None = Field(
        default=None, validation_alias=SENSOR_SQS_URL_ENV,
        description="An SQS queue URL the trusted zone's bucket notifications go to (s3:ObjectCreated:*, "
        "s3:ObjectRemoved:*): the sensor reads changes from it first each tick. Unset: listing only.",
    )

    shards: int = Field(
        default=DEFAULT_SHARDS, validation_alias=SHARDS_ENV,
        description="Shards of the data plane's image stages (copy, packed store, exploitation embeddings) by a "
        "stable hash of the image key: each a step of its own, run in parallel and retried alone (1..4096); not "
        "a positive integer: the default, 4. Changing it plans every shard anew.",
    )

    @field_validator("base_model", "chroma_url", "minio_endpoint", "minio_region", "sensor_sqs_url", mode="before")
    @classmethod
    def _strip(cls, value):
        return _stripped(value)

    @field_validator("torch_threads", "omp_num_threads", mode="before")
    @classmethod
    def _threads(cls, value):
        return _positive_int(value)

    @field_validator("chroma_timeout_s", "sensor_seconds_per_tick", mode="before")
    @classmethod
    def _seconds(cls, value):
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            raise PydanticUseDefault() from None
        if not 0 < seconds < float("inf"):
            raise PydanticUseDefault()
        return seconds

    @field_validator("shards", mode="before")
    @classmethod
    def _shards(cls, value):
        count = _positive_int(value)
        if count is None or count > 4096:
            raise PydanticUseDefault()
        return count

    @field_validator("sensor_objects_per_tick", mode="before")
    @classmethod
    def _count(cls, value):
        count = _positive_int(value)
        if count is None:
            raise PydanticUseDefault()
        return count

    @field_validator("minio_secure", mode="before")
    @classmethod
    def _truthy(cls, value) -> bool:
        if isinstance(value, bool):
            return value
        return str(value or "").strip().lower() in ("1", "true", "yes", "on")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ClipfoodSettings:
        """The settings of ``env`` (default: this process's environment, read now). An explicit
        mapping is read alone: the process environment does not fill in what it lacks."""
        if env is None:
            return cls()
        return _MappingSettings(**{name: value for name, value in env.items()
                                   if name in _VARIABLES and value != ""})

    @property
    def lake_backend(self) -> str:
        """``minio`` when MINIO_ENDPOINT is set, else ``local`` (the embedded lake)."""
        return "minio" if self.minio_endpoint else "local"

    @property
    def minio_tls(self) -> bool:
        return self.minio_secure or bool(self.minio_endpoint and self.minio_endpoint.startswith("https://"))

    @property
    def cpu_threads(self) -> int | None:
        """torch's CPU threads when set: CLIPFOOD_TORCH_THREADS, else OMP_NUM_THREADS."""
        return self.torch_threads or self.omp_num_threads


class _MappingSettings(ClipfoodSettings):
    """Settings from the mapping given to the constructor only (no process environment, no files)."""

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings: PydanticBaseSettingsSource, **sources):
        return (init_settings,)


def _variables() -> frozenset[str]:
    names = set()
    for field in ClipfoodSettings.model_fields.values():
        alias = field.validation_alias
        names.update(alias.choices if isinstance(alias, AliasChoices) else [alias])
    return frozenset(names)


_VARIABLES = _variables()


def variable_in_use(names: tuple[str, ...], env: Mapping[str, str] | None = None) -> str | None:
    """The first of ``names`` set (non-empty) in ``env`` (default: the process environment): the
    variable a value with aliases was taken from, e.g. MINIO_USER for the access key."""
    env = os.environ if env is None else env
    return next((name for name in names if env.get(name)), None)
