"""Greedy generation of SmolLM2-135M-Instruct (8 questions × 32 tokens, one batch) with a given
number of torch threads — run it beside a busy loop, at Ray's worker niceness, to see what a slow
day does to a worker that computes on 2 OpenMP threads:

    .venv/bin/python benchmarks/generate_contention.py 2                      # quiet, ragtune's waits
    benchmarks/slow_day.sh nice -n 15 .venv/bin/python benchmarks/generate_contention.py 2
    benchmarks/slow_day.sh nice -n 15 .venv/bin/python benchmarks/generate_contention.py 2 openmp-default

The second argument picks OpenMP's wait policy: ``ragtune`` (default: what importing ragtune sets,
OMP_WAIT_POLICY=PASSIVE unless the environment says otherwise) or ``openmp-default`` (torch's
OpenMP loaded before ragtune, with OMP_WAIT_POLICY unset: libgomp spins before it sleeps).
Prints the threads, the policy and the generation's wall time in seconds.
"""

from __future__ import annotations

import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    policy = sys.argv[2] if len(sys.argv) > 2 else "ragtune"
    if policy not in ("ragtune", "openmp-default"):
        sys.exit(f"unknown policy {policy!r}: ragtune or openmp-default")
    if policy == "openmp-default":
        os.environ.pop("OMP_WAIT_POLICY", None)
        import torch  # noqa: F401 — OpenMP reads OMP_WAIT_POLICY as torch loads it: before ragtune sets it
    import asyncio

    import ragtune  # noqa: F401 — OMP_WAIT_POLICY=PASSIVE unless set (the "ragtune" policy)
    import torch

    from ragtune.config import load_config
    from ragtune.core.prompts import qa_messages
    from ragtune.generation import SamplingParams, make_backend

    threads = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    torch.set_num_threads(threads)
    generator = make_backend(load_config(overrides=["generator.backend=hf"]).generator)
    questions = ["How much do the Aria ANC headphones cost?", "How long is the warranty on headphones?",
                 "Is phone support available on Sunday?", "How many days do I have to return a product?"] * 2
    conversations = [qa_messages(q) for q in questions]
    asyncio.run(generator.generate(conversations[:2], SamplingParams(max_tokens=4)))  # warm-up
    started = time.perf_counter()
    asyncio.run(generator.generate(conversations, SamplingParams(max_tokens=32)))
    waits = "unset" if policy == "openmp-default" else os.environ["OMP_WAIT_POLICY"]
    print(f"threads {threads} · OMP_WAIT_POLICY {waits} · "
          f"{time.perf_counter() - started:.2f} s")


if __name__ == "__main__":
    main()
