"""The `ragtune` CLI in-process (typer's runner) on the session's Ray cluster and Milvus server."""

import json

import pytest
from typer.testing import CliRunner

from ragtune import cli as cli_module
from ragtune.cli import app
from ragtune.ingest.parsers import ParseOptions, parse_file
from ragtune.ingest.sources import expand_sources, read_bytes
from tests.conftest import KB_DIR

pytestmark = pytest.mark.usefixtures("ray_cluster")
runner = CliRunner()


def cli(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def common(milvus_port, tmp_path):
    return ["--set", f"milvus.local_port={milvus_port}", "--collection", f"cli_{tmp_path.name[-20:].replace('-', '_')}"]


def test_bad_config_is_exit_2_with_the_key(common, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("chunking:\n  max_token: 100\n")
    result = cli("ingest", KB_DIR, "--config", bad, *common)
    assert result.exit_code == 2
    assert "chunking.max_token: unknown key" in result.output and "max_tokens" in result.output


def test_missing_source_is_exit_2(common, tmp_path):
    result = cli("ingest", tmp_path / "nowhere", *common)
    assert result.exit_code == 2 and "does not exist" in result.output


def test_too_many_rejections_is_exit_3_and_good_documents_are_kept(common, tmp_path, monkeypatch):
    corpus = tmp_path / "c"
    corpus.mkdir()
    (corpus / "good.md").write_text("# Good\n\nThe warehouse is in Rotterdam.")
    (corpus / "empty.txt").write_bytes(b"")
    (corpus / "blob.txt").write_bytes(b"\x00\x01\x02")
    result = cli("ingest", corpus, *common, "--report-dir", tmp_path / "report")
    assert result.exit_code == 3, result.output
    assert "2 of 3 inputs rejected" in result.output
    assert len((tmp_path / "report" / "rejected.jsonl").read_text().splitlines()) == 2
    monkeypatch.setattr(cli_module.out, "width", 400)  # long source paths on one line
    search = cli("search", "where is the warehouse", "--mode", "bm25", *common)
    assert search.exit_code == 0 and "good.md" in search.output and "Rotterdam" in search.output
    assert str(corpus / "good.md") in search.output  # the source path


def test_search_without_collection_is_a_clear_error(common):
    result = cli("search", "anything", *common)
    assert result.exit_code == 2 and "does not exist" in result.output and "ragtune ingest" in result.output


def test_eval_retrieval_on_the_sample_kb_as_beir(common, tmp_path):
    """The sample knowledge base as a BEIR dataset: its questions must find their documents."""
    beir = tmp_path / "kb-beir"
    (beir / "qrels").mkdir(parents=True)
    with open(beir / "corpus.jsonl", "w") as fh:
        for entry in expand_sources([str(KB_DIR)]):
            doc = parse_file(entry, read_bytes(entry, 10**7), ParseOptions(10**7))[0][0]
            fh.write(json.dumps({"_id": doc.doc_id, "title": doc.title, "text": doc.text}) + "\n")
    qa = [json.loads(l) for l in (KB_DIR.parent / "qa.jsonl").read_text().splitlines()]
    (beir / "queries.jsonl").write_text("".join(json.dumps({"_id": q["id"], "text": q["question"]}) + "\n" for q in qa))
    (beir / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" +
                                             "".join(f"{q['id']}\t{q['doc_id']}\t1\n" for q in qa))
    result = cli("eval", "retrieval", "--beir", beir, *common)
    assert result.exit_code == 0, result.output
    scores = {line.split("│")[1].strip(): float(line.split("│")[2]) for line in result.output.splitlines()
              if line.count("│") >= 5 and line.split("│")[1].strip() in ("dense", "bm25", "hybrid")}
    assert set(scores) == {"dense", "bm25", "hybrid"}
    # measured 2026-11-23 (BENCHMARKS.md): dense 0.934, bm25 0.961, hybrid 0.959
    assert scores["dense"] > 0.88 and scores["bm25"] > 0.9 and scores["hybrid"] > 0.9
