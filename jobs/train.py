"""Fine-tune a LoRA adapter as a Ray job (preparing the dataset first when prepare.inputs is set).

    ray job submit --working-dir . -- python jobs/train.py jobs/configs/train_cpu.yaml [--set train.max_steps=20 ...]

Re-submitting with the same train.run_name and storage_path resumes from the newest checkpoint.
Check without running:  python jobs/train.py CONFIG --check [--overlay dev]
"""

import json

from ragtune.train import run_train
from ragtune.preflight import job_config

cfg = job_config("train", __doc__)
result = run_train(cfg)
print(json.dumps({k: v for k, v in result.report.items() if k not in ("loss_curve", "config")}, indent=2))
