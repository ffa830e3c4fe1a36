"""Ingest documents into Milvus as a Ray job.

    ray job submit --working-dir . -- python jobs/ingest.py jobs/configs/ingest_quickstart.yaml \
        [--set milvus.collection=docs ...]

Exit code 3 when more inputs were rejected than validation.max_reject_fraction allows.
"""

import argparse
import json
import sys
from dataclasses import asdict

from ragtune.config import load_config
from ragtune.ingest import run_ingest

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("config", help="YAML config (see jobs/configs/)")
parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
args = parser.parse_args()

summary = run_ingest(load_config(args.config, args.set))
print(json.dumps({**asdict(summary), "docs_per_s": round(summary.docs_per_s, 2), "ok": summary.ok}, indent=2))
sys.exit(0 if summary.ok else 3)
