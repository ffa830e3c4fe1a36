"""ragtune compare without models: question sets and their guards, scoring, and the report files
written from hand-made answers."""

import csv
import json

import pytest

from ragtune.config import load_config
from ragtune.core.metrics import token_f1
from ragtune.data.formats import DataError
from ragtune.eval.answers import ANSWER_METRICS, Answer, Question, check_arms, load_questions, score
from ragtune.eval.report import verdict, write_report


def _squad(path, n=10):
    qas = [{"id": f"q{i}", "question": f"What is item {i}?", "answers": [{"text": f"item {i}", "answer_start": 0}]}
           for i in range(n)]
    path.write_text(json.dumps({"data": [{"title": "T", "paragraphs": [{"context": "ctx", "qas": qas}]}]}))
    return path


def test_questions_load_sample_and_refuse_what_cannot_be_scored(tmp_path):
    questions = load_questions(_squad(tmp_path / "s.json"), sample=4, seed=1)
    assert len(questions) == 4 and questions == load_questions(tmp_path / "s.json", sample=4, seed=1)
    assert questions[0].doc_id == "T#0" and questions[0].answers == [f"item {questions[0].id[1:]}"]
    bad = tmp_path / "qa.jsonl"
    bad.write_text('{"question": "Q1?", "answer": "A"}\n{"question": "Q2?", "answer": "  "}\n')
    with pytest.raises(DataError, match="1 question.*without a question or a gold answer"):
        load_questions(bad)
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DataError, match="is empty"):
        load_questions(tmp_path / "empty.jsonl", fmt="qa")
    with pytest.raises(DataError, match="does not exist"):
        load_questions(tmp_path / "missing.json")


def test_arms_are_checked_before_any_model_loads(tmp_path):
    with pytest.raises(ValueError, match="unknown arm.*oracle"):
        check_arms(["base", "oracle"], None)
    with pytest.raises(ValueError, match="ft, hybrid answer with an adapter"):
        check_arms(["base", "ft", "hybrid"], None)
    with pytest.raises(ValueError, match="adapter .* holds no adapter"):
        check_arms(["ft"], str(tmp_path))
    check_arms(["base", "rag"], None)


def test_score_has_retrieval_metrics_only_for_retrieving_arms_with_a_gold_document():
    q = Question("1", "Where?", ["Paris"], "doc-b")
    a = Answer("1", "In Paris.", retrieved=["doc-a", "doc-b", "doc-b"])
    rag = score(q, a, "rag", k=4, semantic=0.9)
    assert rag["exact_match"] == 0 and rag["f1"] == pytest.approx(2 / 3) and rag["hit_at_k"] == 1
    assert rag["mrr"] == 0.5
    assert "hit_at_k" not in score(q, a, "base", k=4, semantic=0.9) and rag["semantic"] == 0.9
    assert score(q, a, "rag", k=1, semantic=0.9)["hit_at_k"] == 0


def test_semantic_similarity_credits_a_right_answer_in_other_words():
    from ragtune.config import EmbeddingConfig
    from ragtune.embedding import load_encoder
    from ragtune.eval.answers import semantic_similarity

    questions = [Question(str(i), "How long is the warranty?", ["2 years", "two-year warranty"]) for i in range(4)]
    answers = [Answer("0", "The warranty lasts two years."), Answer("1", "2 years"),
               Answer("2", "Phone support is closed on Sundays."), Answer("3", " ")]
    right_words, exact, wrong, empty = semantic_similarity(load_encoder(EmbeddingConfig()), questions, answers)
    assert exact == pytest.approx(1.0, abs=1e-5) and empty == 0.0
    assert right_words > 0.6 > wrong  # where token F1 gives the sentence 0.33 and the wrong answer 0
    assert token_f1("The warranty lasts two years.", ["2 years", "two-year warranty"]) < 0.4


def test_report_files_tables_verdict_and_plots(tmp_path):
    cfg = load_config(overrides=["compare.arms=[base, rag]", f"compare.output_dir={tmp_path / 'report'}",
                                 "compare.bootstrap_samples=500", "compare.price_per_hour=3.6"])
    questions = [Question(str(i), f"Q{i}?", [f"answer {i}"], f"d{i}") for i in range(60)]
    answers = {  # rag right 50 times, base 5 times: a clear, significant win
        "base": [Answer(q.id, q.answers[0] if i < 5 else "no idea", prompt_tokens=40, completion_tokens=3, seconds=0.5)
                 for i, q in enumerate(questions)],
        "rag": [Answer(q.id, q.answers[0] if i < 50 else "no idea", retrieved=[q.doc_id], prompt_tokens=300,
                       completion_tokens=3, seconds=0.8) for i, q in enumerate(questions)],
    }
    out = write_report(cfg, questions, answers, {"base": 30.0, "rag": 48.0})
    report = json.loads((out / "report.json").read_text())
    assert report["arms"]["rag"]["metrics"]["exact_match"]["mean"] == pytest.approx(100 * 50 / 60, abs=1e-3)
    assert report["arms"]["rag"]["metrics"]["hit_at_k"]["mean"] == 100
    assert "hit_at_k" not in report["arms"]["base"]["metrics"]
    em = report["differences"]["base - rag"]["exact_match"]
    assert em["high"] < 0 and em["p_value"] < 0.001
    # 3.6 per hour = 0.001 per second; 48 s for 60 questions on 1 actor → 0.8 per 1,000 questions
    assert report["arms"]["rag"]["cost_per_1000_questions"] == pytest.approx(0.8)
    assert report["verdict"][0].startswith("**EM**: rag is highest") and "it beats base" in report["verdict"][0]
    tie = {arm: {"metrics": {m: {"mean": 0.0, "low": 0.0, "high": 0.0} for m in ANSWER_METRICS}}
           for arm in ("base", "rag")}
    assert verdict(tie, {})[0] == "**EM**: every arm scores 0.0; no arm is ahead."
    md = (out / "report.md").read_text()
    assert "## Verdict" in md and "| rag | 83.3 [" in md and "![answer metrics](metrics.png)" in md
    advice = report["recommendation"]
    assert advice["arm"] == "rag" and advice["significant"] and advice["headline"].startswith("Use **rag** for this data")
    assert advice["reasons"][1].startswith("It is significantly ahead of base (F1 +75.0 [")
    assert md.split("\n")[2:5] == ["## Recommendation", "", advice["headline"]]  # the report opens with it
    rows = list(csv.DictReader(open(out / "questions.csv", encoding="utf-8")))
    assert len(rows) == 60 and rows[0]["rag_answer"] == "answer 0" and rows[59]["rag_exact_match"] == "0.0"
    for png in ("metrics.png", "quality_vs_cost.png"):
        data = (out / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_a_set_of_seen_and_unseen_questions_is_scored_per_group_in_one_report(tmp_path):
    qa = tmp_path / "eval.jsonl"  # as synth writes eval.jsonl: each row says its group
    qa.write_text("".join(json.dumps({"id": f"q{i}", "question": f"Q{i}?", "answer": f"answer {i}", "doc_id": f"d{i}",
                                      "group": "seen" if i < 6 else "unseen"}) + "\n" for i in range(10)))
    questions = load_questions(qa)
    assert [q.group for q in questions] == ["seen"] * 6 + ["unseen"] * 4
    cfg = load_config(overrides=["compare.arms=[base, rag]", f"compare.output_dir={tmp_path / 'report'}",
                                 "compare.bootstrap_samples=200"])
    answers = {"base": [Answer(q.id, q.answers[0] if q.group == "seen" else "no idea") for q in questions],
               "rag": [Answer(q.id, "no idea", retrieved=[q.doc_id]) for q in questions]}
    out = write_report(cfg, questions, answers, {"base": 1.0, "rag": 1.0})
    groups = json.loads((out / "report.json").read_text())["groups"]
    assert {g: groups[g]["questions"] for g in groups} == {"seen": 6, "unseen": 4}
    assert groups["seen"]["arms"]["base"]["f1"]["mean"] == 100 and groups["unseen"]["arms"]["base"]["f1"]["mean"] == 0
    assert "hit_at_k" in groups["unseen"]["arms"]["rag"] and "hit_at_k" not in groups["unseen"]["arms"]["base"]
    md = (out / "report.md").read_text()
    assert "## By question group" in md and "seen documents, new questions (6): F1" in md
    assert "unseen documents (4): hit@4" in md and "| base | 100.0 [100.0, 100.0] |" in md


def test_without_a_significant_difference_the_recommendation_says_so(tmp_path):
    cfg = load_config(overrides=["compare.arms=[base, rag, ft]", f"compare.output_dir={tmp_path / 'report'}",
                                 "compare.bootstrap_samples=500"])
    questions = [Question(str(i), f"Q{i}?", [f"answer {i}"], f"d{i}") for i in range(20)]
    right = {"base": range(0, 8), "rag": range(1, 10), "ft": range(2, 9)}  # 8, 9 and 7 of 20: noise
    answers = {arm: [Answer(q.id, q.answers[0] if i in hits else "no idea", retrieved=[q.doc_id] if arm == "rag" else [])
                     for i, q in enumerate(questions)] for arm, hits in right.items()}
    fresh = {"facts": 2, "documents_updated": 1, "arms": {arm: {"after_update_share": {
        "new": {"mean": 50.0, "low": 0.0, "high": 100.0}, "old": {"mean": 0.0, "low": 0.0, "high": 0.0}},
        "before_update": {"new": 0, "old": 1, "neither": 1}, "after_update": {"new": 1, "old": 0, "neither": 1},
        "revised_document_retrieved": None} for arm in right}}
    out = write_report(cfg, questions, answers, {arm: 10.0 for arm in right}, freshness=fresh)
    advice = json.loads((out / "report.json").read_text())["recommendation"]
    assert advice["arm"] == "base" and not advice["significant"]
    assert advice["headline"].startswith("No approach is significantly better than base on these 20 questions")
    assert "It is not significantly different from rag (F1 " in advice["reasons"][1]
    assert advice["reasons"][-1].startswith("After 2 facts changed, it stated the new fact in 50% [0, 100]")


def test_each_arm_answers_with_its_adapter():
    from ragtune.config import ragtune_home
    from ragtune.eval.answers import adapter_for

    assert [adapter_for(a, "/a/closed", None) for a in ("base", "rag", "ft", "hybrid")] == [None, None, "/a/closed", "/a/closed"]
    assert adapter_for("hybrid", "/a/closed", "/a/context") == "/a/context" and adapter_for("ft", "/a/closed", "/a/context") == "/a/closed"
    # a bare name is the run name of an adapter `ragtune train` exported to $RAGTUNE_HOME/adapters
    assert adapter_for("ft", "closed", None) == str(ragtune_home() / "adapters" / "closed")
    with pytest.raises(ValueError, match=r"arm\(s\) ft answer"):
        check_arms(["ft", "hybrid"], None, "context")


def test_fact_updates_and_which_fact_an_answer_states(tmp_path):
    from ragtune.eval.answers import FactUpdate, load_fact_updates, which_fact

    u = FactUpdate("u1", "Above what order value is shipping free?", ("$50",), ("$75",))
    assert which_fact("Shipping is free above $75.", u) == "new"
    assert which_fact("Orders over $50 ship free", u) == "old"
    assert which_fact("It is free over $50, now $75", u) == "neither"
    assert which_fact("Free over $750", u) == "neither"  # whole tokens only
    warranty = FactUpdate("u3", "How long is the warranty?", ("2-year", "2 years"), ("3-year", "3 years"))
    assert which_fact("3 years.", warranty) == "new" and which_fact("A 2-year warranty", warranty) == "old"
    rows = tmp_path / "updates.jsonl"
    rows.write_text('{"question": "Q?", "answer_before": "a", "answer_after": ["b", "bee"]}\n')
    assert load_fact_updates(rows)[0].after == ("b", "bee")
    for bad in ('{"question": "Q2?"}', '{"question": "Q?", "answer_before": [], "answer_after": "b"}'):
        rows.write_text('{"question": "Q?", "answer_before": "a", "answer_after": "b"}\n' + bad + "\n")
        with pytest.raises(DataError, match="line 2: expected JSON with question, answer_before, answer_after"):
            load_fact_updates(rows)


def test_an_adapter_trained_on_evaluation_questions_is_flagged_first_in_the_verdict(tmp_path):
    from ragtune.eval.answers import training_overlap

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    questions = [Question(f"q{i}", f"What is item {i}?", [f"item {i}"]) for i in range(4)]
    assert training_overlap(str(adapter), questions)["checked"] is False  # no record: said, not guessed
    (adapter / "training_questions.txt").write_text("what is item 2\nsomething else\n")
    assert training_overlap(str(adapter), questions) == {"checked": True, "overlap": 1, "question_ids": ["q2"]}
    assert training_overlap(None, questions) is None

    cfg = load_config(overrides=["compare.arms=[base, ft]", f"compare.adapter={adapter}",
                                 f"compare.output_dir={tmp_path / 'report'}", "compare.bootstrap_samples=200"])
    answers = {arm: [Answer(q.id, q.answers[0] if arm == "ft" else "?", seconds=0.1) for q in questions]
               for arm in ("base", "ft")}
    out = write_report(cfg, questions, answers, {"base": 1.0, "ft": 1.0})
    report = json.loads((out / "report.json").read_text())
    assert report["leakage"]["ft"]["overlap"] == 1
    assert report["verdict"][0].startswith("**Warning**: the ft arm's adapter was trained or validated on 1 of the 4")
    assert "## Leakage check" in (out / "report.md").read_text() and "| ft | 1 of 4 |" in (out / "report.md").read_text()


def test_endpoint_settings_are_checked():
    with pytest.raises(ValueError, match="freshness experiment ingests the revised documents itself"):
        load_config(overrides=["compare.endpoint=http://127.0.0.1:8000", "compare.freshness_documents=d",
                               "compare.freshness_questions=q.jsonl"])
    check_arms(["ft"], "served-name", local=False)  # a server's adapter is a name, not a directory here


def test_compare_on_vllm_runs_through_a_ray_data_llm_processor_with_per_row_adapters(tmp_path):
    """generator.backend=vllm: the comparison's Ray Data LLM processor (vLLM engine, the arms'
    adapters loaded per row by name from their directory), configured from the compare section.
    Built here; it runs in the GPU tier (tests/gpu/test_compare_vllm.py)."""
    from ragtune.config import ConfigError, load_config
    from ragtune.eval.compare import vllm_processor

    for name in ("closed", "with-context"):
        (tmp_path / name).mkdir()
    cfg = load_config(overrides=[
        "generator.model=Qwen/Qwen2.5-7B-Instruct@a09a35458c702b33eeacc393d103063234e8bc28", "generator.backend=vllm",
        "generator.vllm.engine_kwargs={max_model_len: 4096, tensor_parallel_size: 2}", f"compare.adapter={tmp_path}/closed",
        f"compare.hybrid_adapter={tmp_path}/with-context", "compare.actors=3", "compare.batch_size=64", "compare.max_tokens=48"])
    processor, models = vllm_processor(cfg, cfg.compare.arms)
    config = processor.config
    assert config.model_source == "Qwen/Qwen2.5-7B-Instruct" and config.concurrency == 3 and config.batch_size == 64
    ours = {"enable_lora": True, "max_loras": 2, "max_model_len": 4096, "tensor_parallel_size": 2,
            "revision": "a09a35458c702b33eeacc393d103063234e8bc28"}
    assert {key: config.engine_kwargs[key] for key in ours} == ours
    assert config.dynamic_lora_loading_path == str(tmp_path)
    assert models == {"base": "Qwen/Qwen2.5-7B-Instruct", "rag": "Qwen/Qwen2.5-7B-Instruct", "ft": "closed",
                      "hybrid": "with-context"}
    other = tmp_path / "elsewhere" / "with-context"
    other.mkdir(parents=True)
    with pytest.raises(ConfigError, match="one directory"):
        vllm_processor(cfg.model_copy(update={"compare": cfg.compare.model_copy(update={"hybrid_adapter": str(other)})}),
                       cfg.compare.arms)


def test_the_judges_verdicts_and_its_reliability_are_reported(tmp_path):
    from ragtune.core.prompts import judge_correct_messages, judge_verdict

    assert [judge_verdict(r) for r in ("Yes.", " yes, it does", "No", "yesterday", "The answer is yes")] == [1, 1, 0, 0, 0]
    assert "Reference answer: 2 years\nCandidate answer: two years" in judge_correct_messages("How long?", "2 years",
                                                                                               "two years")[1]["content"]
    cfg = load_config(overrides=["compare.arms=[base, rag]", f"compare.output_dir={tmp_path / 'report'}",
                                 "compare.bootstrap_samples=500"])
    questions = [Question(str(i), f"Q{i}?", [f"answer {i}"], f"d{i}") for i in range(10)]
    answers = {"base": [Answer(q.id, "no idea", judged={"correct": float(i < 2)}) for i, q in enumerate(questions)],
               "rag": [Answer(q.id, q.answers[0], retrieved=[q.doc_id], judged={"correct": 1.0, "faithful": float(i < 5)})
                       for i, q in enumerate(questions)]}
    chance = [[1.0, 0.0], [0.0, 0.0]] * 10  # it always says no: right on the no pairs only
    out = write_report(cfg, questions, answers, {"base": 1.0, "rag": 1.0}, judge_known=chance)
    report = json.loads((out / "report.json").read_text())
    assert report["arms"]["base"]["metrics"]["judge_correct"]["mean"] == 20
    assert report["arms"]["rag"]["metrics"]["judge_faithful"]["mean"] == 50
    assert "judge_faithful" not in report["arms"]["base"]["metrics"]
    assert report["judge"]["known_pairs"] == 20 and report["judge"]["accuracy"]["mean"] == 50
    assert not report["judge"]["better_than_chance"]
    md = (out / "report.md").read_text()
    assert "| rag | 100.0 [100.0, 100.0] | 50.0 [" in md and "of 20 known pairs" in md
    assert "**not better than chance: its verdicts above say nothing about these answers**" in md
