"""Prepare a fine-tuning dataset as a Ray job.

    ray job submit --working-dir . -- python jobs/prepare.py jobs/configs/train_cpu.yaml [--set prepare.with_context=true]
Check without running:  python jobs/prepare.py CONFIG --check [--overlay dev]
"""

import json
from dataclasses import asdict

from ragtune.data import run_prepare
from ragtune.preflight import job_config

cfg = job_config("prepare", __doc__)
print(json.dumps(asdict(run_prepare(cfg)), indent=2))
