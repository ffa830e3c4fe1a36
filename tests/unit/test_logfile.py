"""A long command's output: third-party lines to its log file, ragtune's own lines on the terminal."""

import io
import os
import subprocess
import sys
import textwrap

import ragtune.logfile
from ragtune.logfile import _StepProgress, _WorkProgress

_COMMAND = textwrap.dedent("""
    import logging, os, sys, warnings
    from rich.console import Console
    from ragtune.logfile import divert

    out, err = Console(), Console(stderr=True)
    diverted = divert("ingest", (out, err))
    out.print("ragtune result line")
    err.print("ragtune stage line")
    print("a library's print")
    os.write(2, b"native code's stderr line\\n")
    logging.getLogger("ray.data").info("Starting execution of Dataset")
    logging.getLogger("pymilvus.decorators").error("RPC error: [flush]")
    warnings.warn("a deprecation")
    logging.getLogger("ragtune.ingest").warning("3 files rejected")
    logging.getLogger("ragtune.store").info("started a server", extra={"notice": True})
    logging.getLogger("ragtune.store").info("an ordinary info line")
    subprocess_line = __import__("subprocess").run(["echo", "a child process's line"])
    print(diverted.path, file=diverted.terminal)
""")


def test_third_party_output_goes_to_the_log_file_and_ragtunes_lines_stay(tmp_path):
    done = subprocess.run([sys.executable, "-c", _COMMAND], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "RAGTUNE_HOME": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    terminal = done.stdout + done.stderr
    path = done.stderr.strip().splitlines()[-1]
    assert path.startswith(str(tmp_path / "logs" / "ingest-")) and path.endswith(".log")
    assert "ragtune result line" in done.stdout and "ragtune stage line" in done.stderr
    assert "\nstarted a server\n" in done.stderr and "an ordinary info line" not in terminal
    assert f"warning: 3 files rejected (log: {path})" in done.stderr
    for hidden in ("a library's print", "native code's stderr line", "Starting execution", "RPC error",
                   "a deprecation", "a child process's line"):
        assert hidden not in terminal
    log = open(path, encoding="utf-8").read()
    for kept in ("a library's print", "native code's stderr line", "Starting execution of Dataset",
                 "RPC error: [flush]", "a deprecation", "3 files rejected", "a child process's line", "an ordinary info line"):
        assert kept in log
    assert "ragtune result line" not in log


def test_training_steps_are_about_ten_lines_in_a_file_with_an_eta():
    shown = io.StringIO()
    steps = _StepProgress(shown)
    for step in range(1, 41):
        steps.line(f"step {step}/40 · epoch 1 · loss {2 - step / 40:.4f}")
        if step % 20 == 0:
            steps.line(f"step {step}/40 · validation loss 1.5")
    steps.line("(an unrelated worker line)")
    lines = shown.getvalue().splitlines()
    assert 10 <= len(lines) <= 13 and lines[-1].startswith("  train step 40/40 · validation loss")
    assert "ETA" in lines[1] and "ETA" not in lines[-1]
    assert sum("validation" in line for line in lines) == 2


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_counted_work_redraws_on_a_terminal_and_in_a_file_shows_only_a_long_stage(monkeypatch):
    clock = iter(range(0, 10_000, 5))  # a report every 5 s
    monkeypatch.setattr(ragtune.logfile.time, "monotonic", lambda: next(clock))
    terminal = _Terminal()
    work = _WorkProgress(terminal)
    for _ in range(4):
        work.line("parsing +10/40 files")
    work.line("(an unrelated worker line)")
    assert terminal.getvalue() == ("\r\x1b[K  parsing 10/40 files\r\x1b[K  parsing 20/40 files · ETA 10 s"
                                   "\r\x1b[K  parsing 30/40 files · ETA 5 s\r\x1b[K  parsing 40/40 files\n")

    shown = io.StringIO()
    work = _WorkProgress(shown)
    for _ in range(5):  # 20 s: the command's result says it all
        work.line("parsing +8/40 files")
    for _ in range(200):  # 1,000 s: a line a quarter, with an ETA
        work.line("embedding +3/600 chunks")
    lines = shown.getvalue().splitlines()
    assert lines[0].startswith("  embedding 150/600 chunks · ETA") and len(lines) == 4
    assert lines[-1] == "  embedding 600/600 chunks"
