"""The local milvus-lite server: started on demand, reused, and clear errors when it cannot be."""

import json
import socket
import subprocess
import sys

import pytest

from ragtune.config import MilvusConfig, ragtune_home
from ragtune.store import LocalMilvusError, VectorStore
from ragtune.store.local import connect_uri, ensure_local_server
from tests.conftest import free_port, hashes


def test_server_is_reused_across_processes(milvus_port):
    state = json.loads((ragtune_home() / "milvus" / "server.json").read_text())
    code = ("from ragtune.store.local import ensure_local_server; "
            f"print(ensure_local_server({milvus_port}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"http://127.0.0.1:{milvus_port}"
    assert json.loads((ragtune_home() / "milvus" / "server.json").read_text())["pid"] == state["pid"]


def test_foreign_process_on_the_port_is_a_clear_error(milvus_port):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        with pytest.raises(LocalMilvusError, match=f"port {port} .* in use by another program.*local_port"):
            ensure_local_server(port)


def test_milvus_uri_selects_a_real_milvus(monkeypatch):
    monkeypatch.setenv("MILVUS_URI", "http://milvus.example:19530")
    monkeypatch.setenv("MILVUS_TOKEN", "root:secret")
    assert connect_uri(MilvusConfig(local_port=free_port())) == ("http://milvus.example:19530", "root:secret")


def test_store_modes_filters_and_model_check(rt_config):
    from ragtune.embedding import load_encoder

    encoder = load_encoder(rt_config.embedding)
    store = VectorStore(rt_config.milvus)
    store.ensure(encoder.name, encoder.dim, rt_config.milvus.bm25_stop_words)
    texts = {"returns": "You may return items within 30 days for a refund.",
             "shipping": "Parcels ship from Rotterdam in 3 to 5 business days.",
             "hours": "Support is open Monday to Friday from 8:00 to 20:00."}
    vectors = encoder.encode(list(texts.values()))
    store.upsert([{"id": f"c-{d}", "doc_id": d, "chunk_index": 0, "chunk_count": 1, "text": t,
                   "dense": v.tolist(), "title": d, "source": f"/kb/{d}", "doc_hash": "h", "metadata": {"n": i},
                   "version": 1, "origin": "ingest"}
                  for i, ((d, t), v) in enumerate(zip(texts.items(), vectors))])
    assert store.count() == 3  # Strong reads see the write immediately
    query = "how many days do I have to send something back"
    for mode in ("dense", "hybrid"):
        hits = store.search(encoder.encode([query]), [query], rt_config.search.model_copy(update={"mode": mode}), k=3)[0]
        assert hits[0].doc_id == "returns" and hits[0].source == "/kb/returns"
    bm25 = store.search(None, ["Rotterdam parcels"], rt_config.search.model_copy(update={"mode": "bm25"}), k=3)[0]
    assert [h.doc_id for h in bm25] == ["shipping"]
    filtered = store.search(encoder.encode([query]), [query], rt_config.search, k=3, filter='doc_id != "returns"')[0]
    assert "returns" not in {h.doc_id for h in filtered} and len(filtered) == 2
    with pytest.raises(ValueError, match="was built with embedding model 'sentence-transformers/all-MiniLM-L6-v2'"):
        store.check_model("some/other-model", 768)
    assert hashes(store) == {"returns": "h", "shipping": "h", "hours": "h"}
    assert [r["metadata"] for r in store.get(["c-shipping"])] == [{"n": 1}]
    assert store.delete_documents(["hours"]) == 1 and store.count() == 2
    store.drop()


def test_lookups_page_past_milvus_query_window(rt_config):
    """A document of 17,000 chunks (Milvus answers at most 16,384 rows per query): every lookup
    sees all of them, and deleting the document deletes all of them."""
    store = VectorStore(rt_config.milvus)
    store.ensure("test/model", 2, [])
    counts = {"big": 17_000, "small": 3}
    store.upsert({"id": f"{doc}-{i}", "doc_id": doc, "chunk_index": i, "chunk_count": n, "text": f"w{i}",
                  "dense": [1.0, float(i)], "title": "", "source": f"/{doc}", "doc_hash": "h", "metadata": {},
                  "version": 1, "origin": "ingest"} for doc, n in counts.items() for i in range(n))
    assert store._versions(["big", "small"]) == {("big", 1): (17_000, 17_000), ("small", 1): (3, 3)}  # all counted
    assert store.documents(["big", "small", "absent"]) == store.documents()
    assert len(store.query('doc_id == "big"')) == 17_000
    assert hashes(store) == {"big": "h", "small": "h"}
    assert store.delete_documents(["big"]) == 17_000 and store.count() == 3
    store.drop()


def test_a_read_shows_one_complete_version_and_looks_each_up_once(rt_config, monkeypatch):
    """Hits of two versions of one document: a read shows the newest complete one among them,
    never an incomplete one (a write in progress), never a mix; a version known whole is not
    looked up again, so a search of settled documents makes no query beyond the search."""
    store = VectorStore(rt_config.milvus.model_copy(update={"collection": "t_versions"}))
    store.ensure("test/model", 2, [])
    lookups: list[list[str]] = []
    versions = VectorStore._versions
    monkeypatch.setattr(VectorStore, "_versions", lambda self, ids, *a: lookups.append(list(ids)) or versions(self, ids, *a))

    def write(version: int, chunks: range, count: int = 3) -> None:
        store.upsert({"id": f"d-{version}-{i}", "doc_id": "d", "chunk_index": i, "chunk_count": count,
                      "text": f"v{version} part {i}", "dense": [1.0, 0.01 * i], "title": "", "source": "/d",
                      "doc_hash": str(version), "metadata": {}, "version": version, "origin": "api"} for i in chunks)

    def shown() -> set[str]:
        return {h.text.split()[0] for h in store.search([[1.0, 0.0]], [""], rt_config.search.model_copy(
            update={"mode": "dense"}), k=10)[0]}

    try:
        write(1, range(3))
        assert shown() == {"v1"} and len(lookups) == 1
        assert shown() == {"v1"} and len(lookups) == 1  # known whole: no lookup
        write(2, range(2))  # 2 of 3 chunks: a write in progress
        assert shown() == {"v1"} and shown() == {"v1"} and len(lookups) == 3  # the incomplete one, each time
        write(2, range(2, 3))
        assert shown() == {"v2"} and len(lookups) == 4  # whole now: the newest, alone
        assert store.settle(["d"], 2) == 3 and len(lookups) == 5  # the settle's own lookup
        assert shown() == {"v2"} and len(lookups) == 5
    finally:
        store.drop()


@pytest.mark.slow
def test_three_writers_flushing_at_once_all_finish_with_one_complete_version_each(rt_config):
    """Three threads, each with its own client, write the same three documents 400 times each (every
    write flushed): milvus-lite 3.2 refuses a few of the concurrent flushes ("current_seq is
    monotonic"), which ``flush`` asks again; no write fails, and each document keeps one version."""
    import threading

    from ragtune.store.collection import new_version

    cfg = rt_config.milvus.model_copy(update={"collection": "t_flush_race"})
    store = VectorStore(cfg)
    store.ensure("test/model", 2, [])
    docs, failures = ["a", "b", "c"], []

    def writer(name: str) -> None:
        mine = VectorStore(cfg)
        try:
            for round_ in range(400):
                for doc in docs:
                    version = new_version()
                    mine.write_document(doc, [{
                        "id": f"{doc}-{version}-{i}", "doc_id": doc, "chunk_index": i, "chunk_count": 3,
                        "text": f"{name} {round_} part {i}", "dense": [1.0, 0.1 * i], "title": "", "source": "",
                        "doc_hash": f"{name}{round_}", "metadata": {}, "version": version, "origin": "api"}
                        for i in range(3)], version)
        except Exception as exc:  # noqa: BLE001 - reported below
            failures.append(f"{name}: {exc!r}")
        finally:
            mine.close()

    threads = [threading.Thread(target=writer, args=(name,)) for name in ("w1", "w2", "w3")]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=600)
        assert not failures, failures
        for doc in docs:
            [(n, expected)] = store._versions([doc]).values()
            assert n == expected == 3
    finally:
        store.drop()


def test_writes_are_batched_by_bytes(rt_config):
    store = VectorStore(rt_config.milvus.model_copy(update={"max_request_bytes": 64 * 1024}))
    rows = [{"id": str(i), "doc_id": "d", "chunk_index": i, "chunk_count": 40, "text": "x" * 3000,
             "dense": [0.1] * 384, "title": "", "source": "", "doc_hash": "h", "metadata": {}, "version": 1,
             "origin": "ingest"} for i in range(40)]
    batches = list(store._batches_by_bytes(rows))
    sizes = [sum(4 * 384 + 3000 + 2 + 512 for _ in b) for b in batches]
    assert len(batches) > 1 and max(sizes) <= 64 * 1024 and sum(map(len, batches)) == 40


def test_stale_server_record_is_replaced(monkeypatch, tmp_path):
    """A record left by a server that died (pid gone) does not block a new start."""
    from ragtune.store.local import local_server_running, stop_local_server

    monkeypatch.setenv("RAGTUNE_HOME", str(tmp_path))
    port = free_port()
    (tmp_path / "milvus").mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / "milvus" / "server.json").write_text(json.dumps(
        {"pid": int(dead.stdout), "port": port, "data_dir": str(tmp_path / "milvus" / "data")}))
    assert not local_server_running(port)
    try:
        assert ensure_local_server(port) == f"http://127.0.0.1:{port}"
        assert local_server_running(port)
    finally:
        assert stop_local_server()
    assert not local_server_running(port)


def test_collections_survive_a_server_restart(monkeypatch, tmp_path):
    """milvus-lite brings collections back released after a restart; the store loads them."""
    from ragtune.store.local import stop_local_server

    monkeypatch.setenv("RAGTUNE_HOME", str(tmp_path))
    cfg = MilvusConfig(local_port=free_port(), collection="persisted")
    row = {"id": "c1", "doc_id": "d1", "chunk_index": 0, "chunk_count": 1, "text": "kept across restarts",
           "dense": [1.0] + [0.0] * 7, "title": "", "source": "", "doc_hash": "h", "metadata": {},
           "version": 1, "origin": "ingest"}
    try:
        store = VectorStore(cfg)
        store.ensure("m", 8, [])
        store.upsert([row])
        store.flush()
        store.close()
        assert stop_local_server()
        again = VectorStore(cfg)  # starts a new server on the same data
        assert again.exists() and again.count() == 1 and hashes(again) == {"d1": "h"}
    finally:
        stop_local_server()
