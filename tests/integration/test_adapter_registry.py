"""The serving adapter registry on a directory and on an s3:// prefix (a local moto S3 server)."""

import boto3
import pytest

from ragtune.config import ServeConfig
from ragtune.serve.adapters import AdapterRegistry, UnknownAdapter


def _adapter(root, name):
    (root / name).mkdir(parents=True)
    (root / name / "adapter_config.json").write_text('{"r": 4}')
    (root / name / "adapter_model.safetensors").write_bytes(b"weights")


def test_directory_registry_lists_and_resolves_adapters(tmp_path):
    _adapter(tmp_path, "tuned")
    (tmp_path / "not-an-adapter").mkdir()
    registry = AdapterRegistry(ServeConfig(adapters=str(tmp_path)))
    assert registry.names() == ["tuned"]
    assert registry.local_path("tuned") == tmp_path / "tuned"
    for bad in ("missing", "not-an-adapter", "../tuned"):
        with pytest.raises(UnknownAdapter, match="available: tuned"):
            registry.local_path(bad)


def test_s3_registry_copies_an_adapter_to_the_local_cache(tmp_path, s3_bucket):
    _adapter(tmp_path, "tuned")
    client = boto3.client("s3")
    for path in (tmp_path / "tuned").iterdir():
        client.upload_file(str(path), s3_bucket, f"registry/tuned/{path.name}")
    client.put_object(Bucket=s3_bucket, Key="registry/stray/notes.txt", Body=b"x")
    registry = AdapterRegistry(ServeConfig(adapters=f"s3://{s3_bucket}/registry"))
    assert registry.names() == ["tuned"]
    local = registry.local_path("tuned")
    assert (local / "adapter_model.safetensors").read_bytes() == b"weights"
    with pytest.raises(UnknownAdapter, match="no adapter 'stray'"):
        registry.local_path("stray")
