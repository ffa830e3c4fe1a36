"""Prepare a fine-tuning dataset as a Ray job.

    ray job submit --working-dir . -- python jobs/prepare.py jobs/configs/train_cpu.yaml [--set prepare.with_context=true]
"""

import argparse
import json
from dataclasses import asdict

from ragtune.config import load_config
from ragtune.data import run_prepare

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("config", help="YAML config (see jobs/configs/)")
parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
args = parser.parse_args()

print(json.dumps(asdict(run_prepare(load_config(args.config, args.set))), indent=2))
