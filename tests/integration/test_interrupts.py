"""Ctrl-C on each long command while its Ray work runs: it exits 130 within a few seconds and leaves
no process of its own running (the local milvus-lite server, which commands share, excepted).
`ragtune serve` and `ragtune quickstart` have theirs in test_serve.py and test_quickstart.py.
Slow tier: each command starts its own Ray cluster (about 2 minutes in all)."""

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.integration.test_quickstart import RAGTUNE, _Tracked

pytestmark = pytest.mark.slow

QA = Path(__file__).parents[2] / "platform" / "ragtune" / "quickstart" / "qa.jsonl"
KB = Path(__file__).parents[2] / "platform" / "ragtune" / "quickstart" / "kb"
STOP_WITHIN_S = 20


def _many_questions(path: Path, copies: int) -> Path:
    rows = [json.loads(line) for line in QA.read_text().splitlines()]
    with open(path, "w") as f:
        for copy in range(copies):
            for row in rows:
                f.write(json.dumps({**row, "id": f"{row['id']}-{copy}", "question": f"{row['question']} ({copy})"}) + "\n")
    return path


def _many_documents(root: Path, count: int) -> Path:
    for i in range(count):
        (root / f"doc-{i:04d}.md").write_text(f"# Note {i}\n\n" + " ".join(f"word{i}-{j}" for j in range(300)))
    return root


def _commands(tmp_path: Path, tiny_lm: Path, milvus: str) -> dict[str, tuple[list[str], str]]:
    """Each command, and the line of its log file that says its Ray work has begun."""
    (tmp_path / "docs").mkdir()
    model = ["--set", f"generator.model={tiny_lm}"]
    return {
        "ingest": (["ingest", str(_many_documents(tmp_path / "docs", 3000)), "--set", milvus], "Starting execution"),
        "prepare": (["prepare", str(_many_questions(tmp_path / "qa.jsonl", 200)), *model], "Starting execution"),
        "train": (["train", "--set", f"prepare.inputs=[{QA}]", *model, "--set", "train.epochs=100",
                   "--set", "train.num_workers=1"], "step 2/"),
        "synth": (["synth", "--set", milvus, *model, "--set", "generator.backend=fake",
                   "--set", "generator.fake.token_interval_s=0.05"], "Starting execution"),
        "compare": (["compare", "--questions", str(_many_questions(tmp_path / "questions.jsonl", 5)), "--arm", "base",
                     *model, "--set", "generator.backend=fake", "--set", "generator.fake.token_interval_s=0.05"],
                    "Starting execution"),
    }


@pytest.mark.parametrize("command", ["ingest", "prepare", "train", "synth", "compare"])
def test_ctrl_c_stops_the_command_within_seconds_and_leaves_nothing_running(command, tiny_lm, tmp_path):
    home = tmp_path / "home"
    env = {**os.environ, "RAGTUNE_HOME": str(home), "COLUMNS": "250"}
    env.pop("RAY_ADDRESS", None)
    milvus = f"milvus.local_port={free_port()}"
    args, begun = _commands(tmp_path, tiny_lm, milvus)[command]
    run = None
    try:
        if command == "synth":  # it reads a collection's chunks
            ingested = subprocess.run([RAGTUNE, "ingest", str(KB), "--set", milvus], env=env, capture_output=True,
                                      text=True, timeout=300)
            assert ingested.returncode == 0, ingested.stdout + ingested.stderr
        run = _Tracked([RAGTUNE, *args], env, tmp_path / "terminal.txt")
        deadline = time.monotonic() + 300
        log = None
        while log is None or begun not in log.read_text(errors="replace"):
            assert run.proc.poll() is None, run.output()[-3000:]
            assert time.monotonic() < deadline, f"{command} did not begin:\n{run.output()[-3000:]}"
            found = re.search(r"log: (\S+\.log)", run.output())
            log = Path(found[1]) if found else None
            time.sleep(0.5)
        interrupted = time.monotonic()
        run.proc.send_signal(signal.SIGINT)
        code = run.wait(60)
        took = time.monotonic() - interrupted
        assert code == 130 and took < STOP_WITHIN_S, (code, round(took, 1), run.output()[-3000:])
        assert "interrupted" in run.output()
        deadline = time.monotonic() + 30
        while (left := [p for p in run.left_running() if "milvus_lite" not in p]) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert left == []
    finally:
        if run is not None and run.proc.poll() is None:
            run.proc.kill()
        subprocess.run([RAGTUNE, "milvus", "stop"], env=env, timeout=60, capture_output=True)
