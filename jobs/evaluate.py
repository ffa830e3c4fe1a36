"""Compare base, rag, ft and hybrid on the same questions as a Ray job; writes the report directory.

    ray job submit --working-dir . -- python jobs/evaluate.py CONFIG.yaml [--set compare.sample=100 ...]
Check without running:  python jobs/evaluate.py CONFIG --check [--overlay dev]
"""

from ragtune.eval.compare import run_compare
from ragtune.preflight import job_config

cfg = job_config("evaluate", __doc__)
report = run_compare(cfg)
print((report / "report.md").read_text())
print(f"report directory: {report}")
