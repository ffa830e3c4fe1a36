"""The ingest pipeline end to end: real Ray Data, real milvus-lite, the bundled encoder."""

import json
import random
import string

import pytest

from ragtune.ingest import run_ingest
from ragtune.store import CollectionMismatch, VectorStore
from tests.conftest import KB_DIR, hashes
from tests.pdfs import inflating_pdf, slow_pdf

pytestmark = pytest.mark.usefixtures("ray_cluster")


def with_sources(config, *sources, prune=False, **validation):
    return config.model_copy(update={
        "ingest": config.ingest.model_copy(update={"sources": [str(s) for s in sources], "prune": prune}),
        "validation": config.validation.model_copy(update=validation),
    })


def test_sample_kb_ingest_is_idempotent(rt_config, tmp_path):
    config = with_sources(rt_config, KB_DIR)
    first = run_ingest(config, tmp_path / "r1")
    store = VectorStore(config.milvus)
    count = store.count()
    assert first.files == first.documents == first.new == 26 and first.rejected == 0
    assert first.chunks_written == first.chunks_embedded == count >= 26
    # every chunk is findable by its document, with the title leading the text
    assert len(store.query('doc_id == "policies/warranty.pdf"')) >= 1
    second = run_ingest(config, tmp_path / "r2")
    assert (second.unchanged, second.new, second.changed) == (26, 0, 0)
    assert second.chunks_embedded == 0 and second.chunks_written == 0 and second.chunks_deleted == 0
    assert store.count() == count
    # script blocks never reach the index
    texts = [r["text"] for r in store.query('doc_id like "%.html"')]
    assert texts and not any("SECRET_TRACKING_SNIPPET" in t or "tracking pixel" in t for t in texts)


def _write_corpus(root, version):
    root.mkdir(exist_ok=True)
    for i in range(20):
        if version == 2 and i in (17, 18, 19):
            (root / f"doc{i:02d}.txt").unlink(missing_ok=True)
            continue
        token = f"v{version}tok{i:02d}" if (version == 1 or i < 10) else f"v1tok{i:02d}"
        (root / f"doc{i:02d}.txt").write_text(f"Document {i}. The unique marker is {token}.\n")


def test_update_ten_and_prune_three(rt_config, tmp_path):
    corpus = tmp_path / "corpus"
    _write_corpus(corpus, 1)
    config = with_sources(rt_config, corpus, prune=True)
    first = run_ingest(config, tmp_path / "r1")
    store = VectorStore(config.milvus)
    assert first.new == 20 and store.count() == 20
    old_hashes = {r["doc_id"]: r["doc_hash"] for r in store.query("chunk_index >= 0")}

    _write_corpus(corpus, 2)  # docs 0-9 change, 10-16 stay, 17-19 disappear
    second = run_ingest(config, tmp_path / "r2")
    assert (second.changed, second.unchanged, second.new, second.pruned) == (10, 7, 0, 3)
    assert second.chunks_embedded == second.chunks_written == 10
    assert second.chunks_deleted == 10 + 3
    assert store.count() == 17
    rows = {r["doc_id"]: r for r in store.query("chunk_index >= 0")}
    assert sorted(rows) == [f"doc{i:02d}.txt" for i in range(17)]
    for i in range(10):  # no stale chunk: neither by hash nor by its old words
        doc = f"doc{i:02d}.txt"
        assert rows[doc]["doc_hash"] != old_hashes[doc] and f"v2tok{i:02d}" in rows[doc]["text"]
        assert store.count(f'doc_hash == "{old_hashes[doc]}"') == 0
        hits = store.search(None, [f"v1tok{i:02d}"], config.search.model_copy(update={"mode": "bm25"}), k=5)[0]
        assert not any(f"v1tok{i:02d}" in h.text for h in hits)
    assert hashes(store) == {d: r["doc_hash"] for d, r in rows.items()}


def test_documents_spread_over_write_tasks_are_written_whole_and_settled(rt_config, tmp_path, monkeypatch):
    """Blocks of 16 KB and write requests of at most 64 KB: the chunks of one document reach
    several write tasks. A task settles the documents it wrote whole; the driver settles the spread
    ones (seen here: its own settle calls, in this process). Planted before the run: an older
    version of each long document, and for one of them also the first 2 of 5 chunks of a newer
    version (a run interrupted while writing it) — reads show the complete one, and the run redoes
    the document. Afterwards every document has one version, complete, and no older row."""
    from ragtune.indexing import chunk_row
    from ragtune.ingest import pipeline

    corpus = tmp_path / "long"
    corpus.mkdir()
    for n in range(3):
        (corpus / f"long{n}.md").write_text("\n\n".join(f"Paragraph {p} of file {n}. " + "filler " * 150
                                                      for p in range(40)))
    (corpus / "short.md").write_text("One short note.")
    config = with_sources(rt_config, corpus)
    config = config.model_copy(update={"milvus": config.milvus.model_copy(update={"max_request_bytes": 64 * 1024})})
    store = VectorStore(config.milvus)
    store.ensure("sentence-transformers/all-MiniLM-L6-v2", 384, config.milvus.bm25_stop_words)
    store.upsert(chunk_row(doc_id=f"long{n}.md", chunk_index=i, chunk_count=5, text=f"old {i}", dense=[1.0] + [0.0] * 383,
                           title="", source="old", doc_hash="old", metadata={}, model_name="m", version=1,
                           origin="ingest") for n in range(3) for i in range(5))  # an older version of each
    store.upsert(chunk_row(doc_id="long0.md", chunk_index=i, chunk_count=5, text=f"cut {i}", dense=[1.0] + [0.0] * 383,
                           title="", source="cut", doc_hash="cut", metadata={}, model_name="m", version=2,
                           origin="ingest") for i in range(2))  # an interrupted write of a newer one
    hits = store.search([[1.0] + [0.0] * 383], [""], config.search.model_copy(update={"mode": "dense"}), k=20,
                        filter='doc_id == "long0.md"')[0]
    assert sorted(h.text for h in hits) == [f"old {i}" for i in range(5)]  # never the incomplete version
    assert store.documents(["long0.md"])["long0.md"].doc_hash is None  # so the next run redoes it
    monkeypatch.setattr(pipeline, "_BLOCK_BYTES", 16 * 1024)
    settled_here: list[str] = []
    settle = VectorStore.settle
    monkeypatch.setattr(VectorStore, "settle", lambda self, ids, v: settled_here.extend(ids) or settle(self, ids, v))
    summary = run_ingest(config, tmp_path / "report")
    assert settled_here and set(settled_here) <= {"long0.md", "long1.md", "long2.md"}  # spread, settled here
    assert (summary.changed, summary.new, summary.chunks_deleted) == (3, 1, 15 + 2)
    versions = store._versions(["long0.md", "long1.md", "long2.md", "short.md"])
    assert sorted(d for d, _ in versions) == ["long0.md", "long1.md", "long2.md", "short.md"]  # one version each
    assert {v for _, v in versions} == {summary.version} and all(n == expected >= 1 for n, expected in versions.values())
    assert min(expected for (d, _), (_, expected) in versions.items() if d != "short.md") >= 20
    assert summary.chunks_written == sum(expected for _, expected in versions.values())


def test_malformed_corpus_every_file_classified(rt_config, tmp_path):
    corpus = tmp_path / "bad"
    corpus.mkdir()
    (corpus / "empty.txt").write_bytes(b"")
    (corpus / "image.txt").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(random.Random(0).randrange(256) for _ in range(4096)))
    (corpus / "latin1.txt").write_bytes("Caf\u00e9 cr\u00e8me".encode("latin-1"))
    (corpus / "nul.md").write_bytes(b"# Notes\nfine text\x00\x00 then NUL bytes\n")
    rng = random.Random(1)
    long_line = "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(2_000_000))
    (corpus / "long-line.txt").write_text(long_line)
    (corpus / "huge.txt").write_text("word " * 700_000)  # 3.5 MB > the 3 MB limit below
    (corpus / "page.html").write_text("<html><head><title>Page</title><script>steal('SCRIPT_CANARY')</script></head>"
                                      "<body><h1>Visible</h1><p>Visible paragraph.</p>"
                                      "<script>var x = 'SCRIPT_CANARY_2';</script></body></html>")
    (corpus / "good.md").write_text("# Good\n\nA perfectly normal document.\n")
    (corpus / "records.jsonl").write_text(json.dumps({"_id": "r1", "text": "record one"}) + "\n{not json\n")
    (corpus / "too-long.md").write_text("word " * 520_000)  # 2.6 M characters > max_document_chars below
    (corpus / "many-chunks.md").write_text("Many words here. " * 60_000)  # ~900 chunks > 600
    (corpus / "slow.pdf").write_bytes(slow_pdf())  # ~5 s of parsing > parse_timeout_s below
    (corpus / "inflating.pdf").write_bytes(inflating_pdf())  # 70 KB → 70 MB; ~1 GB and 20 s without limits
    config = with_sources(rt_config, corpus, max_file_bytes=3_000_000, max_document_chars=2_500_000,
                          parse_timeout_s=1.0, parse_memory_mb=256)
    config = config.model_copy(update={"chunking": config.chunking.model_copy(update={"max_chunks_per_document": 600})})
    summary = run_ingest(config, tmp_path / "report")

    rejected = [json.loads(l) for l in (tmp_path / "report" / "rejected.jsonl").read_text().splitlines()]
    by_source = {r["source"].rsplit("/", 1)[-1]: r["reason"] for r in rejected}
    assert by_source == {"empty.txt": "empty", "image.txt": "binary", "latin1.txt": "undecodable",
                         "nul.md": "binary", "huge.txt": "too_large", "records.jsonl:2": "parse_error",
                         "too-long.md": "too_large", "many-chunks.md": "too_large",
                         "slow.pdf": "parse_timeout", "inflating.pdf": "too_large"}
    details = {r["source"].rsplit("/", 1)[-1]: r["detail"] for r in rejected}
    assert details["too-long.md"] == "2599999 characters of text; the limit is validation.max_document_chars=2500000"
    assert details["many-chunks.md"].endswith(" chunks; the limit is chunking.max_chunks_per_document=600")
    store = VectorStore(config.milvus)
    ingested = set(hashes(store))
    assert ingested == {"long-line.txt", "page.html", "good.md", "r1"}
    # every input is either ingested or rejected, never both
    assert summary.documents + summary.rejected == len(ingested) + len(rejected)
    for name in ("empty.txt", "image.txt", "latin1.txt", "nul.md", "huge.txt", "too-long.md", "many-chunks.md",
                 "slow.pdf", "inflating.pdf"):
        assert store.count(f'doc_id == "{name}"') == 0
    long_chunks = store.query('doc_id == "long-line.txt"')
    assert len(long_chunks) >= 500 and all(len(r["text"]) <= 4000 for r in long_chunks)
    assert "".join(r["text"].split("\n\n", 1)[-1] for r in sorted(long_chunks, key=lambda r: r["chunk_index"])) == long_line
    page = " ".join(r["text"] for r in store.query('doc_id == "page.html"'))
    assert "Visible paragraph." in page and "SCRIPT_CANARY" not in page
    assert summary.reject_fraction == pytest.approx(10 / 14) and not summary.ok


def test_embedding_model_mismatch_fails_before_any_write(rt_config, tmp_path, tiny_encoder):
    corpus = tmp_path / "c"
    corpus.mkdir()
    (corpus / "a.md").write_text("# A\n\nalpha")
    config = with_sources(rt_config, corpus)
    run_ingest(config, tmp_path / "r1")
    store = VectorStore(config.milvus)
    before = hashes(store)
    (corpus / "a.md").write_text("# A\n\nalpha changed")
    (corpus / "b.md").write_text("# B\n\nbeta")
    other = config.model_copy(update={"embedding": config.embedding.model_copy(update={"model": str(tiny_encoder)})})
    with pytest.raises(CollectionMismatch, match="built with embedding model 'sentence-transformers/all-MiniLM-L6-v2'"):
        run_ingest(other, tmp_path / "r2")
    assert hashes(store) == before and store.count() == 1


def test_s3_prefix_ingests_like_a_directory(rt_config, tmp_path, s3_bucket):
    """s3:// sources are read through pyarrow's S3 filesystem (here a local moto endpoint)."""
    import boto3

    client = boto3.client("s3")
    for path in KB_DIR.rglob("*"):
        if path.is_file():
            client.upload_file(str(path), s3_bucket, f"kb/{path.relative_to(KB_DIR).as_posix()}")
    summary = run_ingest(with_sources(rt_config, f"s3://{s3_bucket}/kb"), tmp_path / "r")
    assert summary.files == summary.new == 26 and summary.rejected == 0
    store = VectorStore(rt_config.milvus)
    rows = store.query('doc_id == "policies/warranty.pdf"')
    assert rows[0]["source"] == f"s3://{s3_bucket}/kb/policies/warranty.pdf" and "2-year warranty" in rows[0]["text"]


def test_prune_keeps_documents_of_a_now_rejected_file(rt_config, tmp_path):
    """A corpus file that turns corrupt is rejected; --prune must not delete what it held."""
    corpus = tmp_path / "c"
    corpus.mkdir()
    (corpus / "corpus.jsonl").write_text("".join(json.dumps({"_id": f"r{i}", "text": f"record {i}"}) + "\n"
                                                 for i in range(3)))
    (corpus / "gone.md").write_text("# Gone\n\nsoon deleted")
    config = with_sources(rt_config, corpus, prune=True, max_reject_fraction=1.0)
    assert run_ingest(config, tmp_path / "r1").new == 4
    (corpus / "corpus.jsonl").write_bytes(b"\x00\x01 corrupted")
    (corpus / "gone.md").unlink()
    summary = run_ingest(config, tmp_path / "r2")
    assert summary.reject_reasons == {"binary": 1} and summary.pruned == 1
    assert sorted(hashes(VectorStore(config.milvus))) == ["r0", "r1", "r2"]


def test_duplicate_and_over_long_ids_are_rejected_whole(rt_config, tmp_path):
    """One relative path under two sources, a corpus `_id` on two lines, an id over the schema's
    1,024 bytes: each is rejected with every source named, nothing of it is written, and a version
    stored by an earlier run stays (not overwritten, not pruned)."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "guide.md").write_text("# Guide\n\nversion one of the guide")
    config = with_sources(rt_config, a, b, prune=True, max_reject_fraction=1.0)
    (b / "other.md").write_text("# Other\n\nanother document")
    first = run_ingest(config, tmp_path / "r1")
    assert first.new == 2 and first.rejected == 0
    stored = hashes(VectorStore(config.milvus))["guide.md"]

    (b / "guide.md").write_text("# Guide\n\na different guide with the same relative path")
    (a / "guide.md").write_text("# Guide\n\nversion two of the guide")
    long_id = "é" * 513  # 513 characters, 1,026 bytes
    (a / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [
        {"_id": "r1", "text": "first record one"}, {"_id": "r2", "text": "record two"},
        {"_id": "r1", "text": "second record one"}, {"_id": long_id, "text": "a record with a long id"}]))
    summary = run_ingest(config, tmp_path / "r2")
    rejected = {r["doc_id"]: r for r in map(json.loads, (tmp_path / "r2" / "rejected.jsonl").read_text().splitlines())}
    assert summary.reject_reasons == {"duplicate_id": 2, "id_too_long": 1} and summary.rejected == 3
    assert rejected["guide.md"]["detail"].startswith("document id 'guide.md' comes from 2 sources: ")
    assert str(a / "guide.md") in rejected["guide.md"]["detail"] and str(b / "guide.md") in rejected["guide.md"]["detail"]
    assert f"{a / 'corpus.jsonl'}:1" in rejected["r1"]["detail"] and f"{a / 'corpus.jsonl'}:3" in rejected["r1"]["detail"]
    assert "1026 bytes" in rejected[long_id]["detail"]
    assert summary.new == 1 and summary.unchanged == 1 and summary.pruned == 0  # r2; other.md
    store = VectorStore(config.milvus)
    assert hashes(store) == {"guide.md": stored, "other.md": hashes(store)["other.md"], "r2": hashes(store)["r2"]}
    assert store.count('doc_id == "r1"') == 0


def test_prune_leaves_documents_written_through_the_api_unless_asked(rt_config, tmp_path):
    """Documents written through the API record origin `api`: `--prune` deletes only ingested
    documents gone from the sources, and API documents too with ingest.prune_api_documents."""
    from ragtune.indexing import chunk_row
    from ragtune.store.collection import new_version

    corpus = tmp_path / "c"
    corpus.mkdir()
    (corpus / "kept.md").write_text("# Kept\n\nstill in the sources")
    (corpus / "gone.md").write_text("# Gone\n\nremoved from the sources below")
    config = with_sources(rt_config, corpus, prune=True)
    assert run_ingest(config, tmp_path / "r1").new == 2
    store = VectorStore(config.milvus)
    version = new_version()
    row = chunk_row(doc_id="api/note.md", chunk_index=0, chunk_count=1, text="written through the API",
                    dense=[0.1] * 384, title="", source="api:api/note.md", doc_hash="h", metadata={},
                    model_name="m", version=version, origin="api")
    assert store.write_document("api/note.md", [row], version) == (1, 0)
    (corpus / "gone.md").unlink()
    summary = run_ingest(config, tmp_path / "r2")
    assert summary.pruned == 1 and sorted(hashes(store)) == ["api/note.md", "kept.md"]
    asked = config.model_copy(update={"ingest": config.ingest.model_copy(update={"prune_api_documents": True})})
    assert run_ingest(asked, tmp_path / "r3").pruned == 1 and sorted(hashes(store)) == ["kept.md"]
