"""The encoder backends: onnx gives torch's vectors (fp32) or close to them (int8), exported once."""

import numpy as np
import pytest

from ragtune.config import ConfigError, EmbeddingConfig, RagtuneConfig, load_config
from ragtune.embedding import load_encoder

TEXTS = ["short", "a somewhat longer sentence about milvus collections and their indexes",
         "ray data streams blocks " * 40, "", "Ünïcödé and punctuation: (a), [b]; {c}!"]


def test_onnx_vectors_equal_torchs_at_fp32_and_stay_close_at_int8(tiny_encoder):
    from ragtune.config import ragtune_home

    torch_vectors = load_encoder(EmbeddingConfig(model=str(tiny_encoder))).encode(TEXTS)
    fp32 = load_encoder(EmbeddingConfig(model=str(tiny_encoder), backend="onnx", onnx_precision="fp32"), threads=1)
    assert (fp32.dim, fp32.max_tokens, fp32.name) == (32, 126, str(tiny_encoder))
    vectors = fp32.encode(TEXTS)  # one batch of mixed lengths: padding must not change a vector
    assert vectors.dtype == np.float32 and np.allclose(vectors, torch_vectors, atol=1e-5)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    int8 = load_encoder(EmbeddingConfig(model=str(tiny_encoder), backend="onnx"))
    assert (int8.encode(TEXTS) * torch_vectors).sum(axis=1).min() > 0.95
    assert int8.encode([]).shape == (0, 32)
    root = ragtune_home() / "models" / "onnx-encoder"
    exported = sorted(p for p in root.iterdir() if p.is_dir())
    assert [p.name.split("-")[-2] for p in exported] == ["fp32", "int8"]
    stamp = (exported[1] / "model.onnx").stat().st_mtime_ns
    load_encoder(EmbeddingConfig(model=str(tiny_encoder), backend="onnx"))
    assert (exported[1] / "model.onnx").stat().st_mtime_ns == stamp  # exported once per node
    assert not [p for p in root.iterdir() if ".tmp" in p.name]


def test_onnx_refuses_an_encoder_with_a_projection_head(tiny_encoder, tmp_path):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense

    model = SentenceTransformer(str(tiny_encoder), device="cpu")
    model.append(Dense(32, 16))
    model.save(str(tmp_path / "dense"))
    with pytest.raises(ValueError, match="a Dense module: use embedding.backend=torch"):
        load_encoder(EmbeddingConfig(model=str(tmp_path / "dense"), backend="onnx"))


def test_the_backend_settings_are_checked_and_survive_a_round_trip():
    with pytest.raises(ConfigError, match="onnx runs on CPU"):
        load_config(overrides=["embedding.backend=onnx", "embedding.device=cuda"])
    with pytest.raises(ConfigError, match="embedding.onnx_precision applies to embedding.backend=onnx only"):
        load_config(overrides=["embedding.onnx_precision=fp32"])
    for overrides in ([], ["embedding.backend=onnx", "embedding.onnx_precision=fp32"]):
        cfg = load_config(overrides=overrides)  # actors receive the config as JSON
        assert RagtuneConfig.model_validate_json(cfg.model_dump_json()) == cfg
