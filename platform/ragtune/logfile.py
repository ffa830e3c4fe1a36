"""A long command's log file: what Ray, Ray Data, Ray Train, Serve, transformers and the Milvus client
print goes to ``$RAGTUNE_HOME/logs/<command>-<time>-<pid>.log``; the terminal keeps ragtune's own lines
(stages, progress, results, its warnings and errors) and the training steps its workers report.

The diversion is at the file-descriptor level, so that it also takes what native code (Ray's core
worker, gRPC) and child processes write; ragtune's consoles write to copies of the original ones.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from ragtune.config import ragtune_home

_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# the lines ragtune.train.loop logs on its rank-0 worker: "step 3/40 · epoch 1 · loss 2.1", validation ones
_TRAINING_STEP = re.compile(r"^step (\d+)/(\d+) · (.*)$")
_WORKER_LINES = "ragtune_training_steps"


@dataclass(frozen=True)
class CommandLog:
    """Where one command's output went: ``path``; ``terminal``: a stream to the original stderr."""

    path: Path
    terminal: TextIO


class _RagtuneToTerminal(logging.Filter):
    """ragtune's own warnings and errors, and its notices (``extra={"notice": True}``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name.startswith("ragtune") and (record.levelno >= logging.WARNING or
                                                      getattr(record, "notice", False))


class _TerminalFormat(logging.Formatter):
    def __init__(self, path: Path | None):
        super().__init__()
        self.where = f" (log: {path})" if path else ""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        return message if record.levelno < logging.WARNING else f"{record.levelname.lower()}: {message}{self.where}"


def show_on_terminal(stream: TextIO, path: Path | None = None) -> None:
    """ragtune's warnings, errors and notices on ``stream`` (naming the log file, if any)."""
    shown = logging.StreamHandler(stream)
    shown.setLevel(logging.INFO)
    shown.addFilter(_RagtuneToTerminal())
    shown.setFormatter(_TerminalFormat(path))
    # on ragtune's logger, not the root: with --verbose the root keeps no handler, so that other
    # libraries' warnings still reach stderr through Python's last-resort handler
    ours = logging.getLogger("ragtune")
    ours.addHandler(shown)
    ours.setLevel(logging.INFO)


def divert(command: str, terminal_consoles: tuple = ()) -> CommandLog:
    """Send this process's stdout and stderr (and its children's) to a new log file for ``command``;
    ``terminal_consoles`` (rich consoles) go on writing to the terminal. Returns where things went."""
    directory = ragtune_home() / "logs"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{command}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    sys.stdout.flush()
    sys.stderr.flush()
    terminal_out = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8", errors="replace")
    terminal_err = os.fdopen(os.dup(2), "w", buffering=1, encoding="utf-8", errors="replace")
    with open(path, "ab", buffering=0) as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
    for console in terminal_consoles:
        console.file = terminal_err if console.stderr else terminal_out
    # Ray Data's progress bars would redraw into the file; ragtune prints its own stage lines
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    logging.basicConfig(level=logging.INFO, format=_FORMAT, stream=sys.stderr, force=True)
    logging.captureWarnings(True)
    show_on_terminal(terminal_err, path)
    _show_training_steps(terminal_err)
    return CommandLog(path, terminal_err)


def _show_training_steps(terminal: TextIO) -> None:
    """Ray forwards its workers' lines to the driver (into the file now); the training steps are
    shown on the terminal as well."""
    from ray._private.ray_logging import global_worker_stdstream_dispatcher

    steps = _StepProgress(terminal)

    def show(batch: dict) -> None:
        for line in batch.get("lines", ()):
            steps.line(line)

    global_worker_stdstream_dispatcher.remove_handler(_WORKER_LINES)
    global_worker_stdstream_dispatcher.add_handler(_WORKER_LINES, show)


class _StepProgress:
    """Training steps with an ETA: redrawn in place on a terminal, about ten lines per run in a file."""

    def __init__(self, terminal: TextIO):
        self.terminal = terminal
        self.redraw = terminal.isatty()
        self.first: tuple[int, float] | None = None  # (step, when) of the first step seen
        self.shown_step = 0

    def line(self, text: str) -> None:
        match = _TRAINING_STEP.match(text.strip())
        if not match:
            return
        step, total, rest = int(match[1]), int(match[2]), match[3]
        now = time.monotonic()
        if self.first is None or step < self.first[0]:
            self.first = (step, now)
        eta = ""
        if step > self.first[0]:
            left = (now - self.first[1]) / (step - self.first[0]) * (total - step)
            eta = f" · ETA {_duration(left)}" if step < total else ""
        shown = f"  train step {step}/{total} · {rest}{eta}"
        validation = "validation" in rest
        if self.redraw:  # steps redraw one line; validation results and the last step stay
            self.terminal.write(f"\r\x1b[K{shown}" + ("\n" if validation or step == total else ""))
        elif validation or step == total or step - self.shown_step >= max(1, total // 10):
            self.terminal.write(shown + "\n")
            self.shown_step = step
        self.terminal.flush()


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"
