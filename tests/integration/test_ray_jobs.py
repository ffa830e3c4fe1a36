"""`ray job submit` of the jobs against a real Ray cluster started by this module, with Ray 2.60's
token authentication on (the client reads the same ~/.ray/auth_token as the cluster): jobs/ingest.py
(default tier), and jobs/train.py stopped mid-run with `ray job stop`, then resumed from its newest
checkpoint by submitting it again (slow tier: two job start-ups, about 2 minutes; the default tier
checks the same resume — the same run name and storage_path — through `ragtune quickstart`
interrupted during training, tests/integration/test_quickstart.py)."""

import json
import os
import subprocess
import time

import pytest
import yaml

from ragtune.config import MilvusConfig
from ragtune.store import VectorStore
from tests.cluster import SimulatedCluster
from tests.conftest import QA, RAY, REPO, hashes


@pytest.fixture(scope="module")
def ray_head():
    """A token-authenticated head node on 127.0.0.1 with its own ports and temp dir (the session's
    local cluster may be running beside it), the dashboard serving the job API: (address, env)."""
    cluster = SimulatedCluster.start(head_cpus=2)
    try:
        yield cluster.dashboard, cluster.env
    finally:
        cluster.stop()


def _config(tmp_path, tiny_lm, run, **train):
    path = tmp_path / f"{run}.yaml"
    path.write_text(yaml.safe_dump({
        "generator": {"model": str(tiny_lm)},
        "prepare": {"inputs": [str(QA)], "output_dir": str(tmp_path / "data"), "validation_fraction": 0.2},
        "train": {"run_name": run, "storage_path": str(tmp_path / "runs"), "output_dir": str(tmp_path / run),
                  "micro_batch_size": 4, "learning_rate": 1e-2, **train},
    }))
    return path


def _submit(address, env, config, *flags):
    runtime_env = {"env_vars": {"RAGTUNE_HOME": os.environ["RAGTUNE_HOME"], "HF_HUB_OFFLINE": "1",
                                "TORCH_EXTENSIONS_DIR": os.environ["TORCH_EXTENSIONS_DIR"]}}
    return subprocess.run(
        [RAY, "job", "submit", "--address", address, "--working-dir", str(REPO), *flags,
         "--runtime-env-json", json.dumps(runtime_env), "--", "python", "jobs/train.py", str(config)],
        env=env, capture_output=True, text=True, timeout=900, cwd=REPO)


def _report(tmp_path, run) -> dict:
    return json.loads((tmp_path / run / "training_report.json").read_text())


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
    assert len(hashes(store)) == 26
    store.drop()


@pytest.mark.slow
def test_stopped_job_resumes_from_its_checkpoint(ray_head, tiny_lm, tmp_path):
    address, env = ray_head
    config = _config(tmp_path, tiny_lm, "resume", epochs=10, max_steps=24, checkpoint_every=5, eval_every=100)
    started = _submit(address, env, config, "--no-wait", "--submission-id", "resume-1")
    assert started.returncode == 0, started.stderr[-2000:]
    # Ray Train writes this snapshot when a checkpoint is registered (every worker reported it); a
    # checkpoint directory alone may be one that the stop interrupts, which a resume rightly skips.
    snapshot = tmp_path / "runs" / "resume" / "checkpoint_manager_snapshot.json"
    deadline = time.monotonic() + 600
    while not snapshot.exists():
        assert time.monotonic() < deadline, "no checkpoint within 10 minutes"
        time.sleep(2)
    subprocess.run([RAY, "job", "stop", "--address", address, "resume-1"], env=env, check=True, capture_output=True)
    saved = json.loads(snapshot.read_text())["latest_checkpoint_result"]["metrics"]["step"]
    assert 5 <= saved < 24  # stopped mid-run
    result = _submit(address, env, config)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "succeeded" in result.stdout
    report = _report(tmp_path, "resume")
    assert report["steps"] == 24 and report["export_check"]["checked"]
    assert (tmp_path / "resume" / "adapter_model.safetensors").exists()
    assert report["attempts"][-1]["resumed_from_step"] == saved  # continued from the last checkpoint, not restarted
