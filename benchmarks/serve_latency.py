"""Serving overhead, same run: the Serve graph over HTTP vs the same work in one process.

1. Retrieval at SciFact scale (5,183 abstracts ingested into milvus-lite; hybrid search, top 10):
   ``POST /v1/retrieve`` (Ingress -> Retriever -> Embedder) against the in-process baseline
   (``TextEncoder.encode`` + ``VectorStore.search``, what the Retriever runs), each with 1, 4 and
   16 concurrent clients on the SciFact test queries: p50 / p99 latency and requests/s.
2. Chat generation: ``POST /v1/chat/completions`` (mode base, greedy) against transformers'
   ``model.generate`` on the same prompts in this process: completion tokens/s, one request at a time.

The graph is serve_configs/local.yaml on a private local Ray cluster. The collection is kept in
``--home`` (ingest is idempotent), so a second run skips the 8-minute ingest.

    .venv/bin/python benchmarks/serve_latency.py
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import psutil
import yaml

from common import free_port, local_milvus, tokens_per_second

REPO = Path(__file__).resolve().parents[1]
QUESTIONS = REPO / "platform" / "ragtune" / "quickstart" / "qa.jsonl"


def post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=600) as response:
        return json.load(response)


def load(call, queries: list[str], clients: int, requests: int) -> dict:
    """``requests`` calls spread over ``clients`` threads: latency percentiles and throughput."""
    latencies: list[float] = []
    lock = threading.Lock()
    counter = iter(range(requests))

    def client() -> None:
        while (i := next(counter, None)) is not None:
            started = time.perf_counter()
            call(queries[i % len(queries)])
            with lock:
                latencies.append(time.perf_counter() - started)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    latencies.sort()
    return {"p50_ms": round(1000 * statistics.median(latencies), 1),
            "p99_ms": round(1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))], 1),
            "requests_per_s": round(requests / wall, 1)}


def serve_config(port: int, milvus_port: int, collection: str) -> Path:
    local = yaml.safe_load((REPO / "serve_configs" / "local.yaml").read_text())
    local["http_options"]["port"] = port
    local["applications"][0]["args"]["milvus"] = {"local_port": milvus_port, "collection": collection}
    path = Path(tempfile.mkdtemp(prefix="ragtune-bench-serve-")) / "serve.yaml"
    path.write_text(yaml.safe_dump(local, sort_keys=False))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default="../shared/data/beir/scifact")
    parser.add_argument("--home", default=str(REPO / ".cache" / "bench-serve"), help="RAGTUNE_HOME kept between runs.")
    parser.add_argument("--requests", type=int, default=300, help="Retrieve requests per concurrency level.")
    parser.add_argument("--chat-questions", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args()
    corpus = Path(args.corpus)
    if not (corpus / "corpus.jsonl").exists():
        raise SystemExit(f"{corpus}/corpus.jsonl not found: run from the project root with ../shared/data beside it")
    os.environ["RAGTUNE_HOME"] = os.path.abspath(args.home)

    from ragtune.config import load_config
    from ragtune.core.prompts import qa_messages
    from ragtune.embedding import load_encoder
    from ragtune.ingest import run_ingest
    from ragtune.serve.runner import run_serve
    from ragtune.store import VectorStore

    with local_milvus() as milvus_port:
        cfg = load_config(overrides=[f"milvus.local_port={milvus_port}", "milvus.collection=bench_scifact",
                                     f"ingest.sources=[{(corpus / 'corpus.jsonl').resolve()}]"])
        started = time.perf_counter()
        summary = run_ingest(cfg)
        print(f"ingest: {summary.documents} documents in {time.perf_counter() - started:.0f} s", file=sys.stderr)
        store = VectorStore(cfg.milvus)
        store.flush()
        queries = [json.loads(line)["text"] for line in (corpus / "queries.jsonl").read_text().splitlines()]
        port = free_port()
        run_serve(serve_config(port, milvus_port, cfg.milvus.collection))
        url = f"http://127.0.0.1:{port}"

        encoder = load_encoder(cfg.embedding)
        calls = {
            "serve_http": lambda q: post(f"{url}/v1/retrieve", {"query": q, "top_k": 10}),
            "in_process": lambda q: store.search(encoder.encode([q]).tolist(), [q], cfg.search, k=10),
        }
        retrieval: dict[str, dict] = {}
        for clients in (1, 4, 16):
            for name, call in calls.items():
                load(call, queries, clients, 20)  # warm-up
                retrieval.setdefault(name, {})[f"{clients}_clients"] = load(call, queries, clients, args.requests)
                print(f"retrieve {name} {clients} clients: {retrieval[name][f'{clients}_clients']}", file=sys.stderr)
        for level, serve_run in retrieval["serve_http"].items():
            serve_run["throughput_ratio_vs_in_process"] = round(
                serve_run["requests_per_s"] / retrieval["in_process"][level]["requests_per_s"], 3)

        questions = [json.loads(line)["question"] for line in QUESTIONS.read_text().splitlines()][:args.chat_questions]
        chat = {"serve_http": chat_over_http(url, cfg.generator.model, questions, args.max_tokens),
                "raw_generate": raw_generate(cfg.generator.model, [qa_messages(q) for q in questions], args.max_tokens)}
        ratio = chat["serve_http"]["tokens_per_s"] / chat["raw_generate"]["tokens_per_s"]
    print(json.dumps({
        "machine": f"{platform.machine()}, {psutil.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB",
        "corpus": str(corpus), "documents": summary.documents, "search_mode": cfg.search.mode, "top_k": 10,
        "requests_per_level": args.requests, "retrieve": retrieval, "chat": chat,
        "chat_tokens_per_s_ratio_serve_over_raw": round(ratio, 3),
        "command": f"{sys.executable} benchmarks/serve_latency.py --requests {args.requests} "
                   f"--chat-questions {args.chat_questions} --max-tokens {args.max_tokens}",
    }, indent=2))


def chat_over_http(url: str, model: str, questions: list[str], max_tokens: int) -> dict:
    def ask(question: str) -> int:
        answer = post(f"{url}/v1/chat/completions", {
            "model": model, "max_tokens": max_tokens, "temperature": 0, "ragtune": {"mode": "base"},
            "messages": [{"role": "user", "content": question}]})
        return answer["usage"]["completion_tokens"]

    return tokens_per_second(ask, questions)


def raw_generate(model_ref: str, conversations: list[list[dict[str, str]]], max_tokens: int) -> dict:
    """transformers alone: the same model files, chat template and greedy decoding, no server."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ragtune.models import resolve

    path = resolve(model_ref).path
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()

    def generate(conversation: list[dict[str, str]]) -> int:
        ids = tokenizer.apply_chat_template(conversation, add_generation_prompt=True, return_tensors="pt",
                                            return_dict=True)["input_ids"]
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens,
                                 do_sample=False, pad_token_id=tokenizer.eos_token_id)
        return int(out.shape[1] - ids.shape[1])

    return {**tokens_per_second(generate, conversations), "torch_threads": torch.get_num_threads()}


if __name__ == "__main__":
    main()
