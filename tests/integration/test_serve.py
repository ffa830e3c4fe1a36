"""The Serve graph over real HTTP: serve_configs/local.yaml with the bundled SmolLM2 and MiniLM, the
quickstart knowledge base in milvus-lite, an adapter from a short `ragtune train`, and the
official openai client. A second application ("guarded") has an API key, a small body limit, a
generator that takes one request and queues one, and a Milvus that is down."""

import json
import threading
import time
import urllib.error
import urllib.request

import pytest
import yaml

from ragtune.config import load_config
from ragtune.serve.runner import load_serve_config, run_serve
from tests.conftest import KB_DIR, REPO, free_port

# Out of the default tier for now: passing alone (6 tests, 3 min) and after the fine-tuning,
# multi-node and job tests, but in one full fresh-clone run the fixture's first Ray call
# (ray.cluster_resources) never returned. Back in the default tier once that is understood.
pytestmark = pytest.mark.slow

QA = REPO / "platform" / "ragtune" / "quickstart" / "qa.jsonl"
KEY = "test-key-123"


def _app(base: dict, name: str, prefix: str, args: dict, generator: dict) -> dict:
    app = json.loads(json.dumps(base))
    app.update(name=name, route_prefix=prefix)
    for section, values in args.items():
        app["args"].setdefault(section, {}).update(values)
    for d in app["deployments"]:
        d["ray_actor_options"]["num_cpus"] = 0.05  # reservations only: both apps fit the 2-CPU test cluster
        if d["name"] == "Generator":
            d.update(generator)
    return app


@pytest.fixture(scope="module")
def server(ray_cluster, milvus_port, tmp_path_factory):
    from ray import serve

    from ragtune.ingest import run_ingest
    from ragtune.train import run_train

    work = tmp_path_factory.mktemp("serve")
    milvus = {"local_port": milvus_port, "collection": "t_serve"}
    cfg = load_config(overrides=[f"milvus.local_port={milvus_port}", "milvus.collection=t_serve",
                                 f"ingest.sources=[{KB_DIR}]", f"prepare.inputs=[{QA}]",
                                 f"prepare.output_dir={work / 'data'}", "prepare.validation_fraction=0",
                                 "train.run_name=serve-fixture", f"train.storage_path={work / 'runs'}",
                                 f"train.output_dir={work / 'adapters' / 'brightwave'}", "train.num_workers=1",
                                 "train.micro_batch_size=4", "train.max_steps=3", "train.learning_rate=5e-3",
                                 "train.warmup_ratio=0", "train.checkpoint_every=3", "train.eval_every=3"])
    run_ingest(cfg, work / "ingest")
    run_train(cfg)

    port = free_port()
    local = yaml.safe_load((REPO / "serve_configs" / "local.yaml").read_text())
    base = local["applications"][0]
    config = {**local, "http_options": {**local["http_options"], "port": port}, "applications": [
        _app(base, "ragtune", "/", {"milvus": milvus, "serve": {"adapters": str(work / "adapters")}}, {}),
        _app(base, "guarded", "/guarded",
             {"milvus": {"uri": f"http://127.0.0.1:{free_port()}", "timeout_s": 2, "collection": "t_serve"},
              "serve": {"api_key_env": "RAGTUNE_TEST_KEY", "max_body_bytes": 4096, "adapters": str(work / "adapters")}},
             {"max_ongoing_requests": 1, "max_queued_requests": 1}),
    ]}
    config["applications"][1]["runtime_env"] = {"env_vars": {"RAGTUNE_TEST_KEY": KEY}}
    path = work / "serve.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    run_serve(path)
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()


def _post(url: str, body: dict | bytes, key: str | None = None, method: str = "POST") -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data, headers=headers, method=method),
                                    timeout=300) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def test_every_shipped_serve_config_loads_with_rays_schema_and_imports():
    import importlib

    for path in sorted((REPO / "serve_configs").glob("*.yaml")):
        schema = load_serve_config(path)
        for application in schema.applications:
            module, _, attr = application.import_path.partition(":")
            assert callable(getattr(importlib.import_module(module), attr)), path
        header = [line for line in path.read_text().splitlines() if line.startswith("#")]
        assert any("Launch" in line for line in header), f"{path} has no launch command in its header"


def test_four_modes_with_the_openai_client(server):
    from openai import OpenAI

    client = OpenAI(base_url=f"{server}/v1", api_key="unused")
    models = [m.id for m in client.models.list().data]
    assert models == ["smollm2-135m-instruct", "smollm2-135m-instruct:brightwave"]
    question = [{"role": "user", "content": "How much do the Aria ANC headphones cost?"}]
    answers = {}
    for mode, model in [("base", models[0]), ("rag", models[0]), ("ft", models[1]), ("hybrid", models[1])]:
        r = client.chat.completions.create(model=model, messages=question, max_tokens=24,
                                           extra_body={"ragtune": {"mode": mode, "top_k": 3}})
        answers[mode] = r.choices[0].message.content
        extra = r.model_extra
        assert answers[mode].strip() and r.usage.completion_tokens > 0 and extra["ragtune"]["mode"] == mode
        if mode in ("rag", "hybrid"):
            assert len(extra["citations"]) == 3
            assert extra["citations"][0]["doc_id"] == "products/aria-headphones.md"
            assert r.usage.prompt_tokens > 150  # the documents block is in the prompt
        else:
            assert extra["citations"] == []
    assert answers["ft"] != answers["base"]  # the adapter changes the model
    assert "249" in answers["rag"]


def test_streaming_matches_the_whole_answer(server):
    from openai import OpenAI

    client = OpenAI(base_url=f"{server}/v1", api_key="unused")
    kwargs = dict(model="smollm2-135m-instruct", max_tokens=20, extra_body={"ragtune": {"mode": "rag"}},
                  messages=[{"role": "user", "content": "How long does the Aria battery last?"}])
    whole = client.chat.completions.create(**kwargs).choices[0].message.content
    chunks = list(client.chat.completions.create(stream=True, **kwargs))
    pieces = [c.choices[0].delta.content or "" for c in chunks]
    assert len([p for p in pieces if p]) > 3 and "".join(pieces) == whole
    assert chunks[-1].choices[0].finish_reason in ("stop", "length") and chunks[-1].model_extra["citations"]


def test_a_changed_document_is_cited_by_the_next_answer(server):
    # Dense search: milvus-lite keeps BM25 statistics per segment, so a just-written one-chunk
    # segment scores far below the old ones until they merge (a real Milvus keeps them global).
    changed = (KB_DIR / "products" / "aria-headphones.md").read_text().replace("$249", "$199")
    assert "$199" in changed
    started = time.monotonic()
    status, body = _post(f"{server}/v1/documents", {"documents": [
        {"doc_id": "products/aria-headphones.md", "title": "Aria ANC headphones", "text": changed}]})
    acknowledged = time.monotonic()
    assert status == 200 and body["documents"] == 1 and body["chunks"] >= 1
    assert acknowledged - started < 10  # chunked, embedded, written and flushed (first call loads the tokenizer)
    status, hits = _post(f"{server}/v1/retrieve", {"query": "How much do the Aria ANC headphones cost?", "top_k": 3,
                                                      "search_mode": "dense"})
    visible_after = time.monotonic() - acknowledged
    aria = [h["text"] for h in hits["data"] if h["doc_id"] == "products/aria-headphones.md"]
    assert aria and any("$199" in text for text in aria) and not any("$249" in text for text in aria)
    assert visible_after < 2.0, f"the new version was searchable {visible_after:.2f} s after the update returned"
    status, answer = _post(f"{server}/v1/chat/completions", {
        "model": "smollm2-135m-instruct", "max_tokens": 16, "ragtune": {"mode": "rag", "top_k": 3, "search_mode": "dense"},
        "messages": [{"role": "user", "content": "How much do the Aria ANC headphones cost?"}]})
    cited = [c["text"] for c in answer["citations"] if c["doc_id"] == "products/aria-headphones.md"]
    assert status == 200 and any("$199" in text for text in cited)
    status, gone = _post(f"{server}/v1/documents/products/aria-headphones.md", b"", method="DELETE")
    assert status == 200 and gone["chunks_deleted"] >= 1
    status, hits = _post(f"{server}/v1/retrieve", {"query": "Aria headphones price", "top_k": 5})
    assert status == 200 and all(h["doc_id"] != "products/aria-headphones.md" for h in hits["data"])


def test_guarded_app_key_size_validation_and_milvus_outage(server):
    url = f"{server}/guarded/v1/chat/completions"
    ask = {"model": "smollm2-135m-instruct", "max_tokens": 8, "messages": [{"role": "user", "content": "Hi"}]}
    assert _post(url, ask)[0] == 401
    assert _post(url, ask, key="wrong")[0] == 401
    status, body = _post(url, {**ask, "messages": [{"role": "user", "content": "x" * 5000}]}, key=KEY)
    assert status == 413 and body["error"]["code"] == "request_too_large"
    status, body = _post(url, {**ask, "temperature": 5}, key=KEY)
    assert status == 422 and body["error"]["param"] == "temperature"
    status, body = _post(url, {**ask, "ragtune": {"mode": "rag"}}, key=KEY)
    assert status == 503 and body["error"]["code"] == "retrieval_unavailable"
    status, body = _post(url, {**ask, "ragtune": {"mode": "base"}}, key=KEY)
    assert status == 200 and body["choices"][0]["message"]["content"]
    status, body = _post(f"{server}/guarded/v1/chat/completions", {**ask, "model": "smollm2-135m-instruct:brightwave",
                                                                   "ragtune": {"mode": "ft"}}, key=KEY)
    assert status == 200


def test_overload_answers_503_at_once_and_the_accepted_requests_finish(server):
    """The guarded generator runs 1 request and queues 1: of 6 concurrent long answers, 4 get 503."""
    url = f"{server}/guarded/v1/chat/completions"
    ask = {"model": "smollm2-135m-instruct", "max_tokens": 120, "ragtune": {"mode": "base"},
           "messages": [{"role": "user", "content": "Write a long story about a lighthouse."}]}
    results: list[tuple[int, float]] = []

    def one() -> None:
        started = time.monotonic()
        status, _ = _post(url, ask, key=KEY)
        results.append((status, time.monotonic() - started))

    threads = [threading.Thread(target=one) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    statuses = sorted(s for s, _ in results)
    assert statuses == [200, 200, 503, 503, 503, 503]
    slowest_rejection = max(t for s, t in results if s == 503)
    fastest_answer = min(t for s, t in results if s == 200)
    assert slowest_rejection < fastest_answer  # rejected at once, not after waiting

