"""Multi-node training by simulation: two 1-CPU worker nodes on this machine, one training worker per
node, ZeRO-3 with CPU offload, checkpoints in a shared storage_path, and a node removed mid-run
(see multinode_train.py): the run resumes from its newest registered checkpoint and exports an
adapter that reloads. In the ``cluster`` tier beside test_cluster_lifecycle.py, which does all of
this on nodes that share nothing (this one's nodes share the machine's filesystem)."""

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO, assert_adapter_reloads, free_port

pytestmark = pytest.mark.cluster


def test_two_node_zero3_training_survives_losing_a_node(tiny_lm, tiny_dataset, tmp_path):
    dataset, _, _ = tiny_dataset  # prepared on the session's cluster; the training runs on its own
    result = subprocess.run(
        [sys.executable, str(REPO / "tests/integration/multinode_train.py"), str(tiny_lm), str(dataset),
         str(tmp_path / "shared-storage"), str(tmp_path / "adapter"),
         json.dumps({name: free_port() for name in ("dashboard_agent_listen_port", "metrics_export_port",
                                                     "metrics_agent_port", "runtime_env_agent_port")})],
        capture_output=True, text=True, timeout=900, cwd=REPO)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "NODE_REMOVED" in result.stdout
    report = json.loads(result.stdout.split("REPORT ", 1)[1].splitlines()[0])
    assert report["steps"] == 8 and report["workers"] == 2
    assert len(report["attempts"]) >= 2 and report["attempts"][-1]["resumed_from_step"] >= 2
    assert_adapter_reloads(tiny_lm, tmp_path / "adapter", report)
