"""Fine-tuning inputs: formats, answer-only labels, length policy, packing, answer metrics, and the
checks that stop a bad training setup before it starts."""

import json
import shutil

import pytest

from ragtune.config import ConfigError, load_config
from ragtune.core.metrics import exact_match, token_f1
from ragtune.core.prompts import qa_messages
from ragtune.data.context import choose_passages
from ragtune.data.formats import DataError, detect_format, read_rows
from ragtune.data.render import IGNORE_INDEX, ChatRenderer, load_chat_tokenizer, pack
from ragtune.models import resolve
from ragtune.train.driver import TrainSetupError, plan_steps
from ragtune.train.lora import LoraTargetError, target_modules
from ragtune.train.loop import deepspeed_config
from tests.conftest import SHARED_DATA


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_squad_answer_metrics_follow_the_official_normalisation():
    assert exact_match("The Denver Broncos!", ["Denver Broncos"]) == 1.0
    assert token_f1("Denver Broncos won", ["Denver Broncos"]) == pytest.approx(0.8)
    assert token_f1("Carolina", ["Denver Broncos", "Broncos"]) == 0.0


def test_formats_are_detected_and_normalised(tmp_path):
    qa = _jsonl(tmp_path / "qa.jsonl", [{"question": "Q?", "answer": "A", "doc_id": "d1"}])
    alpaca = _jsonl(tmp_path / "a.jsonl", [{"instruction": "Translate", "input": "bonjour", "output": "hello"}])
    chat = _jsonl(tmp_path / "c.jsonl", [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hey"}]}])
    assert [detect_format(p, "auto") for p in (qa, alpaca, chat)] == ["qa", "alpaca", "chat"]
    assert read_rows(qa)[0]["doc_id"] == "d1"
    assert read_rows(alpaca)[0]["question"] == "Translate\n\nbonjour"
    assert json.loads(read_rows(chat)[0]["chat"])[-1]["content"] == "hey"


@pytest.mark.skipif(not (SHARED_DATA / "squad").exists(), reason="../shared/data is absent")
def test_squad_file_gives_one_row_per_question_with_its_paragraph():
    rows = read_rows(SHARED_DATA / "squad" / "dev-v1.1.part-a.json")
    assert len(rows) == 5696
    assert all(json.loads(r["answers"])[0] == r["answer"] and r["context"] and "#" in r["doc_id"] for r in rows)


def test_missing_column_names_the_file_and_the_fix(tmp_path):
    bad = _jsonl(tmp_path / "bad.jsonl", [{"question": "Q?", "response": "A"}])
    with pytest.raises(DataError, match=r"bad.jsonl.*needs column\(s\) answer \(found: question, response\)"):
        detect_format(bad, "auto")


def test_labels_cover_exactly_the_answer_and_its_end_of_turn(tiny_lm):
    renderer = ChatRenderer(str(tiny_lm), None, 512, "truncate")
    ids, labels = renderer.encode(qa_messages("Where is the Eiffel tower?", answer="In Paris"))
    learned = renderer.tokenizer.decode([t for t, l in zip(ids, labels) if l != IGNORE_INDEX])
    assert learned.startswith("In Paris<|im_end|>")
    prompt = renderer.tokenizer.apply_chat_template(qa_messages("Where is the Eiffel tower?"), tokenize=False,
                                                    add_generation_prompt=True)
    assert renderer.tokenizer.decode(ids).startswith(prompt)  # the prompt the model is served with


def test_length_policy_truncates_or_drops_and_counts(tiny_lm):
    import numpy as np

    def batch(question, answer):
        row = {"id": "1", "split": "train", "order_key": 0.5, "question": question, "answer": answer, "chat": "",
               "passages": ""}
        return {k: np.asarray([v], dtype=object) for k, v in row.items()}

    long_question, long_answer = batch("word " * 100, "yes"), batch("Why?", "because " * 100)
    cases = [("drop", long_question, "dropped_too_long"), ("truncate", long_question, "dropped_no_answer_left"),
             ("truncate", long_answer, "truncated")]
    for overflow, rows, status in cases:
        out = ChatRenderer(str(tiny_lm), None, 64, overflow)(rows)
        assert out["status"][0] == status
        if overflow == "truncate":
            assert len(out["input_ids"][0]) == 64 == out["n_tokens"][0]
    assert 0 < out["n_label_tokens"][0] < 64  # the kept part of the answer is still learned


def test_packing_restarts_positions_per_example():
    import numpy as np

    seqs = [np.arange(5), np.arange(4), np.arange(3)]
    packed = pack({"input_ids": seqs, "labels": seqs}, max_length=9)
    assert [len(x) for x in packed["input_ids"]] == [9, 3]
    assert list(packed["position_ids"][0]) == [0, 1, 2, 3, 4, 0, 1, 2, 3]


def test_model_without_chat_template_is_refused(tiny_lm, tmp_path):
    copy = tmp_path / "no-template"
    shutil.copytree(tiny_lm, copy)
    (copy / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((copy / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (copy / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(DataError, match="has no chat template"):
        load_chat_tokenizer(resolve(str(copy)))


def test_lora_targets_default_per_architecture_and_unknown_ones_are_refused(tiny_lm):
    model = resolve(str(tiny_lm))
    assert target_modules(load_config().train.lora, model)[:2] == ["q_proj", "k_proj"]
    bad = load_config(overrides=["train.lora.target_modules=[q_proj,query_key_value]"]).train.lora
    with pytest.raises(LoraTargetError, match=r"query_key_value do not exist.*some of: down_proj, gate_proj"):
        target_modules(bad, model)


@pytest.mark.parametrize("override,message", [
    ("train.deepspeed.offload_param=true", "offload_param needs ZeRO stage 3"),
    ("train.deepspeed.offload_optimizer=true", None),
])
def test_zero_offload_combinations(override, message):
    if message is None:
        assert load_config(overrides=[override]).train.deepspeed.offload_optimizer
        return
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=[override])
    with pytest.raises(ConfigError, match="needs ZeRO stage 1, 2 or 3"):
        load_config(overrides=["train.deepspeed.stage=0", "train.deepspeed.offload_optimizer=true"])


def test_custom_worker_resources_exclude_cpu_gpu_and_non_positive_amounts():
    assert load_config(overrides=["train.worker_resources={trainer: 1}"]).train.worker_resources == {"trainer": 1}
    with pytest.raises(ConfigError, match="worker_resources.GPU: set train.cpus_per_worker / train.use_gpu"):
        load_config(overrides=["train.worker_resources={GPU: 1}"])
    with pytest.raises(ConfigError, match=r"worker_resources.trainer must be > 0 \(got 0.0\)"):
        load_config(overrides=["train.worker_resources={trainer: 0}"])


def test_step_plan_and_deepspeed_config():
    cfg = load_config(overrides=["train.micro_batch_size=4", "train.gradient_accumulation_steps=2", "train.epochs=3"])
    assert plan_steps(cfg, train_rows=85, workers=2) == (15, 5)  # 42 rows per worker → 5 steps of 8
    with pytest.raises(TrainSetupError, match="do not fill one optimizer step"):
        plan_steps(cfg, train_rows=10, workers=2)
    ds = deepspeed_config(load_config(overrides=["train.deepspeed.stage=3", "train.deepspeed.offload_param=true"]).train,
                          bf16=False)
    assert ds["zero_optimization"]["offload_param"]["device"] == "cpu" and ds["bf16"] == {"enabled": False}


def test_context_passages_hold_the_gold_one_with_the_configured_probability():
    distractors = [f"distractor {i}" for i in range(6)]
    always = [choose_passages("gold", distractors, 3, 1.0, f"s{i}") for i in range(50)]
    never = [choose_passages("gold", distractors, 3, 0.0, f"s{i}") for i in range(50)]
    assert all(len(c) == 3 and c.count("gold") == 1 for c in always)
    assert {c.index("gold") for c in always} == {0, 1, 2}  # the gold passage is not always first
    assert all(c == distractors[:3] for c in never)
    half = sum("gold" in choose_passages("gold", distractors, 3, 0.5, f"s{i}") for i in range(400))
    assert 160 <= half <= 240
    assert choose_passages("gold", distractors, 3, 0.5, "x") == choose_passages("gold", distractors, 3, 0.5, "x")
    assert choose_passages("", distractors, 3, 1.0, "s") == distractors[:3]  # no gold text: distractors only
