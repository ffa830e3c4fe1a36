"""Choosing the generator backend: vllm is optional, and its settings are checked up front."""

import importlib.util

import pytest

from ragtune.config import ConfigError, load_config


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_vllm_backend_without_vllm_names_the_extra_and_the_alternative():
    from ragtune.serve.backends import make_backend

    with pytest.raises(RuntimeError, match=r"ragtune\[vllm\].*serve.backend=hf"):
        make_backend(load_config(overrides=["serve.backend=vllm"]))


def test_engine_kwargs_are_for_vllm_only_and_cannot_override_ragtunes_own():
    with pytest.raises(ConfigError, match="set serve.backend=vllm"):
        load_config(overrides=["serve.engine_kwargs={max_model_len: 4096}"])
    with pytest.raises(ConfigError, match=r"may not set \['max_loras'\]"):
        load_config(overrides=["serve.backend=vllm", "serve.engine_kwargs={max_loras: 2}"])
    cfg = load_config(overrides=["serve.backend=vllm", "serve.engine_kwargs={max_model_len: 4096}"])
    assert cfg.serve.engine_kwargs == {"max_model_len": 4096}
