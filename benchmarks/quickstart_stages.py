"""Wall time of each `ragtune quickstart` stage (what `make demo` runs): a first run in an empty
RAGTUNE_HOME (nothing cached but the installed packages: the model is dequantized, DeepSpeed's CPU op
compiled, the adapter trained), then the same command again, which reuses the finished stages.

    .venv/bin/python benchmarks/quickstart_stages.py [extra quickstart options, e.g. --set train.epochs=2]

Prints both runs' stages (quickstart/stages.json) and the command's own wall time, with the ratio
re-run / first run per stage.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import free_port

RAGTUNE = str(Path(sys.executable).with_name("ragtune"))


def main() -> None:
    home = Path(tempfile.mkdtemp(prefix="ragtune-bench-quickstart-"))
    env = {**os.environ, "RAGTUNE_HOME": str(home)}
    command = [RAGTUNE, "quickstart", "--set", f"milvus.local_port={free_port()}", *sys.argv[1:]]
    runs = {}
    for name in ("first", "rerun"):
        started = time.perf_counter()
        subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
        runs[name] = {**json.loads((home / "quickstart" / "stages.json").read_text()),
                      "command_wall_s": round(time.perf_counter() - started, 1)}
    ratios = {stage: round(runs["rerun"][stage] / runs["first"][stage], 3) for stage in runs["first"]}
    print(json.dumps({"home": str(home), "runs": runs, "rerun_over_first": ratios,
                      "command": " ".join([sys.executable, "benchmarks/quickstart_stages.py", *sys.argv[1:]])},
                     indent=2))


if __name__ == "__main__":
    main()
