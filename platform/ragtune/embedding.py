"""The text encoder shared by ingest, serve and eval, and its tokenizer for chunking."""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ragtune.config import EmbeddingConfig
from ragtune.models import ResolvedModel, build_once, convert_in_child, model_digest, resolve
from ragtune.runtime import usable_cpus


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
    """An encoder returning L2-normalized float32 vectors; ``load_encoder`` makes the configured one."""

    model_info: ResolvedModel
    batch_size: int

    @property
    def name(self) -> str:
        return self.model_info.name

    @property
    def dim(self) -> int:
        raise NotImplementedError

    @property
    def max_tokens(self) -> int:
        """Longest input the model reads, excluding its special tokens."""
        raise NotImplementedError

    def encode(self, texts: list[str]) -> np.ndarray:
        raise NotImplementedError


def load_encoder(config: EmbeddingConfig, threads: int | None = None) -> TextEncoder:
    """The encoder of ``config.backend``; ``threads``: its intra-op threads (unset: the library's
    default for torch, every CPU of the process for onnx)."""
    return (OnnxEncoder if config.backend == "onnx" else TorchEncoder)(config, threads)


class TorchEncoder(TextEncoder):
    """``embedding.backend=torch``: sentence-transformers on PyTorch, on CPU or CUDA."""

    def __init__(self, config: EmbeddingConfig, threads: int | None = None):
        import torch
        from sentence_transformers import SentenceTransformer

        if threads:
            torch.set_num_threads(threads)
        self.model_info = resolve(config.model)
        self.batch_size = config.batch_size
        self.model = SentenceTransformer(
            str(self.model_info.path),
            device=pick_device(config.device),
            trust_remote_code=self.model_info.trust_remote_code,
            local_files_only=True,
        )

    @property
    def dim(self) -> int:
        return int(self.model.get_embedding_dimension())

    @property
    def max_tokens(self) -> int:
        return int(self.model.max_seq_length) - 2

    def encode(self, texts: list[str]) -> np.ndarray:
        return self.model.encode(
            texts, batch_size=self.batch_size, normalize_embeddings=True,
            convert_to_numpy=True, show_progress_bar=False,
        ).astype(np.float32)


class OnnxEncoder(TextEncoder):
    """``embedding.backend=onnx``: the transformer exported to ONNX once per node (cached under
    ``$RAGTUNE_HOME/models/onnx-encoder/``), its attention and layer norms fused by ONNX Runtime's
    transformer optimizer, at int8 its weights quantized per channel; run by ONNX Runtime on CPU,
    pooled and normalized as sentence-transformers does. The vectors are those of the torch backend
    up to rounding at fp32 and close to them at int8 (BENCHMARKS.md: SciFact nDCG@10 of both)."""

    def __init__(self, config: EmbeddingConfig, threads: int | None = None):
        import onnxruntime as ort
        from transformers import AutoTokenizer

        info = encoder_info(config.model)
        self.model_info, self.batch_size = info.model, config.batch_size
        self._dim, self._max_tokens = info.dim, info.max_tokens
        self.pooling = onnx_pooling(info.model)
        path = exported_encoder(info.model, config.onnx_precision or "int8")
        self.tokenizer = AutoTokenizer.from_pretrained(info.model.path, trust_remote_code=info.model.trust_remote_code)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or usable_cpus()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only
        self.session = ort.InferenceSession(str(path / "model.onnx"), options, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def max_tokens(self) -> int:
        return self._max_tokens

    def encode(self, texts: list[str]) -> np.ndarray:
        out = np.empty((len(texts), self._dim), dtype=np.float32)
        # Batches of similar lengths pad less (sentence-transformers sorts the same way).
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)
        for start in range(0, len(texts), self.batch_size):
            rows = order[start:start + self.batch_size]
            batch = self.tokenizer([texts[i] for i in rows], padding=True, truncation=True,
                                   max_length=self._max_tokens + 2, return_tensors="np")
            hidden = self.session.run(None, {name: batch[name].astype(np.int64) for name in self.inputs})[0]
            if self.pooling == "mean":
                mask = batch["attention_mask"][..., None].astype(np.float32)
                vectors = (hidden * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9)
            else:
                vectors = hidden[:, 0]
            out[rows] = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        return out


def onnx_pooling(model: ResolvedModel) -> str:
    """``mean`` or ``cls``: the pooling of a sentence-transformers model that the onnx backend runs.

    Raises:
        ValueError: the model has a module or a pooling it does not (the message names the fix).
    """
    modules_file = model.path / "modules.json"
    modules = json.loads(modules_file.read_text()) if modules_file.exists() else []
    pooling = "mean"  # sentence-transformers' choice for a plain transformers model
    for module in modules:
        kind = module["type"].rsplit(".", 1)[-1]
        if kind == "Pooling":
            modes = json.loads((model.path / module["path"] / "config.json").read_text())
            # sentence-transformers >= 5 writes pooling_mode; earlier versions a flag per mode
            pooling = modes.get("pooling_mode") or next(
                (m for m, key in (("mean", "pooling_mode_mean_tokens"), ("cls", "pooling_mode_cls_token"))
                 if modes.get(key)), "other")
        elif kind not in ("Transformer", "Normalize"):
            pooling = f"a {kind} module"
        if pooling not in ("mean", "cls"):
            raise ValueError(f"embedding.backend=onnx runs a transformer with mean or CLS pooling; {model.name} has "
                             f"{pooling if pooling.startswith('a ') else repr(pooling) + ' pooling'}: use embedding.backend=torch")
    return pooling


def exported_encoder(model: ResolvedModel, precision: str) -> Path:
    """The directory holding ``model.onnx``: ``model``'s transformer at ``precision``, exported now
    unless this node has it.

    Raises:
        RuntimeError: the export failed (the message ends with its log).
    """
    import importlib.metadata

    from ragtune.config import ragtune_home

    name = re.sub(r"[^A-Za-z0-9_.-]", "_", model.name.rsplit("/", 1)[-1])
    versions = [importlib.metadata.version(p) for p in ("torch", "transformers", "onnxruntime")]
    target = ragtune_home() / "models" / "onnx-encoder" / f"{name}-{precision}-{model_digest(model, precision, *versions)}"
    return build_once(target, lambda d: (d / "model.onnx").is_file(), lambda work: convert_in_child(
        "ragtune.embedding", [str(model.path), precision, str(work)], target.with_name(f"{target.name}.log"),
        f"the encoder {model.name} to ONNX"))


def _export(model_dir: str, precision: str, out: str) -> None:
    """The child process of ``exported_encoder``: export, fuse, and at int8 quantize."""
    import onnx
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers.optimizer import optimize_model
    from transformers import AutoModel, AutoTokenizer

    work = Path(out)
    # Eager attention exports as plain ops, which the optimizer fuses into ONNX Runtime's Attention.
    model = AutoModel.from_pretrained(model_dir, attn_implementation="eager").eval()
    sample = AutoTokenizer.from_pretrained(model_dir)(["ragtune exports this encoder", "to ONNX"], padding=True,
                                                      return_tensors="pt")
    names = list(sample.keys())

    class Hidden(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, *inputs):
            return self.model(**dict(zip(names, inputs))).last_hidden_state

    with torch.no_grad():
        torch.onnx.export(Hidden(), tuple(sample[n] for n in names), str(work / "export.onnx"), input_names=names,
                          output_names=["hidden"], opset_version=17, dynamo=False,
                          dynamic_axes={n: {0: "batch", 1: "tokens"} for n in [*names, "hidden"]})
    fused = optimize_model(str(work / "export.onnx"), model_type="bert", opt_level=1,
                           num_heads=model.config.num_attention_heads, hidden_size=model.config.hidden_size)
    print("fused:", fused.get_fused_operator_statistics())
    final = work / ("fused.onnx" if precision == "int8" else "model.onnx")
    fused.save_model_to_file(str(final))
    if precision == "int8":
        quantize_dynamic(final, work / "model.onnx", weight_type=QuantType.QInt8, per_channel=True,
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
        final.unlink()
    (work / "export.onnx").unlink()


if __name__ == "__main__":
    _export(*sys.argv[1:])
