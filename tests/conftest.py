"""Shared fixtures: an isolated RAGTUNE_HOME, a real milvus-lite server, a real local Ray cluster,
and a tiny real sentence-transformers model built on the fly."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Before anything imports ragtune, Ray or Hugging Face: isolated state, no network.
_HOME = Path(tempfile.mkdtemp(prefix="ragtune-test-home-"))
os.environ["RAGTUNE_HOME"] = str(_HOME)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
# DeepSpeed compiles its CPU shared-memory op on first use (about a minute): once per checkout.
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".cache" / "torch_extensions"))
import ragtune  # noqa: E402,F401 — sets OpenMP's passive waits before any test imports torch


def interruptible() -> None:
    """``preexec_fn`` for a command a test stops with Ctrl-C: SIGINT acts as a terminal's does even
    when pytest runs with SIGINT ignored (started in the background), which its children inherit —
    Python then installs no KeyboardInterrupt handler and the command never sees the Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# s3:// sources go to a local moto server (the `s3_bucket` fixture), set before Ray starts so
# that its workers inherit the endpoint and the fake credentials.
S3_PORT = free_port()
os.environ.update(AWS_ENDPOINT_URL=f"http://127.0.0.1:{S3_PORT}", AWS_ACCESS_KEY_ID="testing",
                  AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")

SHARED_DATA = REPO.parent / "shared" / "data"
KB_DIR = REPO / "platform" / "ragtune" / "quickstart" / "kb"
QA = REPO / "platform" / "ragtune" / "quickstart" / "qa.jsonl"


@pytest.fixture(scope="session")
def s3_bucket():
    """A real S3 API (moto) on 127.0.0.1 with an empty bucket; yields the bucket name."""
    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=S3_PORT, verbose=False)
    server.start()
    boto3.client("s3").create_bucket(Bucket="ragtune-test")
    yield "ragtune-test"
    server.stop()


@pytest.fixture(scope="session")
def milvus_port() -> int:
    """A real milvus-lite server for the whole session, started through ragtune, stopped at the end."""
    from ragtune.store.local import ensure_local_server, stop_local_server

    port = free_port()
    ensure_local_server(port)
    yield port
    stop_local_server()


@pytest.fixture(scope="session")
def ray_cluster():
    """One real local Ray cluster for the session (tests using it run serially)."""
    import ray

    ray.init(address="local", _node_ip_address="127.0.0.1", num_cpus=2, include_dashboard=False,
             logging_level="WARNING")
    yield
    ray.shutdown()


@pytest.fixture
def rt_config(milvus_port):
    """Default configuration against the session's server, with a fresh collection per test."""
    from ragtune.config import load_config

    return load_config(overrides=[f"milvus.local_port={milvus_port}",
                                  f"milvus.collection=t_{uuid.uuid4().hex[:12]}"])


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory) -> Path:
    """A real, randomly initialised 1-layer BERT sentence encoder (dim 32) with MiniLM's tokenizer."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    from transformers import AutoTokenizer, BertConfig, BertModel

    from ragtune.models import resolve

    raw = tmp_path_factory.mktemp("tiny-raw")
    tokenizer = AutoTokenizer.from_pretrained(resolve("minilm").path)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=512)
    BertModel(config).save_pretrained(raw, safe_serialization=True)
    tokenizer.save_pretrained(raw)
    out = tmp_path_factory.mktemp("tiny-encoder")
    SentenceTransformer(modules=[Transformer(str(raw), max_seq_length=128), Pooling(32)]).save(str(out))
    return out


RAY = str(Path(sys.executable).with_name("ray"))


TINY_LM_LAYERS = 2


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory) -> Path:
    """A real, randomly initialised 2-layer Llama (hidden 64) with SmolLM2's tokenizer and chat template."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from ragtune.data.render import load_chat_tokenizer
    from ragtune.models import resolve

    tokenizer = load_chat_tokenizer(resolve("smollm2-135m-instruct"))
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=TINY_LM_LAYERS,
        # a context of 2,048 like SmolLM2-135M's training length: the server refuses prompts past it, and
        # a rag prompt with four quickstart passages takes ~650 tokens
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
    out = tmp_path_factory.mktemp("tiny-lm")
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_lora(tiny_lm, tmp_path_factory) -> Path:
    """A LoRA adapter of the tiny Llama with non-zero weights (it changes the answers), saved as
    `ragtune train` saves one."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_lm),
                           LoraConfig(r=8, lora_alpha=64, target_modules=["q_proj", "v_proj", "down_proj"],
                                      init_lora_weights=False))
    out = tmp_path_factory.mktemp("tiny-lora")
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_dataset(tiny_lm, ray_cluster, tmp_path_factory):
    """The quickstart Q/A pairs plus an exact duplicate, with 5 questions named as an evaluation set,
    prepared for the tiny Llama once per session (the fine-tuning and multi-node tests train on it).
    Yields the dataset directory, its PrepareStats and the number of Q/A pairs."""
    import json

    from ragtune.config import load_config
    from ragtune.data import run_prepare

    work = tmp_path_factory.mktemp("finetune-data")
    rows = [json.loads(line) for line in QA.read_text().splitlines()]
    (work / "qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [*rows, rows[0]]))
    (work / "eval.jsonl").write_text("".join(json.dumps({"question": r["question"].upper(), "answer": "x"}) + "\n"
                                             for r in rows[10:15]))
    overrides = [f"generator.model={tiny_lm}", f"prepare.inputs=[{work / 'qa.jsonl'}]", f"prepare.output_dir={work / 'out'}",
                 f"prepare.exclude_questions=[{work / 'eval.jsonl'}]", "prepare.eval_holdout=6",
                 "prepare.validation_fraction=0.2"]
    stats = run_prepare(load_config(overrides=overrides))
    return work / "out", stats, len(rows)


def assert_adapter_reloads(tiny_lm: Path, adapter: Path, report: dict) -> None:
    """The exported adapter holds trained weights (lora_B starts at zero), reloads onto the tiny
    Llama, changes its logits, and passed the export check (an empty ZeRO-3 state dict fails it)."""
    import torch
    from safetensors.torch import load_file

    from ragtune.models import resolve
    from ragtune.train.driver import load_adapted

    weights = load_file(str(adapter / "adapter_model.safetensors"))
    lora_b = [v for k, v in weights.items() if "lora_B" in k]
    assert weights and lora_b and all(v.numel() for v in weights.values())
    assert max(float(v.abs().max()) for v in lora_b) > 0
    model = load_adapted(resolve(str(tiny_lm)), adapter)
    ids = torch.tensor([[1, 2, 3, 4, 5, 6]])
    with torch.no_grad():
        adapted = model(input_ids=ids).logits
        with model.disable_adapter():
            base = model(input_ids=ids).logits
    assert not torch.allclose(adapted, base)
    assert report["export_check"]["checked"] and report["export_check"]["max_abs_logit_diff"] < 1e-4


def pytest_sessionfinish(session, exitstatus):
    """Remove the session's RAGTUNE_HOME (its milvus-lite server is stopped by then)."""
    shutil.rmtree(_HOME, ignore_errors=True)


def hashes(store) -> dict:
    """doc id → content hash of a collection's documents (None: not exactly one complete version)."""
    return {doc_id: doc.doc_hash for doc_id, doc in store.documents().items()}
