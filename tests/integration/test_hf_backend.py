"""generator.backend=hf on a real model (the tiny Llama): concurrent answers are decoded together in
one batch — base and adapter rows, different lengths — each equal to its answer alone; a seeded
sampled answer is reproducible among others; a stop string and a hang-up end a turn early."""

from __future__ import annotations

import asyncio

import pytest

from ragtune.config import load_config
from tests.backend_checks import QUESTIONS, assert_stop_strings_and_hang_ups_end_a_turn


@pytest.fixture(scope="module")
def hf(tiny_lm, tiny_lora):
    from ragtune.generation import make_backend

    backend = make_backend(load_config(overrides=[f"generator.model={tiny_lm}", "generator.backend=hf"]).generator)
    asyncio.run(backend.load_adapter("tuned#0", tiny_lora))
    batches = []
    decode = backend.model.decode
    backend.model.decode = lambda turns: (batches.append(len(turns)), decode(turns))[1]  # observed, not replaced
    yield backend, batches
    backend.close()


def test_concurrent_answers_are_one_batch_each_as_it_is_alone(hf):
    from ragtune.generation import SamplingParams

    backend, batches = hf
    calls = [(QUESTIONS[0], 12, None), (QUESTIONS[1], 5, "tuned#0"), (QUESTIONS[2], 16, None), (QUESTIONS[0], 9, "tuned#0")]
    alone = [asyncio.run(backend.complete(q, SamplingParams(max_tokens=n), slot)) for q, n, slot in calls]
    assert alone[0].text != asyncio.run(backend.complete(QUESTIONS[0], SamplingParams(max_tokens=12), "tuned#0")).text
    batches.clear()

    async def together():
        return await asyncio.gather(*(backend.complete(q, SamplingParams(max_tokens=n), slot) for q, n, slot in calls))

    answers = asyncio.run(together())
    assert batches == [4]  # decoded together, base and adapter rows in one batch
    assert [(a.text, a.completion_tokens, a.prompt_tokens, a.finish_reason) for a in answers] == \
        [(a.text, a.completion_tokens, a.prompt_tokens, a.finish_reason) for a in alone]
    assert [a.completion_tokens for a in answers] == [12, 5, 16, 9]


def test_a_seeded_sampled_answer_is_reproducible_beside_other_answers(hf):
    from ragtune.generation import SamplingParams

    backend, _ = hf
    seeded = SamplingParams(max_tokens=10, temperature=1.0, seed=7)

    async def run():
        return await asyncio.gather(backend.complete(QUESTIONS[1], seeded),
                                    backend.complete(QUESTIONS[2], SamplingParams(max_tokens=10, temperature=1.0)),
                                    backend.complete(QUESTIONS[3], SamplingParams(max_tokens=10)))

    first, second = asyncio.run(run())[0], asyncio.run(backend.complete(QUESTIONS[1], seeded))
    assert first.text == second.text


def test_a_stop_string_ends_the_answer_and_a_hang_up_frees_the_batch(hf):
    backend, _ = hf
    assert_stop_strings_and_hang_ups_end_a_turn(backend)
