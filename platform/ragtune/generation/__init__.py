"""Text generation with LoRA adapters, behind one interface (``GenerationBackend``) that serving,
comparison and every other text generator use.

A backend is the module ``ragtune.generation.<name>`` with a class ``Backend``, configured by the
section ``generator.<name>`` of the config; ``generator.backend`` names the one to use:

- ``hf``: transformers on CPU or GPU (``hf.py``);
- ``onnx``: ONNX Runtime GenAI on CPU, quantized, batching concurrent requests (``onnx.py``);
- ``vllm``: vLLM on GPUs, the optional ``vllm`` extra (``vllm.py``);
- ``endpoint``: a server with OpenAI's chat completions API, for batch generation (``endpoint.py``);
- ``fake``: a test double without a model (``fake.py``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from ragtune.generation.base import (
    AdapterError, Completion, GenerationBackend, Messages, SamplingParams, check_adapter, fetch_adapter,
)

if TYPE_CHECKING:
    from ragtune.config import GeneratorConfig

__all__ = ["AdapterError", "Completion", "GenerationBackend", "Messages", "SamplingParams", "check_adapter",
           "fetch_adapter", "make_backend"]


def make_backend(cfg: GeneratorConfig, slots: int = 4) -> GenerationBackend:
    """The backend ``cfg.backend`` on ``cfg.model``, keeping up to ``slots`` adapters loaded."""
    return importlib.import_module(f"ragtune.generation.{cfg.backend}").Backend(cfg, slots)
