"""Multi-file artifacts (adapters, results, reports) written under a prefix, manifest last.

A rewrite first removes the old manifest, then writes the files in place (their names are the
original notebooks'), then the new manifest, which records each file's size, ETag and sha256. A
reader trusts an artifact only when its manifest exists and every file it lists is present with
the recorded size and content (the ETag as recorded, else the sha256), and every read checks the
sha256 of the bytes it got: a reader sees the whole old artifact or the whole new one, never a
mix, even when a rewrite killed half-way kept every file's size. Manifests written before
content hashes were recorded are checked by size only.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from clipfood_assets.lake.base import (
    Lake,
    LakeError,
    ObjectNotFound,
    object_content_type,
    validate_key,
)
from clipfood_assets.lake.tables import read_table, write_table, write_table_package

MANIFEST_SUFFIX = ".manifest.json"


class IncompleteArtifact(LakeError):
    """The manifest is missing or names a file that is missing or whose size or content differs."""


def manifest_key(prefix: str, name: str) -> str:
    return f"{prefix}_{name}{MANIFEST_SUFFIX}"


def encode(name: str, value: Any) -> tuple[bytes, str]:
    """Plain formats only: CSV, JSON, YAML, text, bytes. Never pickle."""
    if isinstance(value, pd.DataFrame):
        return write_table(value), object_content_type(name, "text/csv")
    if isinstance(value, (bytes, bytearray)):
        return bytes(value), object_content_type(name)
    if isinstance(value, str):
        return value.encode("utf-8"), object_content_type(name)
    if name.endswith((".yaml", ".yml")):
        return yaml.safe_dump(value, sort_keys=False, allow_unicode=True).encode("utf-8"), object_content_type(name)
    if name.endswith(".json"):
        data = json.dumps(value, indent=2, ensure_ascii=False, default=_json_default).encode("utf-8")
        return data, object_content_type(name)
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


@dataclass
class Bundle:
    """Files to write under one prefix: name -> DataFrame | dict | list | str | bytes | local Path.

    A Path to a directory is uploaded recursively under `name/`.
    """

    files: Mapping[str, Any]
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class StoredBundle:
    """A complete artifact in the lake, read lazily file by file, each checked against the manifest."""

    lake: Lake
    bucket: str
    prefix: str
    manifest: dict[str, Any]

    @property
    def names(self) -> list[str]:
        return [f["name"] for f in self.manifest["files"]]

    def _entry(self, name: str) -> dict[str, Any]:
        for entry in self.manifest["files"]:
            if entry["name"] == name:
                return entry
        raise KeyError(f"{name!r} is not part of {self.lake.uri(self.bucket, self.prefix)}")

    def read(self, name: str) -> Any:
        """The file decoded by its suffix (see :func:`decode`); KeyError for a name the manifest lacks,
        IncompleteArtifact when its bytes are not those the manifest records (rewritten since it was read)."""
        entry = self._entry(name)
        data = self.lake.get_bytes(self.bucket, self.prefix + name)
        _check_content(self.lake, self.bucket, self.prefix, self.manifest["artifact"], entry,
                       len(data), hashlib.sha256(data).hexdigest())
        return decode(name, data)

    def download(self, folder: str, dest: Path) -> Path:
        """Fetch every file under `folder/` (e.g. adapters) into dest; returns dest.

        Raises IncompleteArtifact (the file that differs removed from dest) when a file's bytes are
        not those the manifest records: dest then holds no usable artifact.
        """
        dest = Path(dest)
        folder = folder.rstrip("/") + "/"
        for entry in self.manifest["files"]:
            name = entry["name"]
            if name.startswith(folder):
                path = self.lake.get_file(self.bucket, self.prefix + name, dest / name[len(folder):])
                try:
                    _check_content(self.lake, self.bucket, self.prefix, self.manifest["artifact"], entry,
                                   path.stat().st_size, _sha256_file(path))
                except IncompleteArtifact:
                    path.unlink()
                    raise
        return dest


def _sha256_file(path: Path) -> str:
    with open(path, "rb") as stream:
        return hashlib.file_digest(stream, "sha256").hexdigest()


def _check_content(lake: Lake, bucket: str, prefix: str, artifact: str, entry: dict[str, Any], size: int,
                   sha256: str) -> None:
    uri = lake.uri(bucket, prefix + entry["name"])
    if size != entry["size"]:
        raise IncompleteArtifact(f"{artifact}: {uri} has {size} bytes, manifest says {entry['size']}")
    if "sha256" in entry and sha256 != entry["sha256"]:
        raise IncompleteArtifact(
            f"{artifact}: {uri} is not the file its manifest records (sha256 {sha256[:12]}…, manifest says "
            f"{entry['sha256'][:12]}…): rewritten half-way or since; materialize {artifact} again")


def write_bundle(lake: Lake, bucket: str, prefix: str, artifact: str, bundle: Bundle) -> dict[str, Any]:
    """Remove the old manifest, write every file, then the manifest; returns the manifest
    (``files``: ``{"name", "size", "etag", "sha256"}`` each)."""
    prefix = prefix if prefix.endswith("/") else prefix + "/"
    # From here until the new manifest lands the artifact is incomplete: a worker killed after the first
    # file leaves no old manifest to vouch for a mix of new and old files.
    lake.delete(bucket, manifest_key(prefix, artifact))
    written = []

    def upload(rel: str, path: Path) -> None:
        sha256 = _sha256_file(path)  # before the upload: a file changed meanwhile fails the readers' check
        info = lake.put_file(bucket, validate_key(prefix + rel), path)
        written.append({"name": rel, "size": info.size, "etag": info.etag, "sha256": sha256})

    for name, value in bundle.files.items():
        if isinstance(value, Path) and value.is_dir():
            for path in sorted(p for p in value.rglob("*") if p.is_file()):
                upload(f"{name}/{path.relative_to(value).as_posix()}", path)
        elif isinstance(value, Path):
            upload(name, value)
        else:
            data, ctype = encode(name, value)
            info = lake.put_bytes(bucket, validate_key(prefix + name), data, ctype)
            written.append({"name": name, "size": len(data), "etag": info.etag,
                            "sha256": hashlib.sha256(data).hexdigest()})
    # Each folder's table schemas beside its tables; not part of the artifact (other artifacts may share a folder).
    for folder in sorted({(prefix + f["name"]).rpartition("/")[0] for f in written if f["name"].endswith(".csv")}):
        write_table_package(lake, bucket, folder)
    return write_manifest(lake, bucket, prefix, artifact, written, bundle.metadata)


def write_manifest(
    lake: Lake, bucket: str, prefix: str, artifact: str, files: list[dict[str, Any]], metadata: dict[str, Any]
) -> dict[str, Any]:
    """Write the manifest of files already written under ``prefix`` (each ``{"name", "size", "etag"}``,
    plus ``"sha256"`` for readers to check the content): the commit point of an artifact whose files
    were written some other way (e.g. incrementally)."""
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
    """The complete artifact under prefix, checked file by file (size, then ETag; a file whose ETag is not
    the recorded one, as after a copy to another server, is read and its sha256 compared).

    Raises IncompleteArtifact naming the artifact and the file when the manifest is missing (never
    written, or a rewrite in progress or killed) or a file is missing or differs.
    """
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
            info = lake.stat(bucket, prefix + entry["name"])
        except ObjectNotFound:
            raise IncompleteArtifact(f"{artifact}: {lake.uri(bucket, prefix + entry['name'])} is missing") from None
        if info.size == entry["size"] and (info.etag == entry.get("etag") or "sha256" not in entry):
            continue
        sha256 = "" if info.size != entry["size"] else _sha256_object(lake, bucket, prefix + entry["name"])
        _check_content(lake, bucket, prefix, artifact, entry, info.size, sha256)
    return StoredBundle(lake, bucket, prefix, manifest)


def _sha256_object(lake: Lake, bucket: str, key: str) -> str:
    digest = hashlib.sha256()
    for chunk in lake.iter_chunks(bucket, key, chunk_size=1 << 20):
        digest.update(chunk)
    return digest.hexdigest()
