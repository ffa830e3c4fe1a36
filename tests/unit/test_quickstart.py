"""The quickstart's configuration and the reuse rules its stages rely on (no Ray, no models)."""

import json

import pytest
import yaml

from ragtune.config import ConfigError, load_config
from ragtune.quickstart.demo import DEFAULT_CONFIG, QuickstartData, _sections, quickstart_config
from tests.conftest import REPO


def test_quickstart_trains_with_the_cpu_preset():
    """The demo's prepare and train settings are the CPU preset's (jobs/configs/train_cpu.yaml)."""
    demo = yaml.safe_load(DEFAULT_CONFIG.read_text())
    preset = yaml.safe_load((REPO / "jobs" / "configs" / "train_cpu.yaml").read_text())
    preset["prepare"].pop("inputs")
    assert demo["train"] == preset["train"] and demo["prepare"] == preset["prepare"]
    assert demo["generator"]["model"] == preset["generator"]["model"]  # the demo also picks its generation backend


def test_the_demo_is_wired_to_its_own_outputs():
    cfg = quickstart_config(None, [], QuickstartData())
    assert cfg.milvus.collection == "quickstart" and cfg.ingest.prune
    assert cfg.compare.questions.endswith("datasets/smollm2-quickstart-lora/eval.jsonl")
    assert cfg.compare.adapter.endswith("adapters/smollm2-quickstart-lora")
    assert cfg.compare.output_dir.endswith("quickstart/report")
    assert cfg.compare.freshness_documents.endswith("kb_updates") and cfg.compare.freshness_questions.endswith("updates.jsonl")
    # --set reaches every section, after the wiring
    changed = quickstart_config(None, ["train.run_name=mine", "compare.sample=5"], QuickstartData())
    assert changed.compare.adapter.endswith("adapters/mine") and changed.compare.sample == 5


def test_own_data_without_an_update_runs_no_freshness_experiment(tmp_path):
    docs, qa = tmp_path / "docs", tmp_path / "qa.jsonl"
    docs.mkdir()
    qa.write_text('{"question": "q?", "answer": "a"}\n')
    cfg = quickstart_config(None, [], QuickstartData(docs=docs, qa=qa, update_docs=None, updates=None))
    assert cfg.ingest.sources == [str(docs)] and cfg.prepare.inputs == [str(qa)]
    assert cfg.compare.freshness_documents is None and cfg.compare.freshness_questions is None


def test_own_documents_without_qa_pairs_train_and_compare_on_synthesized_ones(tmp_path):
    from ragtune.quickstart.demo import stages

    cfg = quickstart_config(None, [], QuickstartData(docs=tmp_path, qa=None, update_docs=None, updates=None))
    synthesized = cfg.synth.output_dir
    assert synthesized.endswith("quickstart/synth") and cfg.synth.max_chunks == 200
    assert cfg.prepare.inputs == [f"{synthesized}/train.jsonl"] and cfg.prepare.eval_holdout == 0
    assert cfg.compare.questions == f"{synthesized}/eval.jsonl"  # held-out questions and unseen documents' ones
    assert stages(True) == ("ingest", "synth", "train", "compare", "serve") and "synth" not in stages(False)


@pytest.mark.parametrize("field", ["docs", "qa", "updates"])
def test_a_missing_input_names_its_option(tmp_path, field):
    with pytest.raises(ConfigError, match=f"--{field} .*nope does not exist"):
        quickstart_config(None, [], QuickstartData(**{field: tmp_path / "nope"}))


def test_an_update_needs_both_halves(tmp_path):
    with pytest.raises(ConfigError, match="both --update-docs and --updates"):
        quickstart_config(None, [], QuickstartData(update_docs=None))


def test_a_finished_adapter_is_reused_only_for_the_same_data_and_settings(tmp_path):
    from ragtune.train.driver import finished_adapter
    from ragtune.train.report import REPORT_FILE, report_config

    cfg = load_config(overrides=[f"train.output_dir={tmp_path / 'adapter'}"])
    assert finished_adapter(cfg, "abc") is None  # nothing exported yet
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / REPORT_FILE).write_text(json.dumps({"dataset": {"fingerprint": "abc"},
                                                                  "config": report_config(cfg)}))
    reused = finished_adapter(cfg, "abc")
    assert reused is not None and reused.reused and reused.output_dir == tmp_path / "adapter"
    assert finished_adapter(cfg, "other-data") is None
    assert finished_adapter(cfg.model_copy(update={"train": cfg.train.model_copy(update={"epochs": 3})}), "abc") is None


def test_serve_overrides_reach_the_application_args_and_are_validated():
    from ragtune.serve.runner import DEFAULT_CONFIG as LOCAL, load_serve_config

    schema = load_serve_config(LOCAL, ["milvus.collection=quickstart", 'milvus={"local_port": 19999}'])
    assert schema.applications[0].args["milvus"] == {"local_port": 19999}
    schema = load_serve_config(LOCAL, ["milvus.collection=quickstart"])
    assert schema.applications[0].args["milvus"]["collection"] == "quickstart"
    with pytest.raises(ConfigError, match="(?s)--set milvus.colection=x.*allowed keys"):
        load_serve_config(LOCAL, ["milvus.colection=x"])


def test_the_summary_shows_only_the_headline_sections():
    md = "# title\n\nintro\n\n## Verdict\n\n- rag wins\n\n## Cost\n\n| x |\n\n## Freshness: changed\n\n| y |"
    assert _sections(md, ("## Verdict", "## Freshness")) == "## Verdict\n\n- rag wins\n\n## Freshness: changed\n\n| y |"


def test_a_report_is_reused_only_for_the_same_comparison_after_the_adapter(tmp_path):
    import os

    from rich.console import Console

    from ragtune.quickstart.demo import Quickstart

    cfg = quickstart_config(None, [], QuickstartData())
    demo = Quickstart(cfg, Console(), DEFAULT_CONFIG)
    training, report = tmp_path / "training_report.json", tmp_path / "report.json"
    training.write_text("{}")
    assert not demo._report_is_current(report, training)  # no report yet
    report.write_text(json.dumps({"config": cfg.compare.model_dump(), "generator": cfg.generator.model_dump()}))
    os.utime(training, (1, 1))
    assert demo._report_is_current(report, training)
    os.utime(report, (0, 0))  # the adapter was trained again after the report
    assert not demo._report_is_current(report, training)
    os.utime(report, None)
    other = cfg.model_copy(update={"compare": cfg.compare.model_copy(update={"max_tokens": 64})})
    assert not Quickstart(other, Console(), DEFAULT_CONFIG)._report_is_current(report, training)
    other = cfg.model_copy(update={"generator": cfg.generator.model_copy(update={"backend": "hf"})})
    assert not Quickstart(other, Console(), DEFAULT_CONFIG)._report_is_current(report, training)  # another backend


def test_synthesized_pairs_too_few_to_train_stop_the_demo_with_what_to_change(tmp_path):
    """The synth stage reuses the pairs of the same documents and settings, and stops when they
    cannot fill one optimizer step after the validation split (16 rows here: 2 workers × 8)."""
    from types import SimpleNamespace

    from rich.console import Console

    from ragtune.quickstart.demo import Quickstart

    cfg = quickstart_config(None, [f"synth.output_dir={tmp_path}"],
                            QuickstartData(docs=tmp_path, qa=None, update_docs=None, updates=None))
    demo = Quickstart(cfg, Console(file=open(tmp_path / "out.txt", "w")), DEFAULT_CONFIG, synthesize=True)
    demo.ingested = SimpleNamespace(new=0, changed=0, pruned=0)

    def stats(train: int) -> None:
        (tmp_path / "stats.json").write_text(json.dumps({
            "config": cfg.synth.model_dump(mode="json"), "generator": {"model": cfg.generator.model, "backend": "onnx"},
            "generated": 100, "kept": train + 4, "dropped": {"roundtrip": 96 - train},
            "questions": {"train": train, "eval_seen": 2, "eval_unseen": 2}, "documents": {"eval_unseen": 1}}))

    stats(17)  # 17 × 0.9 = 15.3 rows left to train after the validation split
    with pytest.raises(ConfigError, match=r"synth kept 21 of 100 .*too few to fine-tune \(16 training rows.*"
                                          r"--qa FILE.*generated\.jsonl"):
        demo.synth()
    stats(18)
    demo.synth()  # reused, and enough
    assert "reused the Q/A pairs" in (tmp_path / "out.txt").read_text()
