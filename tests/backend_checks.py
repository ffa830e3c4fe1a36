"""Checks every generation backend on a real model must pass (tests/integration/test_*_backend.py)."""

from __future__ import annotations

import asyncio
import time

QUESTIONS = [[{"role": "user", "content": q}] for q in ("How much do the Aria headphones cost?",
                                                        "Is phone support open on Sunday?",
                                                        "How long is the warranty?",
                                                        "Can I return a gift card?")]


def assert_stop_strings_and_hang_ups_end_a_turn(backend) -> None:
    """A stop string cuts the answer where it starts; a stream closed after its first piece frees
    the backend at once for the next answer."""
    from ragtune.generation import Completion, SamplingParams

    whole = asyncio.run(backend.complete(QUESTIONS[1], SamplingParams(max_tokens=12))).text
    stop = whole[len(whole) // 2:len(whole) // 2 + 2]
    cut = asyncio.run(backend.complete(QUESTIONS[1], SamplingParams(max_tokens=12, stop=[stop])))
    assert cut.text == whole[:whole.index(stop)] and cut.finish_reason == "stop"

    async def hang_up():
        stream = backend.stream(QUESTIONS[2], SamplingParams(max_tokens=1500))
        async for piece in stream:
            assert isinstance(piece, str)
            break
        await stream.aclose()
        started = time.monotonic()
        after = await backend.complete(QUESTIONS[3], SamplingParams(max_tokens=4))
        return after, time.monotonic() - started

    after, seconds = asyncio.run(hang_up())
    assert isinstance(after, Completion) and after.completion_tokens == 4 and seconds < 5
