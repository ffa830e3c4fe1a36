"""A long command's log file: what Ray, Ray Data, Ray Train, Serve, transformers and the Milvus client
print goes to ``$RAGTUNE_HOME/logs/<command>-<time>-<pid>.log``; the terminal keeps ragtune's own lines
(stages, progress, results, its warnings and errors) and the progress its workers report: training
steps, and work counted with ``work_done`` (files parsed, chunks embedded, questions written or answered).

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
# the lines ``work_done`` prints on a worker: "parsing +32/400 files"
_WORK_DONE = re.compile(r"^([a-z][a-z ]*) \+(\d+)/(\d+) ([a-z]+)$")
_WORKER_LINES = "ragtune_worker_progress"
# in a file, counted work is shown only once a stage has run this long (then at every quarter)
_QUIET_S = 30.0


def work_done(stage: str, done: int, total: int, unit: str) -> None:
    """On a Ray worker: ``done`` more of the ``total`` ``unit`` of ``stage`` are done (a line that Ray
    forwards to the driver, whose terminal adds them up; see ``_WorkProgress``)."""
    print(f"{stage} +{done}/{total} {unit}", flush=True)


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
    _show_worker_progress(terminal_err)
    return CommandLog(path, terminal_err)


def _show_worker_progress(terminal: TextIO) -> None:
    """Ray forwards its workers' lines to the driver (into the file now); their progress lines are
    shown on the terminal as well."""
    from ray._private.ray_logging import global_worker_stdstream_dispatcher

    steps, work = _StepProgress(terminal), _WorkProgress(terminal)

    def show(batch: dict) -> None:
        for line in batch.get("lines", ()):
            steps.line(line)
            work.line(line)

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
        elif validation or step == total or step - self.shown_step >= -(-total // 10):  # a tenth, rounded up
            self.terminal.write(shown + "\n")
            self.shown_step = step
        self.terminal.flush()


class _WorkProgress:
    """Counted work per stage, with an ETA: redrawn in place on a terminal; in a file, a stage that
    runs longer than ``_QUIET_S`` shows a line at each quarter of its total (a short one shows none:
    the command prints its result)."""

    def __init__(self, terminal: TextIO):
        self.terminal = terminal
        self.redraw = terminal.isatty()
        self.stages: dict[str, _Stage] = {}

    def line(self, text: str) -> None:
        match = _WORK_DONE.match(text.strip())
        if not match:
            return
        name, done, total, unit = match[1], int(match[2]), int(match[3]), match[4]
        now = time.monotonic()
        stage = self.stages.get(name)
        if stage is None or stage.total != total or stage.done >= total:  # a new run of the stage
            # timed from its first report, which comes after its first piece of work
            stage = self.stages[name] = _Stage(total, now, first_done=min(total, done))
        stage.done = min(total, stage.done + done)
        finished = stage.done == total
        eta = ""
        if not finished and stage.done > stage.first_done:
            per_unit = (now - stage.started) / (stage.done - stage.first_done)
            eta = f" · ETA {_duration(per_unit * (total - stage.done))}"
        shown = f"  {name} {stage.done}/{total} {unit}{eta}"
        if self.redraw:
            self.terminal.write(f"\r\x1b[K{shown}" + ("\n" if finished else ""))
        elif now - stage.started >= _QUIET_S and stage.done * 4 // total > stage.shown_quarter:
            self.terminal.write(shown + "\n")
            stage.shown_quarter = stage.done * 4 // total
        self.terminal.flush()


@dataclass
class _Stage:
    total: int
    started: float  # when its first report came
    first_done: int  # what that report counted
    done: int = 0
    shown_quarter: int = 0


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"
