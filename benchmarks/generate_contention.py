"""Greedy generation of SmolLM2-135M-Instruct (8 questions × 32 tokens, one batch) with a given
number of torch threads — run it beside a busy loop, at Ray's worker niceness, to see what a slow
day does to a worker that computes on 2 OpenMP threads:

    .venv/bin/python benchmarks/generate_contention.py 2                      # quiet
    benchmarks/slow_day.sh nice -n 15 .venv/bin/python benchmarks/generate_contention.py 2
    OMP_WAIT_POLICY=PASSIVE benchmarks/slow_day.sh nice -n 15 .venv/bin/python benchmarks/generate_contention.py 2

Prints the threads, OMP_WAIT_POLICY and the generation's wall time in seconds.
"""

from __future__ import annotations

import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    import torch

    from ragtune.core.prompts import qa_messages
    from ragtune.generation import Generator

    threads = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    torch.set_num_threads(threads)
    generator = Generator("smollm2-135m-instruct")
    questions = ["How much do the Aria ANC headphones cost?", "How long is the warranty on headphones?",
                 "Is phone support available on Sunday?", "How many days do I have to return a product?"] * 2
    conversations = [qa_messages(q) for q in questions]
    generator.generate(conversations[:2], 4, 2)  # warm-up
    started = time.perf_counter()
    generator.generate(conversations, 32, len(conversations))
    print(f"threads {threads} · OMP_WAIT_POLICY {os.environ.get('OMP_WAIT_POLICY', 'unset')} · "
          f"{time.perf_counter() - started:.2f} s")


if __name__ == "__main__":
    main()
