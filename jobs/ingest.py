"""Ingest documents into Milvus as a Ray job.

    ray job submit --working-dir . -- python jobs/ingest.py jobs/configs/ingest_quickstart.yaml \
        [--set milvus.collection=docs ...]

Exit code 3 when more inputs were rejected than validation.max_reject_fraction allows.
Check without running:  python jobs/ingest.py CONFIG --check [--overlay dev]
"""

import json
import sys
from dataclasses import asdict

from ragtune.ingest import run_ingest
from ragtune.preflight import job_config

cfg = job_config("ingest", __doc__)
summary = run_ingest(cfg)
print(json.dumps({**asdict(summary), "docs_per_s": round(summary.docs_per_s, 2), "ok": summary.ok}, indent=2))
sys.exit(0 if summary.ok else 3)
