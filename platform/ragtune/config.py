"""Typed, closed configuration for every ragtune YAML file.

Every model forbids unknown keys, YAML is read with ``yaml.safe_load``, and command-line
overrides (``--set key.sub=value``) are applied before validation, so a bad value from any
source produces the same message naming the file, the key and what is allowed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ragtune.core.modes import Mode, SearchMode


class ConfigError(ValueError):
    """A configuration file or override is invalid; the message says where and how to fix it."""


class _Closed(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def ragtune_home() -> Path:
    """The directory for ragtune's local state (``$RAGTUNE_HOME``, default ``~/.ragtune``)."""
    return Path(os.environ.get("RAGTUNE_HOME", Path.home() / ".ragtune")).expanduser()


class MilvusConfig(_Closed):
    uri: str | None = Field(
        None,
        description="Milvus URI. Unset: $MILVUS_URI, else a local milvus-lite server that ragtune starts.",
    )
    token: str | None = Field(None, description="Milvus token; unset: $MILVUS_TOKEN.")
    collection: str = Field("ragtune", pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,254}$", description="Collection name.")
    local_port: int = Field(19631, ge=1024, le=65535, description="Port of the local milvus-lite server.")
    timeout_s: float = Field(60, gt=0, le=3600, description="Seconds to wait for a connection; generous because "
                             "the pure-Python milvus-lite can be busy indexing after a flush. A server may lower "
                             "it to answer 503 sooner when Milvus is down.")
    max_request_bytes: int = Field(
        4 * 1024 * 1024, ge=64 * 1024, le=64 * 1024 * 1024,
        description="Upper bound of one insert request; Milvus rejects gRPC messages over 64 MiB.",
    )
    bm25_stop_words: list[str] = Field(
        default_factory=lambda: list(ENGLISH_STOP_WORDS),
        description="Stop words removed by the BM25 analyzer (Lucene's English set by default).",
    )


# Lucene's EnglishAnalyzer stop set, which the published BM25 baselines use.
ENGLISH_STOP_WORDS = (
    "a an and are as at be but by for if in into is it no not of on or such that the their then "
    "there these they this to was will with"
).split()


class EmbeddingConfig(_Closed):
    model: str = Field("minilm", description="Registry alias, local directory, s3:// URI of a saved model, "
                       "or hub id@revision.")
    batch_size: int = Field(64, ge=1, le=4096, description="Texts per encoder call.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: CUDA when present.")
    backend: Literal["torch", "onnx"] = Field(
        "torch", description="torch: sentence-transformers on PyTorch (CPU or CUDA). onnx: the model exported "
        "once per node to ONNX, its attention fused, run by ONNX Runtime on CPU (BERT-style encoders with mean "
        "or CLS pooling).",
    )
    onnx_precision: Literal["fp32", "int8"] | None = Field(
        None, description="Weights of the onnx backend: int8 (dynamic quantization, per channel) or fp32; "
        "unset: int8.",
    )
    concurrency: int = Field(1, ge=1, le=256, description="Encoder actors in the Ray Data pool.")
    num_cpus_per_actor: float = Field(1.0, gt=0, le=256, description="CPUs Ray reserves per encoder actor.")
    torch_threads: int | None = Field(
        None, ge=1, le=256,
        description="Intra-op threads (PyTorch's or ONNX Runtime's) per encoder actor; unset: the node's cores / "
        "concurrency.",
    )
    num_gpus_per_actor: float | None = Field(
        None, ge=0, le=8, description="GPUs per encoder actor; unset: 1 when the cluster has a GPU per actor, else 0.",
    )

    @model_validator(mode="after")
    def _backend_fits(self) -> EmbeddingConfig:
        if self.backend == "onnx" and self.device == "cuda":
            raise ValueError("embedding.backend=onnx runs on CPU: set embedding.device to cpu or auto, or use "
                             "embedding.backend=torch on CUDA")
        if self.backend != "onnx" and self.onnx_precision is not None:
            raise ValueError("embedding.onnx_precision applies to embedding.backend=onnx only: set "
                             "embedding.backend=onnx or remove embedding.onnx_precision")
        return self


class ChunkingConfig(_Closed):
    max_tokens: int = Field(256, ge=16, le=8192, description="Hard maximum tokens per chunk (embedding tokenizer).")
    overlap_tokens: int = Field(32, ge=0, description="Tokens repeated between consecutive chunks of a section.")
    markdown_sections: bool = Field(True, description="Start a new chunk at each markdown heading.")
    max_chunks_per_document: int = Field(5000, ge=1, description="Documents that chunk into more pieces are "
                                                                 "rejected (too_large).")


class ValidationConfig(_Closed):
    max_file_bytes: int = Field(20 * 1024 * 1024, ge=1, description="Files larger than this are rejected (too_large).")
    max_document_chars: int = Field(1_000_000, ge=1, description="Documents longer than this are rejected (too_large).")
    parse_timeout_s: float = Field(60.0, gt=0, description="Files whose parsing takes longer are rejected "
                                                          "(parse_timeout).")
    parse_memory_mb: int = Field(2048, ge=256, description="Address space of the process that parses files; "
                                                           "files that need more are rejected (too_large).")
    max_reject_fraction: float = Field(
        0.2, ge=0, le=1, description="Exit non-zero when rejected/total exceeds this fraction."
    )


class IngestConfig(_Closed):
    sources: list[str] = Field(default_factory=list, description="Files, directories, globs or s3:// URIs.")
    prune: bool = Field(False, description="Delete documents that disappeared from the sources.")
    read_concurrency: int = Field(2, ge=1, le=1024, description="Parallel parse/chunk tasks.")
    prune_api_documents: bool = Field(False, description="With prune: also delete documents written through the "
                                      "API (POST /v1/documents) that are not in the sources; unset, they stay.")
    notebook_outputs: bool = Field(False, description="Jupyter notebooks: index the text outputs of code cells "
                                   "too (their markdown and code cells always).")
    table_documents: Literal["sheet", "row"] = Field(
        "sheet", description="csv and xlsx: one document per sheet (a csv is one sheet), or one per row (its cells "
        "as 'column: value' lines; id <file>#<row>, in a workbook <file>#<sheet>:<row>).")


class SearchConfig(_Closed):
    mode: SearchMode = Field("hybrid", description="Retrieval mode.")
    k: int = Field(5, ge=1, le=16384, description="Results returned.")
    ranker: Literal["rrf", "weighted"] = Field("rrf", description="How hybrid fuses dense and BM25 results.")
    rrf_k: int = Field(60, ge=1, le=16384, description="RRF smoothing constant.")
    weights: tuple[float, float] = Field((0.5, 0.5), description="Weighted ranker: (dense, bm25).")
    candidates: int = Field(100, ge=1, le=16384, description="Results each side of a hybrid search contributes.")
    hnsw_ef: int = Field(128, ge=1, le=32768, description="HNSW search breadth.")


class HfBackendConfig(_Closed):
    """``generator.backend=hf``: transformers, on CPU or GPU."""

    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: a GPU when one is visible.")
    max_batch_size: int = Field(8, ge=1, le=256, description="Concurrent requests decoded together (left-padded; "
                                "requests arriving during a batch wait for the next).")


class OnnxBackendConfig(_Closed):
    """``generator.backend=onnx``: ONNX Runtime GenAI on CPU (models converted once per node)."""

    precision: Literal["int8", "int4", "fp32"] = Field(
        "int8", description="Weights (an adapter is merged in first). int4 decodes faster but answers worse: on the "
        "quickstart questions, token F1 reading a passage 6.4 vs int8's 14.3 (transformers 15.4), and closed book "
        "with the adapter 35.5 vs 50.7 (52.8) — BENCHMARKS.md.")
    max_batch_size: int = Field(8, ge=1, le=256, description="Requests of one model decoded together.")
    threads: int | None = Field(None, ge=1, le=1024, description="Threads per model; unset: every CPU this process "
                                "may run on (ONNX Runtime's own default computed on one thread here: 57 vs 99 tokens/s).")


VLLM_RESERVED = frozenset({"model", "served_model_name", "enable_lora", "max_loras", "trust_remote_code"})


class VllmBackendConfig(_Closed):
    """``generator.backend=vllm``: vLLM on GPUs (the ``vllm`` extra)."""

    engine_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="More vLLM engine arguments, e.g. max_model_len, gpu_memory_utilization, "
        "max_lora_rank, tensor_parallel_size.")

    @model_validator(mode="after")
    def _not_ragtunes_own(self) -> "VllmBackendConfig":
        if reserved := VLLM_RESERVED & set(self.engine_kwargs):
            raise ValueError(f"engine_kwargs may not set {sorted(reserved)}: ragtune sets them from generator.model "
                             "and the adapters it loads")
        return self


class FakeBackendConfig(_Closed):
    """``generator.backend=fake``, a test double: answers with the question's words, no model."""

    token_interval_s: float = Field(0.0, ge=0, le=10, description="Pause before each generated word.")
    gate_file: str | None = Field(None, description="Each answer waits (cancellably) until this file exists: a "
                                  "test holds the generator busy, then releases it by creating the file.")


class EndpointBackendConfig(_Closed):
    """``generator.backend=endpoint``: generation by a server with OpenAI's chat completions API."""

    base_url: str = Field("", description="The API's base URL, e.g. http://127.0.0.1:8000/v1 (`ragtune serve`), "
                          "http://host:8000/v1 (vLLM), https://api.openai.com/v1.")
    model: str | None = Field(None, description="The model as the server names it; unset: generator.model.")
    api_key_env: str = Field("OPENAI_API_KEY", description="Environment variable holding the API key (sent as a "
                             "bearer token; unset variable: no key).")
    ragtune_server: bool = Field(False, description="The server is a `ragtune serve`: each request asks for mode "
                                 "base (ft with an adapter), so that the server adds no retrieved passages.")
    concurrency: int = Field(8, ge=1, le=1024, description="Requests in flight at a time.")
    timeout_s: float = Field(300.0, gt=0, description="Time limit of one request.")
    retries: int = Field(3, ge=0, le=10, description="Retries of a 429 or 503 answer (back-off 1 s, doubling).")


class GeneratorConfig(_Closed):
    model: str = Field("smollm2-135m-instruct",
                       description="Chat model: registry alias, local directory, s3:// URI of a saved model, "
                       "or hub id@revision.")
    backend: str = Field("hf", description="The engine that serves and compares: hf (transformers, CPU or GPU), "
                         "onnx (ONNX Runtime GenAI, CPU), vllm (GPU, the vllm extra), endpoint (an OpenAI-compatible "
                         "server: synth, compare, the judge), fake (a test double); the "
                         "section of that name configures it.")
    hf: HfBackendConfig = HfBackendConfig()
    onnx: OnnxBackendConfig = OnnxBackendConfig()
    vllm: VllmBackendConfig = VllmBackendConfig()
    endpoint: EndpointBackendConfig = EndpointBackendConfig()
    fake: FakeBackendConfig = FakeBackendConfig()

    @model_validator(mode="after")
    def _one_backend(self) -> "GeneratorConfig":
        sections = [name for name in type(self).model_fields if name not in ("model", "backend")]
        if self.backend not in sections:
            raise ValueError(f"backend {self.backend!r} is not one of {', '.join(sections)}")
        for name in sections:
            if name != self.backend and getattr(self, name) != type(self).model_fields[name].default:
                raise ValueError(f"generator.{name} configures the {name} backend: set generator.backend={name}, "
                                 f"or remove generator.{name}")
        if self.backend == "endpoint" and not self.endpoint.base_url:
            raise ValueError("generator.backend=endpoint needs generator.endpoint.base_url (e.g. "
                             "http://127.0.0.1:8000/v1)")
        return self


class PrepareConfig(_Closed):
    inputs: list[str] = Field(default_factory=list, description="SQuAD json, QA/Alpaca/chat jsonl files or globs.")
    format: Literal["auto", "squad", "qa", "alpaca", "chat"] = Field(
        "auto", description="Input format; auto: from the file's first record.")
    output_dir: str | None = Field(None, description="Where train/, validation/, eval.jsonl and stats.json go; "
                                   "unset: $RAGTUNE_HOME/datasets/<train.run_name>.")
    system_prompt: str | None = Field(None, description="System message; unset: ragtune's default QA prompt.")
    max_length: int = Field(512, ge=16, le=131072, description="Maximum tokens per training sequence.")
    overflow: Literal["truncate", "drop"] = Field(
        "truncate", description="Longer sequences: cut at max_length (dropped if no answer token is left), or drop.")
    packing: bool = Field(False, description="Concatenate examples into max_length rows (position ids restart "
                          "per example; attention crosses examples unless the attention kernel honours them).")
    validation_fraction: float = Field(0.1, ge=0, lt=1, description="Share of rows in the validation split (by hash).")
    eval_holdout: int = Field(0, ge=0, description="Questions held out into eval.jsonl (by hash) and kept out of training.")
    max_examples: int | None = Field(None, ge=1, description="Keep at most this many train + validation rows (by hash).")
    exclude_questions: list[str] = Field(
        default_factory=list, description="Evaluation sets (any input format): training rows asking the same "
        "question (normalised) are dropped and counted as leakage.")
    with_context: bool = Field(False, description="Add k passages retrieved from milvus.collection to each prompt.")
    context_k: int = Field(3, ge=1, le=64, description="Passages per example with with_context.")
    gold_probability: float = Field(0.8, ge=0, le=1, description="Chance that the gold passage is among them.")
    seed: int = Field(0, description="Seed of the hash split, sampling and context choice.")
    concurrency: int = Field(2, ge=1, le=1024, description="Parallel tokenizer / retriever actors.")


class LoraConfig(_Closed):
    r: int = Field(16, ge=1, le=1024, description="LoRA rank.")
    alpha: int = Field(32, ge=1, description="LoRA scaling numerator (scale = alpha / r).")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA input.")
    target_modules: list[str] | None = Field(
        None, description="Module names to adapt; unset: the attention and MLP projections of the architecture.")
    quantize_4bit: bool = Field(False, description="QLoRA: load the base model in 4-bit NF4 (GPU + bitsandbytes).")


class DeepSpeedConfig(_Closed):
    stage: Literal[0, 1, 2, 3] = Field(2, description="ZeRO stage.")
    offload_optimizer: bool = Field(False, description="Keep optimizer state in CPU memory (stage 1-3).")
    offload_param: bool = Field(False, description="Keep parameters in CPU memory (stage 3 only).")
    stage3_param_persistence_threshold: int | None = Field(
        None, ge=0, description="Stage 3: parameters smaller than this stay unpartitioned; unset: DeepSpeed's default.")
    stage3_max_live_parameters: int | None = Field(
        None, ge=0, description="Stage 3: the most parameters gathered (whole) at once per worker; unset: a tenth of "
        "the model's, at most DeepSpeed's 1e9 (which alone is the whole of a model of 1B parameters or less).")
    stage3_max_reuse_distance: int | None = Field(
        None, ge=0, description="Stage 3: a gathered parameter is kept if it is used again within this many "
        "parameters; unset: as stage3_max_live_parameters.")

    @model_validator(mode="after")
    def _offload_needs_stage(self) -> "DeepSpeedConfig":
        if self.offload_param and self.stage != 3:
            raise ValueError(f"offload_param needs ZeRO stage 3 (got stage {self.stage}): set "
                             "train.deepspeed.stage=3 or train.deepspeed.offload_param=false")
        if self.offload_optimizer and self.stage == 0:
            raise ValueError("offload_optimizer needs ZeRO stage 1, 2 or 3: set train.deepspeed.stage=2 "
                             "or train.deepspeed.offload_optimizer=false")
        return self


class TrainConfig(_Closed):
    run_name: str = Field("ragtune-lora", pattern=r"^[A-Za-z0-9_.-]{1,128}$",
                          description="Ray Train run name; re-running the same name resumes it.")
    storage_path: str | None = Field(None, description="Checkpoints: a shared directory or s3:// URI; "
                                     "unset: $RAGTUNE_HOME/train_runs.")
    output_dir: str | None = Field(None, description="Adapter, training_report.json and loss_curve.png: a directory, "
                                   "or an s3:// prefix (an adapter registry) they are published to after the export "
                                   "in $RAGTUNE_HOME/adapters/<run_name>; unset: that directory.")
    num_workers: int = Field(2, ge=1, le=1024, description="Training workers (one per GPU).")
    use_gpu: bool | None = Field(None, description="unset: GPUs when the cluster has one per worker.")
    cpus_per_worker: float | None = Field(
        None, gt=0, le=256, description="CPUs Ray reserves per worker; unset: 1 with GPUs, else a share that "
        "leaves CPU for the Ray Data reader (which otherwise waits for a CPU forever).")
    worker_resources: dict[str, float] = Field(
        default_factory=dict, description="Custom Ray resources each worker also reserves, e.g. {trainer: 1} "
        "to keep training on the nodes started with that resource (CPU and GPU have their own settings).")
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_SPREAD"] = Field(
        "PACK", description="How workers are placed across nodes.")
    epochs: int = Field(1, ge=1, le=1000, description="Passes over the training split.")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps.")
    micro_batch_size: int = Field(8, ge=1, le=4096, description="Sequences per worker per forward pass.")
    gradient_accumulation_steps: int = Field(1, ge=1, le=4096, description="Micro-batches per optimizer step.")
    learning_rate: float = Field(2e-4, gt=0, le=1, description="Peak learning rate.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    warmup_ratio: float = Field(0.05, ge=0, lt=1, description="Share of steps with linear warmup before cosine decay.")
    max_grad_norm: float = Field(1.0, ge=0, description="Gradient clipping (0: off).")
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="auto: bf16 on GPU, fp32 on CPU.")
    gradient_checkpointing: bool = Field(False, description="Recompute activations to save memory.")
    eval_every: int = Field(50, ge=1, description="Validation loss every N optimizer steps (and at the end).")
    checkpoint_every: int = Field(50, ge=1, description="Checkpoint every N optimizer steps (and at the end).")
    num_to_keep: int = Field(2, ge=1, description="Checkpoints kept in storage_path.")
    max_failures: int = Field(2, ge=-1, description="Worker-group restarts from the last checkpoint (-1: unlimited).")
    fail_at_step: int | None = Field(None, ge=1, description="Fault injection for tests: the last worker raises "
                                     "once, after this optimizer step.")
    seed: int = Field(0, description="Seed of the LoRA init, dropout and data order.")
    lora: LoraConfig = LoraConfig()
    deepspeed: DeepSpeedConfig = DeepSpeedConfig()

    @model_validator(mode="after")
    def _custom_resources(self) -> "TrainConfig":
        for name, amount in self.worker_resources.items():
            if name.upper() in ("CPU", "GPU"):
                raise ValueError(f"worker_resources.{name}: set train.cpus_per_worker / train.use_gpu instead")
            if amount <= 0:
                raise ValueError(f"worker_resources.{name} must be > 0 (got {amount})")
        return self

    @model_validator(mode="after")
    def _qlora_stage(self) -> "TrainConfig":
        if self.lora.quantize_4bit and self.deepspeed.stage == 3:
            raise ValueError("lora.quantize_4bit (QLoRA) works with ZeRO stage 0-2: set train.deepspeed.stage=2")
        return self


LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


class ServeConfig(_Closed):
    model_name: str | None = Field(None, description="The base model's name in the API; unset: generator.model.")
    adapters: str | None = Field(None, description="Adapter registry: a directory or s3:// prefix with one "
                                 "adapter per sub-directory (what `ragtune train` writes); unset: $RAGTUNE_HOME/adapters.")
    max_loaded_adapters: int = Field(4, ge=1, le=256, description="Adapters kept loaded per generator replica (LRU).")
    system_prompt: str | None = Field(None, description="System message of every answer; unset: the default.")
    api_key_env: str | None = Field(None, description="Environment variable holding the API key (reads: chat, "
                                    "retrieve, models); unset: no key is required.")
    admin_key_env: str | None = Field(None, description="Environment variable holding the admin key, the only one "
                                      "that may POST or DELETE /v1/documents; unset: the documents API is off "
                                      "(unless serve.local_documents_api).")
    local_documents_api: bool = Field(False, description="Without an admin key, open POST/DELETE /v1/documents to "
                                      "clients on this machine (loopback addresses) — for a laptop; needs "
                                      "serve.allowed_hosts of loopback names.")
    allowed_hosts: list[str] = Field(default_factory=list, description="Host header names the server answers "
                                     "(any port), e.g. [127.0.0.1, localhost, '::1'] for a local server: a web page "
                                     "cannot reach it through a rebound DNS name; empty: any host.")
    max_body_bytes: int = Field(1_000_000, ge=1024, le=256 * 1024 * 1024, description="Larger requests get 413.")
    request_timeout_s: float = Field(120, gt=0, le=3600, description="An answer not finished by then gets 504.")
    default_max_tokens: int = Field(128, ge=1, le=32768, description="max_tokens when a request sets none.")
    max_tokens_limit: int = Field(1024, ge=1, le=32768, description="The largest max_tokens a request may ask for.")
    default_top_k: int = Field(4, ge=1, le=100, description="Passages retrieved per question when a request sets none.")
    embed_batch_size: int = Field(32, ge=1, le=1024, description="Queries the embedder batches together.")
    embed_batch_wait_s: float = Field(0.005, ge=0, le=1, description="How long the embedder waits to fill a batch.")

    @model_validator(mode="before")
    @classmethod
    def _backend_moved(cls, data: Any) -> Any:
        moved = {"backend": "generator.backend", "fake": "generator.fake", "engine_kwargs": "generator.vllm.engine_kwargs"}
        if isinstance(data, dict) and (old := [key for key in moved if key in data]):
            raise ValueError("the generation backend is configured under generator now (serve and compare use the "
                             f"same one): move {', '.join(f'serve.{k} to {moved[k]}' for k in old)}")
        return data

    @model_validator(mode="after")
    def _local_documents_need_local_hosts(self) -> "ServeConfig":
        if self.local_documents_api and self.admin_key_env is None and (
                not self.allowed_hosts or set(self.allowed_hosts) - LOOPBACK_HOSTS):
            raise ValueError("serve.local_documents_api trusts clients on this machine, which a web page can be "
                             "through a rebound DNS name: set serve.allowed_hosts to loopback names "
                             f"({', '.join(sorted(LOOPBACK_HOSTS))}), or set serve.admin_key_env instead")
        return self


class CompareConfig(_Closed):
    questions: str | None = Field(None, description="Question set with gold answers: SQuAD v1.1 json or QA jsonl "
                                  "(question, answer, optional doc_id).")
    format: Literal["auto", "squad", "qa"] = Field("auto", description="The question set's format; auto: detected.")
    arms: list[Mode] = Field(
        ["base", "rag", "ft", "hybrid"], min_length=1,
        description="base: the model alone; rag: retrieval + base; ft: the adapter; hybrid: retrieval + adapter.")
    adapter: str | None = Field(None, description="Adapter for ft and hybrid: the directory `ragtune train` wrote, "
                                "or its run name (an adapter in $RAGTUNE_HOME/adapters).")
    hybrid_adapter: str | None = Field(None, description="Adapter for hybrid when it differs from ft's (e.g. one "
                                       "trained with `prepare.with_context`); unset: compare.adapter.")
    sample: int | None = Field(500, ge=1, description="Questions drawn (seeded) from the set; unset: all. The knob "
                               "that trades wall time for narrower intervals.")
    seed: int = Field(0, description="Seed of the question sample and of the bootstrap.")
    top_k: int = Field(4, ge=1, le=100, description="Passages retrieved per question in rag and hybrid.")
    max_tokens: int = Field(32, ge=1, le=4096, description="Longest answer in tokens (greedy decoding).")
    batch_size: int = Field(8, ge=1, le=512, description="Questions per generation batch.")
    actors: int = Field(1, ge=1, le=1024, description="Generator actors per arm (Ray Data map_batches concurrency).")
    cpus_per_actor: float = Field(1.0, gt=0, description="CPUs each generator actor reserves.")
    gpus_per_actor: float = Field(0.0, ge=0, description="GPUs each generator actor reserves.")
    bootstrap_samples: int = Field(2000, ge=100, le=100000, description="Resamples for the 95% intervals.")
    price_per_hour: float = Field(0.0, ge=0, description="Price per hour (any currency) of one generator actor's "
                                  "hardware, or of the whole endpoint with compare.endpoint, for the cost per 1,000 "
                                  "questions; 0: cost not reported.")
    output_dir: str | None = Field(None, description="Where report.md/json, questions.csv and plots go; unset: "
                                   "$RAGTUNE_HOME/reports/compare-<time>.")
    freshness_documents: str | None = Field(
        None, description="Freshness experiment: a directory of revised documents (the same relative paths as the "
        "ingested ones), ingested into the collection after the comparison.")
    freshness_questions: str | None = Field(
        None, description="Freshness experiment: jsonl of question, answer_before, answer_after — the facts the "
        "revised documents change; asked before and after the update.")
    endpoint: str | None = Field(
        None, description="URL of a running `ragtune serve` to ask instead of generator actors; adapters are then "
        "the server's (compare.adapter: a name from GET /v1/models, or a directory named like one). The bearer key "
        "comes from $RAGTUNE_API_KEY.")
    endpoint_concurrency: int = Field(4, ge=1, le=256, description="Requests in flight against compare.endpoint.")
    judge: bool = Field(False, description="An LLM judge: the generator's base model grades each answer as correct "
                        "against the gold answer and, in rag and hybrid, as supported by the retrieved passages; its "
                        "accuracy on known pairs (a gold answer against its own question and against another's) is "
                        "reported beside its scores. Batch mode on the hf or onnx backend.")

    @model_validator(mode="after")
    def _freshness_pair(self) -> "CompareConfig":
        if bool(self.freshness_documents) != bool(self.freshness_questions):
            raise ValueError("the freshness experiment needs both compare.freshness_documents and "
                             "compare.freshness_questions")
        if self.freshness_documents and self.endpoint:
            raise ValueError("the freshness experiment ingests the revised documents itself: run it without "
                             "compare.endpoint (against a server, post them to /v1/documents and compare again)")
        return self


class SynthConfig(_Closed):
    """``ragtune synth``: question/answer pairs written from the chunks of ``milvus.collection``, or of
    ``sources``."""

    sources: list[str] = Field(default_factory=list, description="Files, directories, globs or s3:// URIs to "
                               "write from, parsed and chunked as ingest does, with no collection; empty: the "
                               "chunks of milvus.collection.")
    questions_per_chunk: int = Field(2, ge=1, le=32, description="Answers picked per chunk (names, numbers, dates "
                                     "spread over its sentences); the generator writes one question for each.")
    max_chunks: int | None = Field(None, ge=1, description="Chunks drawn (seeded) from the collection; unset: all.")
    min_chunk_words: int = Field(30, ge=1, description="Shorter chunks (headings, captions) are skipped.")
    max_question_tokens: int = Field(48, ge=8, le=512, description="Longest question the generator may write.")
    roundtrip_recall: float = Field(0.75, ge=0, le=1, description="The generator then answers each question from "
                                    "its chunk; a pair is kept when that answer holds at least this share of the "
                                    "picked answer's words (0: no round trip).")
    duplicate_similarity: float = Field(0.8, gt=0, le=1, description="Questions whose word sets overlap this much "
                                        "(Jaccard) with a kept question are near duplicates and dropped.")
    unseen_document_fraction: float = Field(0.2, ge=0, lt=1, description="Share of documents (by hash) whose "
                                            "questions all go to eval_unseen.jsonl and none to training.")
    heldout_question_fraction: float = Field(0.2, ge=0, lt=1, description="Share of the other documents' "
                                             "questions (by hash) held out into eval_seen.jsonl.")
    seed: int = Field(0, description="Seed of the chunk sample and the splits.")
    output_dir: str | None = Field(None, description="Where train.jsonl, eval_seen.jsonl, eval_unseen.jsonl, "
                                   "eval.jsonl and stats.json go; unset: $RAGTUNE_HOME/synth/<collection>.")
    batch_size: int = Field(16, ge=1, le=512, description="Chunks per generation batch.")
    actors: int = Field(1, ge=1, le=1024, description="Generator actors (Ray Data map_batches concurrency).")
    cpus_per_actor: float = Field(1.0, gt=0, description="CPUs each generator actor reserves.")
    gpus_per_actor: float = Field(0.0, ge=0, description="GPUs each generator actor reserves.")


class RagtuneConfig(_Closed):
    """The configuration shared by ``ragtune`` commands and ``jobs/``."""

    milvus: MilvusConfig = MilvusConfig()
    embedding: EmbeddingConfig = EmbeddingConfig()
    chunking: ChunkingConfig = ChunkingConfig()
    validation: ValidationConfig = ValidationConfig()
    ingest: IngestConfig = IngestConfig()
    search: SearchConfig = SearchConfig()
    generator: GeneratorConfig = GeneratorConfig()
    prepare: PrepareConfig = PrepareConfig()
    train: TrainConfig = TrainConfig()
    serve: ServeConfig = ServeConfig()
    compare: CompareConfig = CompareConfig()
    synth: SynthConfig = SynthConfig()


def parse_override(item: str) -> tuple[list[str], Any]:
    """Parse ``key.sub=value``; the value is read as YAML (numbers, booleans, lists)."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {item!r}: expected key=value, e.g. --set embedding.batch_size=32")
    return key.strip().split("."), yaml.safe_load(raw) if raw.strip() else ""


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``key.sub=value`` strings to a parsed mapping in place; returns it.

    Raises:
        ConfigError: an override is not ``key=value`` or goes through a key that is not a section.
    """
    for item in overrides:
        path, value = parse_override(item)
        node = data
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {'.'.join(path)}: {part!r} is not a section")
        node[path[-1]] = value
    return data


def _describe(error: ValidationError, model: type[BaseModel], source: str) -> str:
    lines = [f"invalid configuration in {source}:"]
    for err in error.errors():
        loc = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            parent = model
            for part in err["loc"][:-1]:
                field = parent.model_fields.get(str(part))
                parent = field.annotation if field is not None else parent
            allowed = ", ".join(sorted(getattr(parent, "model_fields", {})))
            lines.append(f"  {loc}: unknown key; allowed keys here: {allowed}")
        else:
            lines.append(f"  {loc}: {err['msg']} (got {err.get('input')!r})")
    return "\n".join(lines)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                model: type[BaseModel] = RagtuneConfig) -> Any:
    """Load a YAML config (or defaults), apply ``key=value`` overrides, validate.

    Args:
        path: YAML file; ``None`` uses the defaults.
        overrides: ``key.sub=value`` strings applied after the file.
        model: the pydantic model the file must match.

    Raises:
        ConfigError: the file is missing, is not a mapping, or has an invalid key or value.
    """
    source = str(path) if path else "the default configuration"
    data = apply_overrides(read_yaml_mapping(path, "config file") if path else {}, overrides or [])
    if overrides:
        source += f" with --set {' '.join(overrides)}"
    return validate_config(data, source, model)


def read_yaml_mapping(path: str | Path, what: str) -> dict:
    """The YAML mapping in ``path`` (an empty file: ``{}``).

    Raises:
        ConfigError: the file is missing, is not valid YAML, or is not a mapping (named as ``what``).
    """
    try:
        loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} {path} is not valid YAML: {exc}") from None
    if loaded is not None and not isinstance(loaded, dict):
        raise ConfigError(f"{what} {path} must be a mapping of sections, got {type(loaded).__name__}")
    return loaded or {}


def validate_config(data: dict, source: str, model: type[BaseModel] = RagtuneConfig) -> Any:
    """Validate an already parsed mapping (e.g. a Serve application's ``args``).

    Raises:
        ConfigError: a key or value is invalid; the message names ``source``, the key and the fix.
    """
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, model, source)) from None
