"""Serving throughput, same run: completion tokens/s through ``POST /v1/chat/completions`` (mode
base, greedy, 128 tokens) with 1 client and with 8 concurrent clients, on serve_configs/local.yaml
(the default local server: the onnx backend) started by ``run_serve`` on a private local Ray
cluster; the ratio is what batching the concurrent answers buys. ``--set`` changes the
application's args, e.g. ``--set generator.backend=hf``.

    .venv/bin/python benchmarks/serve_throughput.py [--requests 16] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROMPTS = ["Explain in a few sentences why the sky is blue and why sunsets are red.",
           "Write a short paragraph about how to care for headphones.",
           "Describe what a return policy of an online shop usually says.",
           "Explain what noise cancelling in headphones does and how it works."]


def _ask(url: str, i: int) -> int:
    body = json.dumps({"model": "smollm2-135m-instruct", "max_tokens": 128, "temperature": 0,
                       "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
                       "ragtune": {"mode": "base"}}).encode()
    request = urllib.request.Request(f"{url}/v1/chat/completions", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=600) as reply:
        return json.loads(reply.read())["usage"]["completion_tokens"]


def _rate(url: str, clients: int, requests: int) -> dict[str, float]:
    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        tokens = sum(pool.map(lambda i: _ask(url, i), range(requests)))
    return {"clients": clients, "requests": requests, "tokens": tokens,
            "tokens_per_s": round(tokens / (time.perf_counter() - started), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    os.environ.setdefault("RAGTUNE_HOME", tempfile.mkdtemp(prefix="ragtune-serve-throughput-"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from ragtune.serve.runner import run_serve, stop_serve

    config = REPO / "serve_configs" / "local.yaml"
    http = run_serve(config, args.set)
    url = f"http://127.0.0.1:{http['port']}"
    try:
        _ask(url, 0)  # warm-up: the first answer
        one, eight = _rate(url, 1, args.requests // 2), _rate(url, 8, args.requests)
    finally:
        stop_serve(config)
    print(json.dumps({"one_client": one, "eight_clients": eight, "set": args.set}, indent=2))
    print(f"8 clients / 1 client tokens/s: {eight['tokens_per_s'] / one['tokens_per_s']:.2f}")


if __name__ == "__main__":
    main()
