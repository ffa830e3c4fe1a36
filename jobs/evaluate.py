"""Compare base, rag, ft and hybrid on the same questions as a Ray job; writes the report directory.

    ray job submit --working-dir . -- python jobs/evaluate.py CONFIG.yaml [--set compare.sample=100 ...]
"""

import argparse

from ragtune.config import load_config
from ragtune.eval.compare import run_compare

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("config", help="YAML config (see jobs/configs/)")
parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
args = parser.parse_args()

report = run_compare(load_config(args.config, args.set))
print((report / "report.md").read_text())
print(f"report directory: {report}")
