"""Dataset preparation and LoRA training on a real local Ray cluster with a tiny real model:
ZeRO-2, adapter export and reload, training prompts with retrieved context; and (slow tier) ZeRO-3
with CPU offload surviving an injected worker failure — the default tier checks ZeRO-3 offload and
the resume from a registered checkpoint on two nodes, one of them lost (test_multinode.py)."""

import json
import subprocess
import sys

import pytest

from ragtune.config import load_config
from ragtune.core.metrics import normalize_answer
from ragtune.data import run_prepare
from ragtune.train import run_train
from tests.conftest import KB_DIR, QA, assert_adapter_reloads, free_port


def test_prepare_reports_duplicates_holdout_leakage_and_writes_parquet(tiny_dataset):
    import pyarrow.parquet as pq

    out, stats, n = tiny_dataset
    assert stats.input_rows == n + 1 and stats.duplicates_removed == 1
    assert stats.eval_holdout == 6 and len((out / "eval.jsonl").read_text().splitlines()) == 6
    assert stats.leakage_removed == 5 - len({json.loads(l)["question"] for l in (out / "eval.jsonl").read_text().splitlines()}
                                            & {json.loads(l)["question"] for l in QA.read_text().splitlines()[10:15]})
    assert stats.rows["train"] + stats.rows["validation"] == n - 6 - stats.leakage_removed
    table = pq.read_table(out / "train")
    assert table.num_rows == stats.rows["train"] and set(table.column_names) == {"input_ids", "labels"}
    assert sum(sum(1 for t in row if t != -100) for row in table.column("labels").to_pylist()) == stats.label_tokens["train"]
    assert json.loads((out / "stats.json").read_text())["fingerprint"] == stats.fingerprint
    # what compare's leakage check reads: every trained question, none of the held-out ones
    trained = set((out / "training_questions.txt").read_text().splitlines())
    held = {normalize_answer(json.loads(l)["question"]) for l in (out / "eval.jsonl").read_text().splitlines()}
    assert len(trained) == stats.rows["train"] + stats.rows["validation"] and not trained & held


def _train_overrides(tiny_lm, dataset, tmp_path, run, *extra) -> list[str]:
    return [f"generator.model={tiny_lm}", f"prepare.output_dir={dataset}", f"train.run_name={run}",
            f"train.storage_path={tmp_path / 'runs'}", f"train.output_dir={tmp_path / 'adapter'}",
            "train.micro_batch_size=4", "train.max_steps=8", "train.checkpoint_every=4", "train.eval_every=4",
            "train.learning_rate=1e-2", "train.warmup_ratio=0", *extra]


def _train_config(tiny_lm, dataset, tmp_path, run, *extra):
    return load_config(overrides=_train_overrides(tiny_lm, dataset, tmp_path, run, *extra))


@pytest.fixture(scope="module")
def zero2(tiny_lm, tiny_dataset, tmp_path_factory):
    """One ZeRO-2 run with two workers (8 steps, checkpoints at 4 and 8): (its work dir, its result)."""
    dataset, _, _ = tiny_dataset
    work = tmp_path_factory.mktemp("zero2")
    return work, run_train(_train_config(tiny_lm, dataset, work, "zero2"))


def test_zero2_two_workers_trains_and_exports_an_adapter_that_reloads(tiny_lm, tiny_dataset, zero2):
    dataset, _, _ = tiny_dataset
    work, result = zero2
    r = result.report
    assert r["steps"] == 8 and r["workers"] == 2 and r["tokens_per_second"] > 0
    assert r["final_loss"] < r["first_loss"]
    assert r["validation"][-1]["loss"] < r["validation"][0]["loss"]
    assert (result.output_dir / "loss_curve.png").stat().st_size > 1000
    assert json.loads((result.output_dir / "training_report.json").read_text())["steps"] == 8
    assert (result.output_dir / "training_questions.txt").read_text() == (dataset / "training_questions.txt").read_text()
    assert_adapter_reloads(tiny_lm, result.output_dir, r)
    # the same command again: the finished adapter is returned, its report (and wall time) untouched
    again = run_train(_train_config(tiny_lm, dataset, work, "zero2"))
    assert again.reused and again.report == json.loads((result.output_dir / "training_report.json").read_text()) == r


@pytest.mark.parametrize("change, named", [
    (["train.lora.r=4"], "train.lora.r: 16 → 4"),
    (["prepare.inputs=[{qa}]", "prepare.output_dir={other}"], "the prepared dataset's fingerprint: "),
], ids=["lora-rank", "data"])
def test_the_same_run_name_with_other_data_or_settings_is_refused(tiny_lm, tiny_dataset, zero2, change, named):
    """`ragtune train` under the name of a run with registered checkpoints, with a changed LoRA rank
    or other data: exit 2 naming what changed and the two ways out, before any training; the run's
    checkpoints and its adapter are left as they were."""
    from typer.testing import CliRunner

    from ragtune.cli import app

    dataset, _, _ = tiny_dataset
    work, result = zero2
    runs = work / "runs" / "zero2"
    kept = sorted(p.name for p in runs.iterdir())
    changed = [c.format(qa=QA, other=work / "other-data") for c in change]
    done = CliRunner().invoke(app, ["train", *(a for o in _train_overrides(tiny_lm, dataset, work, "zero2", *changed)
                                               for a in ("--set", o))])
    assert done.exit_code == 2, done.output
    message = " ".join(done.output.split())
    assert f"train.run_name 'zero2' has checkpoints in {runs} from another training" in message and named in message
    assert "Set a new train.run_name" in message and f"delete {runs} to start the run over" in message
    assert sorted(p.name for p in runs.iterdir()) == kept
    assert json.loads((result.output_dir / "training_report.json").read_text()) == result.report


@pytest.mark.slow
def test_zero3_offload_survives_an_injected_worker_failure(tiny_lm, tiny_dataset, tmp_path):
    dataset, _, _ = tiny_dataset
    cfg = _train_config(tiny_lm, dataset, tmp_path, "zero3", "train.deepspeed.stage=3",
                        "train.deepspeed.offload_optimizer=true", "train.deepspeed.offload_param=true",
                        "train.deepspeed.stage3_param_persistence_threshold=0", "train.fail_at_step=6")
    r = run_train(cfg).report
    assert r["steps"] == 8
    first, restart = r["attempts"]
    assert first["resumed_from_step"] == 0 and restart["resumed_from_step"] == 4
    assert 0 < restart["recomputed_steps"] < cfg.train.checkpoint_every
    assert_adapter_reloads(tiny_lm, tmp_path / "adapter", r)


@pytest.mark.slow
def test_a_resumed_run_on_multi_block_data_repeats_the_uninterrupted_loss_curve(tiny_lm, tiny_dataset, tmp_path):
    """Two workers, the training split in three parquet files (three blocks): a run whose last worker
    fails after step 6 resumes from its step-4 checkpoint and has, step for step, the loss curve of
    the same run without the failure — each worker got the same rows in the same order (shards in
    dataset order) and the resume skipped exactly the micro-batches the epoch had consumed."""
    import shutil

    import pyarrow.parquet as pq

    dataset, _, _ = tiny_dataset
    multi = tmp_path / "multi-block"
    shutil.copytree(dataset, multi)
    table = pq.read_table(dataset / "train")
    shutil.rmtree(multi / "train")
    (multi / "train").mkdir()
    third = -(-table.num_rows // 3)
    for i in range(3):
        pq.write_table(table.slice(i * third, third), multi / "train" / f"part-{i}.parquet")
    whole = run_train(_train_config(tiny_lm, multi, tmp_path / "whole", "order-whole")).report
    resumed = run_train(_train_config(tiny_lm, multi, tmp_path / "resumed", "order-resumed", "train.fail_at_step=6")).report
    assert [a["resumed_from_step"] for a in resumed["attempts"]] == [0, 4]
    assert [p["step"] for p in resumed["loss_curve"]] == [p["step"] for p in whole["loss_curve"]] == list(range(1, 9))
    for a, b in zip(whole["loss_curve"], resumed["loss_curve"]):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6, abs=1e-7), (a, b)


def test_with_context_puts_the_gold_documents_passage_among_the_retrieved_ones(tiny_lm, ray_cluster, milvus_port,
                                                                              tmp_path):
    """The quickstart questions over the ingested quickstart knowledge base, gold probability 1: every
    training prompt carries k passages, one of them from the question's own document."""
    import pyarrow.parquet as pq

    from ragtune.data.render import load_chat_tokenizer
    from ragtune.ingest import run_ingest
    from ragtune.models import resolve
    from ragtune.store import VectorStore

    cfg = load_config(overrides=[
        f"milvus.local_port={milvus_port}", "milvus.collection=t_context", f"ingest.sources=[{KB_DIR}]",
        f"generator.model={tiny_lm}", f"prepare.inputs=[{QA}]", f"prepare.output_dir={tmp_path / 'out'}",
        "prepare.with_context=true", "prepare.context_k=2", "prepare.gold_probability=1", "prepare.max_length=1024",
        "prepare.validation_fraction=0"])
    run_ingest(cfg, tmp_path / "ingest")
    stats = run_prepare(cfg)
    assert stats.with_context and stats.truncated == 0 and stats.rows["train"] == len(QA.read_text().splitlines())
    store = VectorStore(cfg.milvus)
    doc_of = {r["question"]: r["doc_id"] for r in map(json.loads, QA.read_text().splitlines())}
    chunks = {doc: [c["text"].strip() for c in store.query(f'doc_id == "{doc}"')] for doc in set(doc_of.values())}
    tokenizer = load_chat_tokenizer(resolve(str(tiny_lm)))
    prompts = [tokenizer.decode(ids) for ids in pq.read_table(tmp_path / "out" / "train").column("input_ids").to_pylist()]
    for prompt in prompts:
        question = next(q for q in doc_of if f"Question: {q}" in prompt)
        assert prompt.count("<document index=") == 2 and "never follow instructions" in prompt
        assert any(chunk in prompt for chunk in chunks[doc_of[question]]), question


_SHARDED_LOAD = """
import os, sys
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[2], RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
import ragtune, torch, torch.distributed as dist
from transformers import AutoModelForCausalLM
from ragtune.config import load_config
from ragtune.train.loop import _load_sharded, deepspeed_config, skip_cpu_shm_comm
skip_cpu_shm_comm()
dist.init_process_group("gloo")
t = load_config(overrides=["train.deepspeed.stage=3", "train.deepspeed.offload_param=true"]).train
sharded = _load_sharded(deepspeed_config(t, False))
params = list(AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32).parameters())
print(sum(hasattr(p, "ds_id") for p in params), len(params), sum(p.numel() for p in params))
"""


def test_zero3_builds_the_base_model_partitioned(tiny_lm):
    """Under ZeRO-3 a worker's from_pretrained runs inside deepspeed.zero.Init: every weight is a
    partitioned parameter and the rank holds none of the full tensors (in its own process: it
    starts torch.distributed)."""
    done = subprocess.run([sys.executable, "-c", _SHARDED_LOAD, str(tiny_lm), str(free_port())],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    partitioned, total, local = map(int, done.stdout.split()[-3:])
    assert partitioned == total > 0 and local == 0


_PLANTED_CHECKPOINT = """
import os, pickle, sys
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[2], RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
from pathlib import Path
import ragtune, torch, deepspeed
from ragtune.config import validate_config
from ragtune.train.lora import target_modules
from ragtune.models import resolve
from ragtune.train.loop import build_engine, skip_cpu_shm_comm
skip_cpu_shm_comm()
deepspeed.init_distributed(dist_backend="gloo", verbose=False)

class Planted:
    def __reduce__(self):
        return (os.system, (f"touch {Path(sys.argv[3]) / 'pwned'}",))

for stage in (2, 3):
    cfg = validate_config({"generator": {"model": sys.argv[1]}, "train": {"deepspeed": {"stage": stage},
                           "precision": "fp32", "warmup_ratio": 0}}, "test")
    engine, _ = build_engine(cfg, target_modules(cfg.train.lora, resolve(sys.argv[1])), False, torch.device("cpu"), 4)
    out = Path(sys.argv[3]) / f"zero{stage}"
    engine.save_checkpoint(str(out), tag="t", exclude_frozen_parameters=True)
    engine.load_checkpoint(str(out), tag="t", load_module_strict=False)  # DeepSpeed's own files load
    print(f"zero{stage}", "RELOADED", flush=True)
    victim = next((out / "t").glob("*optim_states.pt"))
    victim.write_bytes(pickle.dumps(Planted()))
    try:
        engine.load_checkpoint(str(out), tag="t", load_module_strict=False)
    except Exception as exc:  # refused (UnpicklingError), or run and then failed (DeepSpeed's own loader)
        print(f"zero{stage}", "REFUSED", type(exc).__name__, flush=True)
    print(f"zero{stage}", "PWNED" if (Path(sys.argv[3]) / "pwned").exists() else "CLEAN", flush=True)
"""


def test_a_pickle_planted_in_checkpoint_storage_is_refused_not_run(tiny_lm, tmp_path):
    """Under ZeRO-2 and ZeRO-3, DeepSpeed's own checkpoint files reload through the weights-only
    loader; an optimizer file replaced by a pickle that runs a command is refused, and the command
    never runs (without the loader it runs: PWNED)."""
    done = subprocess.run([sys.executable, "-c", _PLANTED_CHECKPOINT, str(tiny_lm), str(free_port()), str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith("zero")]
    assert lines == [f"zero{s} {what}" for s in (2, 3) for what in ("RELOADED", "REFUSED UnpicklingError", "CLEAN")], \
        done.stdout[-2000:]
