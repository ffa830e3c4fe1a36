"""`ragtune synth` on a real collection (the quickstart documents) with the bundled SmolLM2-135M on
the hf backend: every generated pair is accounted for (kept, or dropped by a named check), the kept
ones are split by document and by question into QA jsonl files that prepare and compare read, and a
missing collection is a clear error before any model loads. (What it keeps on SQuAD, and the
comparison on it, are measured by benchmarks/synth_squad.py.)"""

from __future__ import annotations

import json

from typer.testing import CliRunner

from ragtune.cli import app
from ragtune.config import load_config
from ragtune.core.synth import DROP_REASONS, SPLITS
from ragtune.data.formats import read_rows
from ragtune.data.synth import run_synth
from ragtune.ingest import run_ingest
from tests.conftest import KB_DIR


def test_synth_accounts_for_every_pair_and_splits_the_kept_ones_by_document(rt_config, tmp_path, tiny_encoder,
                                                                             ray_cluster):
    out = tmp_path / "synth"
    cfg = load_config(overrides=[f"milvus.local_port={rt_config.milvus.local_port}",
                                 f"milvus.collection={rt_config.milvus.collection}", f"embedding.model={tiny_encoder}",
                                 f"ingest.sources=[{KB_DIR}]", "generator.backend=hf", "synth.max_chunks=5",
                                 "synth.unseen_document_fraction=0.3", f"synth.output_dir={out}"])
    run_ingest(cfg, tmp_path / "report")
    said = []
    stats = run_synth(cfg, progress=said.append).stats
    assert said and "answers picked" in said[0]
    assert stats["chunks"]["read"] == 5 and stats["generated"] >= 5
    assert stats["generated"] == stats["kept"] + sum(stats["dropped"].values())
    assert stats["dropped"]["no_question"] < stats["generated"]  # the model wrote questions
    assert sum(stats["questions"].values()) == stats["kept"]
    assert json.loads((out / "stats.json").read_text()) == stats

    generated = [json.loads(line) for line in (out / "generated.jsonl").read_text().splitlines()]
    assert len(generated) == stats["generated"]
    for row in generated:
        assert row["dropped"] in ("", *DROP_REASONS) and bool(row["split"]) == (not row["dropped"])
        assert (row["question"] == "") == (row["dropped"] == "no_question")
        # the round trip answered every question that passed the cheap checks
        assert bool(row["roundtrip"]) == (row["dropped"] in ("", "roundtrip", "duplicate")), row

    kept = {split: read_rows(out / f"{split}.jsonl", "qa") if (out / f"{split}.jsonl").read_text() else []
            for split in SPLITS}
    assert sorted(r["id"] for rows in kept.values() for r in rows) == sorted(r["id"] for r in generated if r["split"])
    for split, rows in kept.items():
        for r in rows:
            assert r["context"] and r["doc_id"] and r["answer"].lower() in r["context"].lower()
    unseen = {r["doc_id"] for r in kept["eval_unseen"]}
    assert not unseen & {r["doc_id"] for r in kept["train"] + kept["eval_seen"]}  # unseen documents never train
    assert (out / "eval.jsonl").read_text() == (out / "eval_seen.jsonl").read_text() + (out / "eval_unseen.jsonl").read_text()
    # the evaluation rows say their group, so that one comparison on eval.jsonl reports both
    assert {r["group"] for split in SPLITS for r in kept[split]} <= {"", "seen", "unseen"}
    assert all(r["group"] == {"train": "", "eval_seen": "seen", "eval_unseen": "unseen"}[split]
               for split in SPLITS for r in kept[split])


def test_synth_on_a_missing_collection_is_exit_2_naming_it(milvus_port):
    result = CliRunner().invoke(app, ["synth", "--collection", "never_ingested", "--set",
                                      f"milvus.local_port={milvus_port}"], catch_exceptions=False)
    assert result.exit_code == 2
    assert "collection 'never_ingested' does not exist" in result.output and "ragtune ingest" in result.output


def test_synth_from_sources_parses_and_chunks_them_as_ingest_does_with_no_collection(milvus_port, tmp_path,
                                                                                       ray_cluster):
    """`ragtune synth DIR`: the documents are parsed and chunked here (a rejected file is counted and
    named), no collection is made; the fake backend writes the questions (what is kept is not the
    subject here)."""
    import shutil

    from ragtune.store import VectorStore

    docs = tmp_path / "docs"
    shutil.copytree(KB_DIR, docs)
    (docs / "blob.txt").write_bytes(b"\x00\x01\x02")
    out, collection = tmp_path / "synth", "never_made"
    flags = ["--collection", collection, "--set", f"milvus.local_port={milvus_port}", "--set", "generator.backend=fake",
             "--set", "synth.max_chunks=4", "--set", "synth.roundtrip_recall=0", "--output", str(out)]
    result = CliRunner().invoke(app, ["synth", str(docs), *flags], catch_exceptions=False)
    assert result.exit_code in (0, 1), result.output  # 1: the fake backend's questions may all be dropped
    stats = json.loads((out / "stats.json").read_text())
    files = sum(1 for p in docs.rglob("*") if p.is_file())
    assert stats["sources"] == {"files": files, "rejected": 1} and stats["chunks"]["read"] == 4
    assert f"{files} files, 1 rejected" in result.output and stats["generated"] > 0
    generated = [json.loads(line) for line in (out / "generated.jsonl").read_text().splitlines()]
    assert {r["doc_id"] for r in generated} <= {str(p.relative_to(docs)) for p in docs.rglob("*") if p.is_file()}
    cfg = load_config(overrides=[f"milvus.local_port={milvus_port}", f"milvus.collection={collection}"])
    store = VectorStore(cfg.milvus)
    assert not store.exists()
    store.close()

    missing = CliRunner().invoke(app, ["synth", str(tmp_path / "nowhere"), *flags], catch_exceptions=False)
    assert missing.exit_code == 2 and "nowhere" in missing.output
