"""`ragtune compare` end to end on the session's Ray cluster and milvus-lite: the quickstart
knowledge base ingested with MiniLM, a tiny Llama with a real (random) LoRA adapter, a few of the
quickstart questions through all four arms, and every output file checked."""

import csv
import json

from typer.testing import CliRunner

from ragtune.cli import app
from tests.conftest import KB_DIR, REPO

QA = REPO / "platform" / "ragtune" / "quickstart" / "qa.jsonl"
UPDATES = REPO / "platform" / "ragtune" / "quickstart" / "updates.jsonl"
UPDATES_DIR = REPO / "platform" / "ragtune" / "quickstart" / "kb_updates"


def _adapter(tiny_lm, out):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_lm),
                           LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    model.save_pretrained(out)
    return out


def test_compare_four_arms_writes_the_whole_report(ray_cluster, rt_config, tiny_lm, tmp_path):
    from ragtune.ingest import run_ingest

    cfg = rt_config.model_copy(update={"ingest": rt_config.ingest.model_copy(update={"sources": [str(KB_DIR)]})})
    run_ingest(cfg)
    adapter = _adapter(tiny_lm, tmp_path / "adapter")
    out = tmp_path / "report"
    result = CliRunner().invoke(app, [
        "compare", "--questions", str(QA), "--adapter", str(adapter), "--sample", "6", "--output", str(out),
        "--collection", cfg.milvus.collection, "--set", f"milvus.local_port={cfg.milvus.local_port}",
        "--set", f"generator.model={tiny_lm}", "--set", "compare.batch_size=3", "--set", "compare.max_tokens=8",
        "--set", "compare.bootstrap_samples=200", "--set", f"compare.freshness_documents={UPDATES_DIR}",
        "--set", f"compare.freshness_questions={UPDATES}"])
    assert result.exit_code == 0, result.output
    assert "## Verdict" in result.output and "report.md" in result.output
    report = json.loads((out / "report.json").read_text())
    assert report["questions"] == 6 and list(report["arms"]) == ["base", "rag", "ft", "hybrid"]
    for arm, summary in report["arms"].items():
        assert set(summary["metrics"]) >= {"exact_match", "f1", "rouge_l", "bleu"}
        assert ("hit_at_k" in summary["metrics"]) == (arm in ("rag", "hybrid"))
        assert summary["completion_tokens_mean"] > 0 and summary["latency_s"]["p50"] > 0
    # the collection's retrieval finds most questions' own document among the top 4
    assert report["arms"]["rag"]["metrics"]["hit_at_k"]["mean"] >= 50
    # retrieval puts the passages in the prompt; the adapter changes the answers
    assert report["arms"]["rag"]["prompt_tokens_mean"] > report["arms"]["base"]["prompt_tokens_mean"] + 100
    answers = [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()]
    by_arm = {arm: [a["text"] for a in answers if a["arm"] == arm] for arm in report["arms"]}
    assert by_arm["ft"] != by_arm["base"]
    assert len(report["differences"]) == 6 and len(report["verdict"]) == 4
    rows = list(csv.DictReader(open(out / "questions.csv", encoding="utf-8")))
    assert len(rows) == 6 and all(r["rag_retrieved"] for r in rows)
    for png in ("metrics.png", "quality_vs_cost.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    md = (out / "report.md").read_text()
    assert "| hybrid |" in md and "## Freshness" in md
    fresh = report["freshness"]
    assert fresh["facts"] == 5 and fresh["documents_updated"] == 5
    for arm in report["arms"]:
        assert sum(fresh["arms"][arm]["after_update"].values()) == 5
    # the revised documents are retrieved right after the update; base and ft retrieve nothing
    assert fresh["arms"]["rag"]["revised_document_retrieved"] >= 4 and fresh["arms"]["ft"]["revised_document_retrieved"] is None


def test_compare_refuses_an_adapter_arm_without_an_adapter_before_loading_anything(tmp_path):
    result = CliRunner().invoke(app, ["compare", "--questions", str(QA), "--arm", "base", "--arm", "ft"])
    assert result.exit_code == 2 and "ft answer with an adapter" in result.output
