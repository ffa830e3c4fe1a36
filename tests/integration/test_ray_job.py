"""`ray job submit` of jobs/ingest.py against a real Ray cluster started by this test, with Ray
2.60's token authentication on (the client reads the same ~/.ray/auth_token as the cluster)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from ragtune.config import MilvusConfig
from ragtune.store import VectorStore
from tests.conftest import REPO, free_port

RAY = str(Path(sys.executable).with_name("ray"))


def _stop(head: subprocess.Popen) -> None:
    """Stop this head's process group only (never `ray stop`, which stops every Ray on the machine)."""
    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(head.pid, sig)
            head.wait(timeout=wait)
            return
        except (subprocess.TimeoutExpired, ProcessLookupError):
            continue


@pytest.fixture
def ray_head():
    """A token-authenticated head node on 127.0.0.1 with its own ports (the session's local
    cluster may be running beside it), the dashboard serving the job API."""
    temp_dir = tempfile.mkdtemp(prefix="rt-ray-", dir="/tmp")  # short: Ray's socket paths
    dashboard = free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "token",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    if not (Path.home() / ".ray" / "auth_token").exists():
        subprocess.run([RAY, "get-auth-token", "--generate"], env=env, check=True, capture_output=True)
    ports = {flag: free_port() for flag in ("--port", "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port",
                                            "--metrics-export-port", "--runtime-env-agent-port",
                                            "--node-manager-port", "--object-manager-port")}
    head = subprocess.Popen(
        [RAY, "start", "--head", "--block", "--node-ip-address=127.0.0.1", "--num-cpus=2",
         *(f"{flag}={port}" for flag, port in ports.items()),
         "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
         f"--temp-dir={temp_dir}", "--disable-usage-stats"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    address = f"http://127.0.0.1:{dashboard}"
    try:
        deadline = time.monotonic() + 180
        probe = [RAY, "job", "submit", "--address", address, "--", "python", "-c", "pass"]
        while subprocess.run(probe, env=env, capture_output=True).returncode:  # until the job agent is up
            assert head.poll() is None and time.monotonic() < deadline, "the Ray head did not accept jobs"
            time.sleep(2)
        yield address, env
    finally:
        _stop(head)
        shutil.rmtree(temp_dir, ignore_errors=True)


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
