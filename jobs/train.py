"""Fine-tune a LoRA adapter as a Ray job (preparing the dataset first when prepare.inputs is set).

    ray job submit --working-dir . -- python jobs/train.py jobs/configs/train_cpu.yaml [--set train.max_steps=20 ...]

Re-submitting with the same train.run_name and storage_path resumes from the newest checkpoint.
"""

import argparse
import json

from ragtune.config import load_config
from ragtune.train import run_train

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("config", help="YAML config (see jobs/configs/)")
parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
args = parser.parse_args()

result = run_train(load_config(args.config, args.set))
print(json.dumps({k: v for k, v in result.report.items() if k not in ("loss_curve", "config")}, indent=2))
