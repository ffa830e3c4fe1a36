"""The text encoder shared by ingest, serve and eval, and its tokenizer for chunking."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from ragtune.config import EmbeddingConfig
from ragtune.models import ResolvedModel, resolve


@dataclass(frozen=True)
class EncoderInfo:
    """What a pipeline must know about an encoder without loading its weights."""

    model: ResolvedModel
    dim: int
    max_tokens: int


def _json_get(path, key):
    return json.loads(path.read_text()).get(key) if path.exists() else None


def encoder_info(ref: str) -> EncoderInfo:
    """Read the output dimension and input length of a sentence-transformers model from its files."""
    model = resolve(ref)
    config = json.loads((model.path / "config.json").read_text())
    dim = config.get("hidden_size") or config.get("d_model")
    modules_file = model.path / "modules.json"
    for module in json.loads(modules_file.read_text()) if modules_file.exists() else []:
        if module["type"].endswith("Dense"):  # a projection head changes the output size
            dim = json.loads((model.path / module["path"] / "config.json").read_text())["out_features"]
    # sentence-transformers < 5 records the input length in sentence_bert_config.json, newer
    # versions as the tokenizer's model_max_length; transformers' placeholder for "none" is huge.
    lengths = [_json_get(model.path / "sentence_bert_config.json", "max_seq_length"),
               _json_get(model.path / "tokenizer_config.json", "model_max_length")]
    max_len = next((n for n in lengths if isinstance(n, int) and 0 < n < 100_000),
                   min(config.get("max_position_embeddings", 512), 512))
    return EncoderInfo(model, int(dim), int(max_len) - 2)


def pick_device(device: str) -> str:
    """``auto`` → ``cuda`` when a GPU is visible, else ``cpu``."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class TokenCounter:
    """The embedding model's tokenizer, as character spans per token (for the pure chunker)."""

    def __init__(self, model: ResolvedModel):
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model.path, trust_remote_code=model.trust_remote_code)

    def spans(self, text: str) -> list[tuple[int, int]]:
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        return [tuple(s) for s in enc["offset_mapping"] if s[1] > s[0]]


class TextEncoder:
    """A sentence-transformers encoder returning L2-normalized float32 vectors."""

    def __init__(self, config: EmbeddingConfig):
        from sentence_transformers import SentenceTransformer

        self.model_info = resolve(config.model)
        self.batch_size = config.batch_size
        self.model = SentenceTransformer(
            str(self.model_info.path),
            device=pick_device(config.device),
            trust_remote_code=self.model_info.trust_remote_code,
            local_files_only=True,
        )

    @property
    def name(self) -> str:
        return self.model_info.name

    @property
    def dim(self) -> int:
        return int(self.model.get_embedding_dimension())

    @property
    def max_tokens(self) -> int:
        """Longest input the model reads, excluding its special tokens."""
        return int(self.model.max_seq_length) - 2

    def encode(self, texts: list[str]) -> np.ndarray:
        return self.model.encode(
            texts, batch_size=self.batch_size, normalize_embeddings=True,
            convert_to_numpy=True, show_progress_bar=False,
        ).astype(np.float32)
