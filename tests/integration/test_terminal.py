"""What the `ragtune` program shows on its terminal: its own lines, the reason of a failure and the
log file's path; Ray's, Ray Data's and the Milvus client's output goes to that log file."""

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import free_port

RAGTUNE = str(Path(sys.executable).with_name("ragtune"))
QA = Path(__file__).parents[2] / "platform" / "ragtune" / "quickstart" / "qa.jsonl"
_THIRD_PARTY = re.compile(r"pid=\d+|\bINFO\b|Dataset \w+ execution|grpc|GOAWAY", re.IGNORECASE)


def _run(args: list[str], home: Path) -> tuple[int, str, Path]:
    """Exit code, the terminal (stdout + stderr) and the command's log file."""
    env = {**os.environ, "RAGTUNE_HOME": str(home), "COLUMNS": "250"}
    env.pop("RAY_ADDRESS", None)  # each command starts its own local cluster, as a user's does
    done = subprocess.run([RAGTUNE, *args], capture_output=True, text=True, timeout=600, env=env)
    terminal = done.stdout + done.stderr
    logs = re.findall(r"log: (\S+\.log)", terminal)
    assert logs and len(set(logs)) == 1, terminal
    return done.returncode, terminal, Path(logs[0])


def test_a_rejected_file_and_a_failing_train_show_the_reason_and_the_log_path_and_nothing_of_ray(tiny_lm, tmp_path):
    home = tmp_path / "home"
    milvus = f"milvus.local_port={free_port()}"
    corpus = tmp_path / "docs"
    corpus.mkdir()
    (corpus / "good.md").write_text("# Good\n\nThe warehouse is in Rotterdam.")
    (corpus / "blob.txt").write_bytes(b"\x00\x01\x02")
    try:
        code, terminal, log = _run(["ingest", str(corpus), "--set", milvus, "--set",
                                    "validation.max_reject_fraction=0.2"], home)
    finally:  # the milvus-lite server the command started and left running
        subprocess.run([RAGTUNE, "milvus", "stop"], env={**os.environ, "RAGTUNE_HOME": str(home)}, timeout=60)
    assert code == 3, terminal
    assert "1 of 2 inputs rejected" in terminal and "binary" in terminal and f"(log: {log})" in terminal
    assert "started the local milvus-lite server" in terminal  # announced, once
    assert not _THIRD_PARTY.search(terminal), terminal
    assert log.parent == home / "logs" and "Dataset" in log.read_text()  # Ray Data's lines are kept there

    code, terminal, log = _run(["train", "--set", milvus, "--set", f"generator.model={tiny_lm}",
                                "--set", f"prepare.inputs=[{QA}]", "--set", "train.lora.target_modules=[no_such_proj]"],
                               home)
    assert code == 2, terminal
    assert "no_such_proj do not exist" in terminal and f"(log: {log})" in terminal, terminal
    assert not _THIRD_PARTY.search(terminal), terminal
    assert "error: LoRA target(s) no_such_proj" in log.read_text() and "Dataset" in log.read_text()
