"""generator.backend=onnx on a real model (the tiny Llama, converted by ONNX Runtime GenAI's builder):
converted once per node, greedy answers equal to transformers' on the same weights, a LoRA adapter
merged into a slot of its own that changes the answers, concurrent answers decoded together and each
equal to its answer alone, stop strings, and a cancelled answer that frees the engine."""

from __future__ import annotations

import asyncio
import time

import pytest

from ragtune.config import load_config
from tests.backend_checks import QUESTIONS, assert_stop_strings_and_hang_ups_end_a_turn


@pytest.fixture(scope="module")
def backends(tiny_lm):
    from ragtune.generation import make_backend

    overrides = [f"generator.model={tiny_lm}", "generator.backend=onnx", "generator.onnx.precision=fp32",
                 "generator.onnx.max_batch_size=4"]
    onnx = make_backend(load_config(overrides=overrides).generator)
    hf = make_backend(load_config(overrides=[f"generator.model={tiny_lm}", "generator.backend=hf"]).generator)
    yield onnx, hf
    onnx.close()


def test_the_model_is_converted_once_and_answers_as_transformers_does(backends, tiny_lm):
    from ragtune.config import ragtune_home
    from ragtune.generation import SamplingParams, make_backend

    onnx, hf = backends
    greedy = SamplingParams(max_tokens=12)
    for question in QUESTIONS[:2]:
        mine, theirs = asyncio.run(onnx.complete(question, greedy)), asyncio.run(hf.complete(question, greedy))
        assert mine.text == theirs.text and mine.completion_tokens == theirs.completion_tokens == 12
        assert mine.prompt_tokens == theirs.prompt_tokens == onnx.prompt_tokens(question)
        assert mine.finish_reason == "length"
    converted = sorted(p.name for p in (ragtune_home() / "models" / "onnx").iterdir() if p.is_dir())
    started = time.monotonic()
    again = make_backend(onnx.cfg)  # another replica on this node: the cached conversion
    assert time.monotonic() - started < 10
    assert sorted(p.name for p in (ragtune_home() / "models" / "onnx").iterdir() if p.is_dir()) == converted
    again.close()


def test_an_adapter_gets_a_slot_of_its_own_that_changes_the_answers(backends, tiny_lora):
    from ragtune.generation import AdapterError, SamplingParams

    onnx, hf = backends
    adapter = tiny_lora
    greedy = SamplingParams(max_tokens=10)

    async def run():
        await onnx.load_adapter("tuned#0", adapter)
        await hf.load_adapter("tuned#0", adapter)
        return (await onnx.complete(QUESTIONS[0], greedy, "tuned#0"), await hf.complete(QUESTIONS[0], greedy, "tuned#0"),
                await onnx.complete(QUESTIONS[0], greedy))

    tuned, reference, base = asyncio.run(run())
    assert tuned.text == reference.text and tuned.text != base.text
    onnx.unload_adapter("tuned#0")
    with pytest.raises(AdapterError, match="not loaded"):
        asyncio.run(onnx.complete(QUESTIONS[0], greedy, "tuned#0"))


def test_concurrent_answers_are_decoded_together_each_as_it_is_alone(backends):
    from ragtune.generation import SamplingParams

    onnx, _ = backends
    greedy = SamplingParams(max_tokens=16)
    alone = [asyncio.run(onnx.complete(q, greedy)).text for q in QUESTIONS]
    together = asyncio.run(onnx.generate(QUESTIONS, greedy))
    assert [c.text for c in together] == alone


def test_a_stop_string_ends_the_answer_and_a_cancelled_answer_frees_the_engine(backends):
    onnx, _ = backends
    assert_stop_strings_and_hang_ups_end_a_turn(onnx)
