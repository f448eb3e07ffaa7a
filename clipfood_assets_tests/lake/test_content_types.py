"""Every object the platform writes to S3 carries its Content-Type, read back with plain boto3 (what MinIO's
console and a browser go by)."""

import io

import boto3
import pandas as pd
from PIL import Image

from clipfood_assets.lake.artifacts import Bundle, write_bundle
from clipfood_assets.lake.base import object_content_type

JSON, CSV, MARKDOWN, YAML = "application/json", "text/csv; charset=utf-8", "text/markdown; charset=utf-8", \
    "application/yaml"
BINARY = "application/octet-stream"


def _jpeg() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(out, "JPEG")
    return out.getvalue()


def _head(s3_server, bucket: str, key: str) -> str:
    s3 = boto3.client("s3", endpoint_url=s3_server.url, region_name="us-east-1")
    return s3.head_object(Bucket=bucket, Key=key)["ContentType"]


def test_objects_written_to_s3_carry_the_content_type_of_what_they_are(s3_server, s3_lake, tmp_path):
    # A folder as save_pretrained leaves it (peft adapters, a merged model): uploaded file by file.
    folder = tmp_path / "adapters"
    folder.mkdir()
    for name, data in (("adapter_config.json", b"{}"), ("README.md", "# Modèle\n".encode()),
                       ("adapter_model.safetensors", b"\x08\x00\x00\x00\x00\x00\x00\x00{}      "),
                       ("merges.txt", b"#version: 0.2\n")):
        (folder / name).write_bytes(data)
    write_bundle(s3_lake, "fine-tuning-zone", "experiments/lora/run_a/", "lora_adapters", Bundle({
        "adapters": folder, "config.yaml": {"lora": {"r": 8}}, "training_logs.json": {"epochs": []},
        "failure_cases.csv": pd.DataFrame({"run": ["a"], "query": ["crème brûlée"]}), "report.md": "# report\n",
        "metric_bars.png": b"\x89PNG\r\n\x1a\n",
    }))
    s3_lake.put_bytes("trusted-zone", "documents/recipes.jsonl", b'{"id": "1"}\n')  # no type given
    s3_lake.put_bytes("trusted-zone", "images/x__1_0.jpg", _jpeg(), BINARY)  # a source stored without one
    s3_lake.copy("trusted-zone", "images/x__1_0.jpg", "fine-tuning-zone", "images/x__1_0.jpg")
    s3_lake.put_bytes("fine-tuning-zone", "manifests/image_copies.csv", b"image_key\n", "text/csv")

    prefix = "experiments/lora/run_a/"
    expected = {
        ("fine-tuning-zone", prefix + "adapters/adapter_config.json"): JSON,
        ("fine-tuning-zone", prefix + "adapters/README.md"): MARKDOWN,
        ("fine-tuning-zone", prefix + "adapters/adapter_model.safetensors"): BINARY,  # no registered type
        ("fine-tuning-zone", prefix + "adapters/merges.txt"): "text/plain; charset=utf-8",
        ("fine-tuning-zone", prefix + "config.yaml"): YAML,
        ("fine-tuning-zone", prefix + "training_logs.json"): JSON,
        ("fine-tuning-zone", prefix + "failure_cases.csv"): CSV,
        ("fine-tuning-zone", prefix + "report.md"): MARKDOWN,
        ("fine-tuning-zone", prefix + "metric_bars.png"): "image/png",
        ("fine-tuning-zone", prefix + "_lora_adapters.manifest.json"): JSON,
        ("trusted-zone", "documents/recipes.jsonl"): "application/x-ndjson",
        ("fine-tuning-zone", "images/x__1_0.jpg"): "image/jpeg",  # the copy has its own type, not its source's
        ("fine-tuning-zone", "manifests/image_copies.csv"): CSV,  # a text type given without charset gets UTF-8
    }
    assert {where: _head(s3_server, *where) for where in expected} == expected


def test_the_type_comes_from_the_suffix_whatever_its_case_and_unknown_ones_are_binary():
    assert object_content_type("images/PHOTO.JPG") == "image/jpeg"
    assert object_content_type("checkpoints/step-1/COMPLETE") == BINARY
    assert object_content_type("shard-00000.npy") == BINARY
    assert object_content_type("a.csv", "text/tab-separated-values; charset=latin-1") == \
        "text/tab-separated-values; charset=latin-1"  # a given charset is kept
