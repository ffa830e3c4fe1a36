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
    from ragtune.embedding import TextEncoder

    info = encoder_info(str(tiny_encoder))
    encoder = TextEncoder(EmbeddingConfig(model=str(tiny_encoder)))
    assert (info.dim, info.max_tokens) == (encoder.dim, encoder.max_tokens) == (32, 126)
