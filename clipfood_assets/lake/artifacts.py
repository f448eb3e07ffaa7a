"""Multi-file artifacts (adapters, results, reports) written under a prefix, manifest last.

A reader trusts an artifact only when its manifest exists and every file it lists
is present with the recorded size, so a half-written artifact is never read as complete.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from clipfood_assets.lake.base import Lake, LakeError, ObjectNotFound, validate_key
from clipfood_assets.lake.tables import read_table, write_table

MANIFEST_SUFFIX = ".manifest.json"


class IncompleteArtifact(LakeError):
    """The manifest is missing or names a file that is missing or has the wrong size."""


def manifest_key(prefix: str, name: str) -> str:
    return f"{prefix}_{name}{MANIFEST_SUFFIX}"


def encode(name: str, value: Any) -> tuple[bytes, str]:
    """Plain formats only: CSV, JSON, YAML, text, bytes. Never pickle."""
    if isinstance(value, pd.DataFrame):
        return write_table(value), "text/csv"
    if isinstance(value, (bytes, bytearray)):
        return bytes(value), _content_type(name)
    if isinstance(value, str):
        return value.encode("utf-8"), _content_type(name)
    if name.endswith((".yaml", ".yml")):
        return yaml.safe_dump(value, sort_keys=False, allow_unicode=True).encode("utf-8"), "application/yaml"
    if name.endswith(".json"):
        return json.dumps(value, indent=2, ensure_ascii=False, default=_json_default).encode("utf-8"), "application/json"
    raise TypeError(f"cannot store {type(value).__name__} as {name!r}: use a DataFrame, dict/list, str or bytes")


def decode(name: str, data: bytes) -> Any:
    if name.endswith(".csv"):
        return read_table(data)
    if name.endswith(".json"):
        return json.loads(data)
    if name.endswith((".yaml", ".yml")):
        return yaml.safe_load(data)
    if name.endswith((".md", ".txt")):
        return data.decode("utf-8")
    return data


def _json_default(value: Any) -> Any:
    # numpy scalars and arrays show up in metrics; store them as plain numbers.
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def _content_type(name: str) -> str:
    for suffix, ctype in ((".png", "image/png"), (".jpg", "image/jpeg"), (".md", "text/markdown"),
                          (".json", "application/json"), (".safetensors", "application/octet-stream")):
        if name.endswith(suffix):
            return ctype
    return "application/octet-stream"


@dataclass
class Bundle:
    """Files to write under one prefix: name -> DataFrame | dict | list | str | bytes | local Path.

    A Path to a directory is uploaded recursively under `name/`.
    """

    files: Mapping[str, Any]
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class StoredBundle:
    """A complete artifact in the lake, read lazily file by file."""

    lake: Lake
    bucket: str
    prefix: str
    manifest: dict[str, Any]

    @property
    def names(self) -> list[str]:
        return [f["name"] for f in self.manifest["files"]]

    def read(self, name: str) -> Any:
        if name not in self.names:
            raise KeyError(f"{name!r} is not part of {self.lake.uri(self.bucket, self.prefix)}")
        return decode(name, self.lake.get_bytes(self.bucket, self.prefix + name))

    def download(self, folder: str, dest: Path) -> Path:
        """Fetch every file under `folder/` (e.g. adapters) into dest."""
        dest = Path(dest)
        for name in self.names:
            if name.startswith(folder.rstrip("/") + "/"):
                self.lake.get_file(self.bucket, self.prefix + name, dest / name[len(folder.rstrip("/")) + 1 :])
        return dest


def write_bundle(lake: Lake, bucket: str, prefix: str, artifact: str, bundle: Bundle) -> dict[str, Any]:
    """Write every file, then the manifest; returns the manifest."""
    prefix = prefix if prefix.endswith("/") else prefix + "/"
    written = []
    for name, value in bundle.files.items():
        if isinstance(value, Path) and value.is_dir():
            for path in sorted(p for p in value.rglob("*") if p.is_file()):
                rel = f"{name}/{path.relative_to(value).as_posix()}"
                info = lake.put_file(bucket, validate_key(prefix + rel), path)
                written.append({"name": rel, "size": path.stat().st_size, "etag": info.etag})
        elif isinstance(value, Path):
            info = lake.put_file(bucket, validate_key(prefix + name), value)
            written.append({"name": name, "size": value.stat().st_size, "etag": info.etag})
        else:
            data, ctype = encode(name, value)
            info = lake.put_bytes(bucket, validate_key(prefix + name), data, ctype)
            written.append({"name": name, "size": len(data), "etag": info.etag})
    return write_manifest(lake, bucket, prefix, artifact, written, bundle.metadata)


def write_manifest(
    lake: Lake, bucket: str, prefix: str, artifact: str, files: list[dict[str, Any]], metadata: dict[str, Any]
) -> dict[str, Any]:
    """Write the manifest of files already written under ``prefix`` (each ``{"name", "size", "etag"}``):
    the commit point of an artifact whose files were written some other way (e.g. incrementally)."""
    prefix = prefix if prefix.endswith("/") else prefix + "/"
    manifest = {
        "artifact": artifact,
        "prefix": prefix,
        "written_at": time.time(),
        "files": list(files),
        "metadata": metadata,
    }
    data, ctype = encode("manifest.json", manifest)
    lake.put_bytes(bucket, manifest_key(prefix, artifact), data, ctype)
    return manifest


def read_bundle(lake: Lake, bucket: str, prefix: str, artifact: str) -> StoredBundle:
    prefix = prefix if prefix.endswith("/") else prefix + "/"
    key = manifest_key(prefix, artifact)
    try:
        manifest = json.loads(lake.get_bytes(bucket, key))
    except ObjectNotFound:
        raise IncompleteArtifact(
            f"{artifact} at {lake.uri(bucket, prefix)} is incomplete or was never written (no manifest {key})"
        ) from None
    for entry in manifest["files"]:
        try:
            size = lake.stat(bucket, prefix + entry["name"]).size
        except ObjectNotFound:
            raise IncompleteArtifact(f"{artifact}: {lake.uri(bucket, prefix + entry['name'])} is missing") from None
        if size != entry["size"]:
            raise IncompleteArtifact(
                f"{artifact}: {lake.uri(bucket, prefix + entry['name'])} has {size} bytes, manifest says {entry['size']}"
            )
    return StoredBundle(lake, bucket, prefix, manifest)
