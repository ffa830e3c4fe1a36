"""Choosing the generation backend: one `generator.backend`, one section per backend, checked up
front; vllm is optional; the fake backend (the test double of the serving tests) behaves as the tests
rely on; stop strings are cut from streamed text the same way for every backend."""

import asyncio
import importlib.util
import time

import pytest

from ragtune.config import ConfigError, load_config


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_vllm_backend_without_vllm_names_the_extra_and_the_alternative():
    from ragtune.generation import make_backend

    with pytest.raises(RuntimeError, match=r"ragtune\[vllm\].*generator.backend=hf"):
        make_backend(load_config(overrides=["generator.backend=vllm"]).generator)


def test_each_backend_section_is_for_its_backend_and_vllm_keeps_ragtunes_own_arguments():
    with pytest.raises(ConfigError, match="set generator.backend=vllm"):
        load_config(overrides=["generator.vllm.engine_kwargs={max_model_len: 4096}"])
    with pytest.raises(ConfigError, match=r"may not set \['max_loras'\]"):
        load_config(overrides=["generator.backend=vllm", "generator.vllm.engine_kwargs={max_loras: 2}"])
    cfg = load_config(overrides=["generator.backend=vllm", "generator.vllm.engine_kwargs={max_model_len: 4096}"])
    assert cfg.generator.vllm.engine_kwargs == {"max_model_len": 4096}
    with pytest.raises(ConfigError, match="set generator.backend=fake"):
        load_config(overrides=["generator.fake={token_interval_s: 0.1}"])
    with pytest.raises(ConfigError, match="set generator.backend=onnx"):
        load_config(overrides=["generator.onnx.precision=int4"])
    with pytest.raises(ConfigError, match="'llamacpp' is not one of hf, onnx, vllm, endpoint, fake"):
        load_config(overrides=["generator.backend=llamacpp"])
    with pytest.raises(ConfigError, match="generator.backend=endpoint needs generator.endpoint.base_url"):
        load_config(overrides=["generator.backend=endpoint"])
    # the backend moved from serve to generator (serving and comparison use the same one): said so
    with pytest.raises(ConfigError, match="move serve.backend to generator.backend"):
        load_config(overrides=["serve.backend=hf"])


def _fake(*overrides: str):
    from ragtune.generation import make_backend

    return make_backend(load_config(overrides=["generator.backend=fake", *overrides]).generator)


def test_the_fake_backend_answers_with_the_questions_words_and_its_adapters_name(tmp_path):
    from ragtune.generation import AdapterError, Completion, SamplingParams

    backend = _fake()
    question = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "How much is it"}]
    adapter = tmp_path / "brightwave"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")

    async def run():
        whole = await backend.complete(question, SamplingParams(max_tokens=6), None)
        pieces = [p async for p in backend.stream(question, SamplingParams(max_tokens=3), None)]
        await backend.load_adapter("brightwave#0", adapter)
        tuned = await backend.complete(question, SamplingParams(max_tokens=2), "brightwave#0")
        return whole, pieces, tuned

    whole, pieces, tuned = asyncio.run(run())
    assert whole == Completion("How much is it How much", prompt_tokens=6, completion_tokens=6, finish_reason="length")
    assert pieces == ["How", " much", " is", Completion("How much is", 6, 3, "length")]
    assert tuned.text == "[brightwave] How"
    with pytest.raises(AdapterError, match="holds no adapter"):
        asyncio.run(backend.load_adapter("other#1", tmp_path))


def test_a_cancelled_fake_answer_frees_the_generator_and_the_gate_holds_answers(tmp_path):
    """The gate holds an answer until the file exists; a timed-out answer (cancelled, as the Ingress
    cancels it) stops at once, so the next answer is not kept waiting behind it."""
    from ragtune.generation import SamplingParams

    gate = tmp_path / "gate"
    backend = _fake(f"generator.fake={{token_interval_s: 0.01, gate_file: {gate}}}")
    question = [{"role": "user", "content": "one two"}]

    async def run():
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(backend.complete(question, SamplingParams(max_tokens=10_000), None), 0.3)
        waiting = asyncio.ensure_future(backend.complete(question, SamplingParams(max_tokens=4), None))
        await asyncio.sleep(0.3)
        held = not waiting.done()
        gate.touch()
        started = time.monotonic()
        done = await asyncio.wait_for(waiting, 5)
        return held, done, time.monotonic() - started

    held, done, seconds = asyncio.run(run())
    assert held and done.text == "one two one two" and seconds < 2


def test_stop_strings_are_cut_from_streamed_text_even_when_split_across_pieces():
    from ragtune.generation.base import Completion, SamplingParams, Turn, turn_pieces

    async def reply(stop: list[str], pieces: list, max_tokens: int = 16):
        turn, cancelled = Turn([1, 2, 3], SamplingParams(max_tokens=max_tokens, stop=stop), asyncio.get_running_loop()), []
        for piece in pieces:
            turn.put(piece)
        return [item async for item in turn_pieces(turn, lambda: cancelled.append(True))], cancelled

    sent, cancelled = asyncio.run(reply(["END", "\n\n"], ["The answer", " is 4", "2 E", "N", "D and more"]))
    *text, done = sent
    assert "".join(text) == "The answer is 42 " == done.text and done.finish_reason == "stop"
    assert all("E" not in piece for piece in text)  # the split stop string was never partly sent
    assert cancelled == [True] and done.prompt_tokens == 3  # the engine is told to stop decoding
    sent, cancelled = asyncio.run(reply([], ["a", "b", ("length", 2)]))
    assert sent[:2] == ["a", "b"] and sent[2] == Completion("ab", 3, 2, "length") and not cancelled