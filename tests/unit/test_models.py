import uuid

import pytest

from ragtune.embedding import encoder_info
from ragtune.models import ModelError, resolve


def test_bundled_minilm_resolves_offline():
    model = resolve("minilm")
    assert model.name == "sentence-transformers/all-MiniLM-L6-v2"
    assert (model.path / "model.safetensors").exists() and model.trust_remote_code is False
    info = encoder_info("minilm")
    assert (info.dim, info.max_tokens) == (384, 254)


def test_local_directory_without_safetensors_is_refused(tmp_path):
    (tmp_path / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(ModelError, match="safetensors only"):
        resolve(str(tmp_path))


def test_hub_id_needs_a_pinned_revision():
    with pytest.raises(ModelError, match="pinned revision"):
        resolve("sentence-transformers/all-MiniLM-L6-v2")


def test_unknown_alias_lists_choices():
    with pytest.raises(ModelError, match="minilm, smollm2-135m-instruct"):
        resolve("tinyllama")


def test_tiny_encoder_info_matches_loaded_model(tiny_encoder):
    from ragtune.config import EmbeddingConfig
    from ragtune.embedding import load_encoder

    info = encoder_info(str(tiny_encoder))
    encoder = load_encoder(EmbeddingConfig(model=str(tiny_encoder)))
    assert (info.dim, info.max_tokens) == (encoder.dim, encoder.max_tokens) == (32, 126)


def test_a_model_in_s3_is_copied_once_into_this_nodes_cache(s3_bucket, tiny_encoder):
    from pyarrow import fs

    from ragtune.config import ragtune_home

    s3, _ = fs.FileSystem.from_uri(f"s3://{s3_bucket}")
    fs.copy_files(str(tiny_encoder), f"{s3_bucket}/models/enc", source_filesystem=fs.LocalFileSystem(),
                  destination_filesystem=s3)
    model = resolve(f"s3://{s3_bucket}/models/enc")
    assert model.name == f"s3://{s3_bucket}/models/enc"  # the reference, the same on every node
    assert model.path.parent == ragtune_home() / "models" / "storage" and (model.path / "config.json").is_file()
    stamp = (model.path / "model.safetensors").stat().st_mtime_ns
    assert resolve(f"s3://{s3_bucket}/models/enc").path == model.path
    assert (model.path / "model.safetensors").stat().st_mtime_ns == stamp  # not fetched again
    with pytest.raises(ModelError, match="empty or does not exist"):
        resolve(f"s3://{s3_bucket}/models/none")
    s3.create_dir(f"{s3_bucket}/models/bin")
    with s3.open_output_stream(f"{s3_bucket}/models/bin/pytorch_model.bin") as out:
        out.write(b"pickle")
    with pytest.raises(ModelError, match="safetensors only"):
        resolve(f"s3://{s3_bucket}/models/bin")
    assert not [p for p in (ragtune_home() / "models" / "storage").iterdir() if ".tmp" in p.name]


def test_an_adapter_published_to_s3_is_listed_and_fetched_whole(s3_bucket, tmp_path):
    from ragtune.config import ServeConfig
    from ragtune.generation import AdapterError, fetch_adapter
    from ragtune.serve.adapters import AdapterRegistry
    from ragtune.train.driver import publish

    registry = f"s3://{s3_bucket}/registry-{uuid.uuid4().hex[:8]}"  # the bucket is the session's
    adapter = tmp_path / "qa-lora"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"r": 4}')
    (adapter / "adapter_model.safetensors").write_bytes(b"weights")
    publish(adapter, f"{registry}/qa-lora")
    assert AdapterRegistry(ServeConfig(adapters=registry)).names() == ["qa-lora"]
    local = fetch_adapter(f"{registry}/qa-lora")
    assert sorted(p.name for p in local.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    (adapter / "adapter_model.safetensors").write_bytes(b"retrained")
    publish(adapter, f"{registry}/qa-lora")  # published again: the next fetch has the new weights
    assert (fetch_adapter(f"{registry}/qa-lora") / "adapter_model.safetensors").read_bytes() == b"retrained"
    with pytest.raises(AdapterError, match="holds no adapter"):
        fetch_adapter(f"{registry}/missing")
