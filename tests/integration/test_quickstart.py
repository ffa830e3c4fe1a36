"""`ragtune quickstart` end to end as a user runs it — a separate process with its own Ray cluster,
milvus-lite server and RAGTUNE_HOME — on a reduced setting (a tiny Llama, a short training, answers
from the fake generation backend): Ctrl-C during training, then a second run that resumes the
training and goes through every stage. After
each run no process the command started is left running. (Reusing finished stages is checked in
tests/unit/test_quickstart.py; a whole re-run is measured in BENCHMARKS.md.)"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import yaml

from tests.conftest import REPO, free_port, interruptible

RAGTUNE = str(Path(sys.executable).with_name("ragtune"))
RUN = "tiny-quickstart"


class _Tracked:
    """Runs the command and records every process in its tree while it runs."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path):
        self.log = log
        self.proc = subprocess.Popen(args, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                                     preexec_fn=interruptible)
        self.seen: dict[int, float] = {}
        self._watch = threading.Thread(target=self._track, daemon=True)
        self._watch.start()

    def _track(self) -> None:
        root = psutil.Process(self.proc.pid)
        while self.proc.poll() is None:
            try:
                for p in [root, *root.children(recursive=True)]:
                    self.seen.setdefault(p.pid, p.create_time())
            except psutil.Error:
                pass
            time.sleep(0.2)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait(self, timeout: float) -> int:
        code = self.proc.wait(timeout=timeout)
        self._watch.join()
        return code

    def left_running(self) -> list[str]:
        """The recorded processes still alive (the same pid and start time: not a reused pid)."""
        alive = []
        for pid, created in self.seen.items():
            try:
                p = psutil.Process(pid)
                if p.create_time() == created and p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(f"{pid} {' '.join(p.cmdline())[:120]}")
            except psutil.NoSuchProcess:
                continue
        return alive


def _settle(run: _Tracked, seconds: float = 30) -> list[str]:
    """Processes left running, after giving the exiting ones a moment."""
    deadline = time.monotonic() + seconds
    while run.left_running() and time.monotonic() < deadline:
        time.sleep(0.5)
    return run.left_running()


def test_quickstart_end_to_end_resumes_after_ctrl_c_and_leaves_nothing_running(tiny_lm, tmp_path):
    home = tmp_path / "home"
    milvus, http = free_port(), free_port()
    serve_config = yaml.safe_load((REPO / "serve_configs" / "local.yaml").read_text())
    serve_config["http_options"]["port"] = http
    (tmp_path / "serve.yaml").write_text(yaml.safe_dump(serve_config))
    args = [RAGTUNE, "quickstart", "--serve-config", str(tmp_path / "serve.yaml"),
            "--set", f"milvus.local_port={milvus}", "--set", f"generator.model={tiny_lm}",
            "--set", f"train.run_name={RUN}", "--set", "prepare.eval_holdout=4", "--set", "train.max_steps=8",
            "--set", "train.checkpoint_every=2", "--set", "train.eval_every=4", "--set", "train.micro_batch_size=4",
            "--set", "train.num_workers=1",
            "--set", "compare.max_tokens=8", "--set", "compare.bootstrap_samples=200",
            # the stages' plumbing, not answers: comparison and serving on the test double (no model loads;
            # the onnx backend's answers are tests/integration/test_onnx_backend.py's and test_serve.py's)
            "--set", "generator.backend=fake"]
    env = {**os.environ, "RAGTUNE_HOME": str(home), "RAY_DATA_DISABLE_PROGRESS_BARS": "1", "COLUMNS": "250"}
    env.pop("RAY_ADDRESS", None)

    # 1. Ctrl-C once training has registered a checkpoint (Ray Train writes the snapshot then)
    first = _Tracked(args, env, tmp_path / "first.log")
    snapshot = home / "train_runs" / RUN / "checkpoint_manager_snapshot.json"
    deadline = time.monotonic() + 420
    while not snapshot.exists():
        assert first.proc.poll() is None, first.output()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint in time:\n" + first.output()[-3000:]
        time.sleep(0.5)
    saved = json.loads(snapshot.read_text())["latest_checkpoint_result"]["metrics"]["step"]
    first.proc.send_signal(signal.SIGINT)
    assert first.wait(120) == 130, first.output()[-3000:]
    out = first.output()
    assert "1/4 ingest" in out and "interrupted during train" in out and "resumes from its newest checkpoint" in out
    assert not (home / "adapters" / RUN).exists()  # nothing exported from a half-trained run
    assert _settle(first) == []

    # 2. the same command resumes the training and runs every stage
    second = _Tracked(args, env, tmp_path / "second.log")
    assert second.wait(600) == 0, second.output()[-4000:]
    out = second.output()
    adapter = home / "adapters" / RUN
    report = json.loads((adapter / "training_report.json").read_text())
    assert report["steps"] == 8 and report["attempts"][-1]["resumed_from_step"] >= saved >= 2, report["attempts"]
    assert (adapter / "adapter_model.safetensors").is_file()
    assert "26 documents (0 new, 0 changed, 26 unchanged" in out  # the ingest manifest was reused
    compared = home / "quickstart" / "report"
    summary = json.loads((compared / "report.json").read_text())
    assert summary["questions"] == 4 and list(summary["arms"]) == ["base", "rag", "ft", "hybrid"]
    for arm, scored in summary["arms"].items():
        assert set(scored["metrics"]) >= {"exact_match", "f1", "rouge_l", "bleu"}
        assert ("hit_at_k" in scored["metrics"]) == (arm in ("rag", "hybrid"))
        assert scored["latency_s"]["p50"] > 0
    # retrieval puts the passages in the prompt and finds most questions' own document among the top 4
    assert summary["arms"]["rag"]["prompt_tokens_mean"] > summary["arms"]["base"]["prompt_tokens_mean"] + 100
    assert summary["arms"]["rag"]["metrics"]["hit_at_k"]["mean"] >= 50
    assert len(summary["differences"]) == 6 and len(summary["verdict"]) == 5
    rows = list(csv.DictReader(open(compared / "questions.csv", encoding="utf-8")))
    assert len(rows) == 4 and all(r["rag_retrieved"] for r in rows)
    answers = [json.loads(line) for line in (compared / "answers.jsonl").read_text().splitlines()]
    assert len(answers) == 16 and {a["arm"] for a in answers} == {"base", "rag", "ft", "hybrid"}
    fresh = summary["freshness"]
    assert fresh["facts"] == 21 and fresh["documents_updated"] == 18
    assert all(sum(fresh["arms"][arm]["after_update"].values()) == 21 for arm in summary["arms"])
    for arm in summary["arms"]:  # shares with intervals
        new = fresh["arms"][arm]["after_update_share"]["new"]
        assert new["low"] <= new["mean"] <= new["high"]
    # the revised documents are retrieved right after the update; base and ft retrieve nothing
    assert fresh["arms"]["rag"]["revised_document_retrieved"] >= 16 and fresh["arms"]["ft"]["revised_document_retrieved"] is None
    for png in ("metrics.png", "quality_vs_cost.png"):
        assert (compared / png).read_bytes()[:4] == b"\x89PNG"
    assert "| hybrid |" in (compared / "report.md").read_text()
    # the judge graded every answer, and its reliability on known pairs is reported beside its verdicts
    assert summary["judge"]["known_pairs"] >= 4 and "judge_correct" in summary["arms"]["base"]["metrics"]
    assert "judge_faithful" in summary["arms"]["rag"]["metrics"] and "## Judge" in (compared / "report.md").read_text()
    assert "## Recommendation" in out and "## Judge" in out and "## Freshness" in out
    for mode in ("base", "rag", "ft", "hybrid"):
        assert f"│ {mode} " in out  # the table of the four modes asked through the endpoint
    assert "policies/returns.md" in out  # rag cites the revised returns policy for the changed fact
    assert f"endpoint: http://127.0.0.1:{http}/v1" in out and "ragtune ask" in out and "ray job submit" in out
    stages = json.loads((home / "quickstart" / "stages.json").read_text())
    assert set(stages) == {"ingest", "train", "compare", "serve", "total"}
    assert _settle(second) == []

