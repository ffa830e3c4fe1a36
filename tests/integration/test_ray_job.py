"""`ray job submit` of jobs/ingest.py against a real Ray cluster started by this test, with Ray
2.60's token authentication on (the client reads the same ~/.ray/auth_token as the cluster)."""

import json
import os
import subprocess

from ragtune.config import MilvusConfig
from ragtune.store import VectorStore
from tests.conftest import RAY, REPO


def test_ray_job_submit_ingest(ray_head, milvus_port):
    address, env = ray_head
    runtime_env = {"env_vars": {"RAGTUNE_HOME": os.environ["RAGTUNE_HOME"], "HF_HUB_OFFLINE": "1"}}
    result = subprocess.run(
        [RAY, "job", "submit", "--address", address, "--working-dir", str(REPO),
         "--runtime-env-json", json.dumps(runtime_env), "--",
         "python", "jobs/ingest.py", "jobs/configs/ingest_quickstart.yaml",
         "--set", f"milvus.local_port={milvus_port}", "--set", "milvus.collection=job_submit"],
        env=env, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "succeeded" in result.stdout and '"documents": 26' in result.stdout
    store = VectorStore(MilvusConfig(local_port=milvus_port, collection="job_submit"))
    assert len(store.manifest()) == 26
    store.drop()
