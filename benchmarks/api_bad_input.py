"""A bad-input sweep of the HTTP API: every class of malformed request, the status and error code it
gets, then the server's health and a normal answer after all of them.

The graph is serve_configs/local.yaml (the bundled SmolLM2 and MiniLM) on a private local Ray
cluster, over the quickstart knowledge base ingested into a milvus-lite server of this run.

    .venv/bin/python benchmarks/api_bad_input.py            # prints a markdown table and JSON
"""

from __future__ import annotations

import http.client
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import yaml

from common import free_port, local_milvus

REPO = Path(__file__).resolve().parents[1]
KB = REPO / "platform" / "ragtune" / "quickstart" / "kb"
MODEL = "smollm2-135m-instruct"
ASK = {"model": MODEL, "max_tokens": 8, "ragtune": {"mode": "base"}, "messages": [{"role": "user", "content": "Hi"}]}


def request(port: int, method: str, path: str, body: bytes | dict | None = None,
            headers: dict[str, str] | None = None, chunked: bool = False) -> tuple[int, str, float]:
    """(status, error code or '', seconds) of one raw HTTP request."""
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    started = time.perf_counter()
    try:
        conn.putrequest(method, path, skip_host="Host" in (headers or {}))
        for key, value in {"Content-Type": "application/json", **(headers or {})}.items():
            conn.putheader(key, value)
        if data is not None and not chunked:
            conn.putheader("Content-Length", str(len(data)))
        if chunked:
            conn.putheader("Transfer-Encoding", "chunked")
        conn.endheaders()
        if data is not None:
            conn.send(b"%x\r\n%s\r\n0\r\n\r\n" % (len(data), data) if chunked else data)
        response = conn.getresponse()
        payload = response.read()
    finally:
        conn.close()
    try:
        code = (json.loads(payload).get("error") or {}).get("code") or ""
    except (ValueError, AttributeError):
        code = ""
    return response.status, code, round(time.perf_counter() - started, 3)


def cases() -> list[tuple[str, str, str, object, dict]]:
    """(class, method, path, body, options) of every malformed request."""
    chat, docs = "/v1/chat/completions", "/v1/documents"
    user = [{"role": "user", "content": "Hi"}]
    return [
        ("body is not JSON", "POST", chat, b"{not json", {}),
        ("no messages", "POST", chat, {"model": MODEL}, {}),
        ("empty messages", "POST", chat, {**ASK, "messages": []}, {}),
        ("last message not from the user", "POST", chat, {**ASK, "messages": [{"role": "assistant", "content": "x"}]}, {}),
        ("unknown role", "POST", chat, {**ASK, "messages": [{"role": "tool", "content": "x"}]}, {}),
        ("content not a string", "POST", chat, {**ASK, "messages": [{"role": "user", "content": 7}]}, {}),
        ("300 messages", "POST", chat, {**ASK, "messages": user * 300}, {}),
        ("temperature 5", "POST", chat, {**ASK, "temperature": 5}, {}),
        ("temperature a string", "POST", chat, {**ASK, "temperature": "hot"}, {}),
        ("top_p 0", "POST", chat, {**ASK, "top_p": 0}, {}),
        ("max_tokens 0", "POST", chat, {**ASK, "max_tokens": 0}, {}),
        ("max_tokens over serve.max_tokens_limit", "POST", chat, {**ASK, "max_tokens": 100_000}, {}),
        ("5 stop strings", "POST", chat, {**ASK, "stop": ["a", "b", "c", "d", "e"]}, {}),
        ("a 300-character stop string", "POST", chat, {**ASK, "stop": "x" * 300}, {}),
        ("seed -1", "POST", chat, {**ASK, "seed": -1}, {}),
        ("seed 2**64", "POST", chat, {**ASK, "seed": 2**64}, {}),
        ("unknown ragtune option", "POST", chat, {**ASK, "ragtune": {"mode": "base", "rerank": True}}, {}),
        ("unknown mode", "POST", chat, {**ASK, "ragtune": {"mode": "magic"}}, {}),
        ("top_k 1000", "POST", chat, {**ASK, "ragtune": {"mode": "rag", "top_k": 1000}}, {}),
        ("raw Milvus expression as filter", "POST", chat,
         {**ASK, "ragtune": {"mode": "rag", "filter": 'text_match(text, "x") or 1 == 1'}}, {}),
        ("filter syntax error", "POST", chat, {**ASK, "ragtune": {"mode": "rag", "filter": 'doc_id =='}}, {}),
        ("unknown model", "POST", chat, {**ASK, "model": "gpt-4"}, {}),
        ("unknown adapter", "POST", chat, {**ASK, "model": f"{MODEL}:nope", "ragtune": {"mode": "ft"}}, {}),
        ("unknown adapter, streamed", "POST", chat,
         {**ASK, "model": f"{MODEL}:nope", "ragtune": {"mode": "ft"}, "stream": True}, {}),
        ("mode ft without an adapter", "POST", chat, {**ASK, "ragtune": {"mode": "ft"}}, {}),
        ("prompt past the model's context (200,004 characters)", "POST", chat,
         {**ASK, "messages": [{"role": "user", "content": "lorem ipsum " * 16_667}]}, {}),
        ("body over serve.max_body_bytes (1.1 MB)", "POST", chat,
         {**ASK, "messages": [{"role": "user", "content": "x" * 1_100_000}]}, {}),
        ("no Content-Length (chunked body)", "POST", chat, ASK, {"chunked": True}),
        ("Host of a rebound DNS name", "POST", chat, ASK, {"headers": {"Host": "attacker.example:8000"}}),
        ("retrieve: empty query", "POST", "/v1/retrieve", {"query": ""}, {}),
        ("retrieve: raw Milvus expression", "POST", "/v1/retrieve", {"query": "x", "filter": "chunk_count > 0"}, {}),
        ("documents: none", "POST", docs, {"documents": []}, {}),
        ("documents: 1,001", "POST", docs, {"documents": [{"doc_id": f"d{i}", "text": "x"} for i in range(1001)]}, {}),
        ("documents: id over 1,024 bytes", "POST", docs, {"documents": [{"doc_id": "é" * 513, "text": "x"}]}, {}),
        ("documents: control character in id", "POST", docs, {"documents": [{"doc_id": "a\nb", "text": "x"}]}, {}),
        ("documents: blank text (indexes nothing)", "POST", docs, {"documents": [{"doc_id": "blank", "text": "  \n "}]}, {}),
        ("documents: unknown field", "POST", docs, {"documents": [{"doc_id": "a", "text": "x", "owner": "me"}]}, {}),
        ("delete an unknown document", "DELETE", f"{docs}/no/such/doc.md", None, {}),
        ("unknown route", "GET", "/v1/engines", None, {}),
        ("wrong method", "GET", chat, None, {}),
    ]


def main() -> None:
    os.environ["RAGTUNE_HOME"] = tempfile.mkdtemp(prefix="ragtune-bench-sweep-")
    from ragtune.config import load_config
    from ragtune.ingest import run_ingest
    from ragtune.serve.runner import run_serve, stop_serve

    with local_milvus() as milvus_port:
        cfg = load_config(overrides=[f"milvus.local_port={milvus_port}", "milvus.collection=sweep", f"ingest.sources=[{KB}]"])
        run_ingest(cfg)
        port = free_port()
        local = yaml.safe_load((REPO / "serve_configs" / "local.yaml").read_text())
        local["http_options"]["port"] = port
        local["applications"][0]["args"]["milvus"] = {"local_port": milvus_port, "collection": "sweep"}
        config = Path(os.environ["RAGTUNE_HOME"]) / "serve.yaml"
        config.write_text(yaml.safe_dump(local, sort_keys=False))
        run_serve(config)
        try:
            rows = []
            for name, method, path, body, options in cases():
                status, code, seconds = request(port, method, path, body, **options)
                rows.append({"class": name, "request": f"{method} {path}", "status": status, "code": code,
                             "seconds": seconds})
            health = request(port, "GET", "/healthz")
            answer = request(port, "POST", "/v1/chat/completions", {**ASK, "ragtune": {"mode": "rag"}})
        finally:
            stop_serve(config)
    print("| request class | status | error code | s |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['class']} | {r['status']} | {r['code'] or '–'} | {r['seconds']} |")
    print(f"\nafter all of them: GET /healthz {health[0]}, a rag answer {answer[0]} ({answer[2]} s)")
    print(json.dumps({"cases": rows, "healthz": health[0], "rag_answer": answer[0],
                      "command": f"{sys.executable} benchmarks/api_bad_input.py"}))


if __name__ == "__main__":
    main()
