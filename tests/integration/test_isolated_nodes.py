"""Jobs on a Ray cluster whose worker node shares nothing with the driver by accident (tests/cluster.py):
its own $RAGTUNE_HOME, model caches and temp dirs in a mount namespace; the model, the checkpoints
and the inputs reached by URI (the moto S3 server), as on a real cluster. The ``cluster`` tier runs
the whole lifecycle on two such nodes; this is the default tier's cheaper check."""

import json
import uuid

import pytest
import yaml

from ragtune.config import validate_config
from ragtune.data import run_prepare
from tests.cluster import SimulatedCluster
from tests.conftest import QA, assert_adapter_reloads


def upload(local, uri: str) -> str:
    from pyarrow import fs

    filesystem, base = fs.FileSystem.from_uri(uri)
    fs.copy_files(str(local), base, source_filesystem=fs.LocalFileSystem(), destination_filesystem=filesystem)
    return uri


@pytest.fixture(scope="module")
def isolated(s3_bucket):
    """A head (the driver's node, 1 CPU) and one isolated worker node offering the resource ``isolated``."""
    cluster = SimulatedCluster.start(head_cpus=1)
    try:
        cluster.add_node("worker-1", num_cpus=2, resources={"isolated": 2})
        yield cluster
    finally:
        cluster.stop()


def test_a_training_job_runs_on_a_node_that_shares_nothing_with_the_driver(isolated, s3_bucket, tiny_lm, tmp_path,
                                                                           ray_cluster):
    """`ray job submit jobs/train.py`: the training worker and the export check run on the isolated
    node, which resolves the model from its reference into its own cache (the driver's resolved path
    does not exist there) and checkpoints to s3://; the driver exports an adapter that reloads. The
    dataset is prepared here beforehand, so no earlier work has put the model on that node."""
    run = f"isolated-{uuid.uuid4().hex[:6]}"
    model = upload(tiny_lm, f"s3://{s3_bucket}/models/{run}")
    prepare = {"inputs": [str(QA)], "output_dir": str(tmp_path / "data"), "validation_fraction": 0.2}
    run_prepare(validate_config({"generator": {"model": model}, "prepare": prepare}, "the test's config"))
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump({
        "generator": {"model": model},
        "prepare": {"output_dir": prepare["output_dir"]},
        "train": {"run_name": run, "storage_path": f"s3://{s3_bucket}/runs", "output_dir": str(tmp_path / "adapter"),
                  "num_workers": 1, "cpus_per_worker": 1, "worker_resources": {"isolated": 1},
                  "micro_batch_size": 4, "max_steps": 4, "checkpoint_every": 2, "eval_every": 2,
                  "learning_rate": 1e-2, "warmup_ratio": 0},
    }))
    result = isolated.submit("python", "jobs/train.py", str(config))
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    report = json.loads((tmp_path / "adapter" / "training_report.json").read_text())
    assert report["steps"] == 4 and report["workers"] == 1
    assert_adapter_reloads(tiny_lm, tmp_path / "adapter", report)
    node = isolated.nodes["worker-1"]
    cached = list(node.own_home().glob("models/storage/*/model.safetensors"))
    assert len(cached) == 1  # the node fetched the model by its reference, into its own $RAGTUNE_HOME


def test_a_job_on_a_cluster_without_milvus_uri_fails_before_any_work(isolated):
    """No MILVUS_URI on a cluster of two nodes: one milvus-lite server per node would give each node
    a knowledge base of its own, so the job stops at once and says what to set."""
    result = isolated.submit("python", "jobs/ingest.py", "jobs/configs/ingest_quickstart.yaml",
                             "--set", f"milvus.collection=c_{uuid.uuid4().hex[:8]}", timeout=300)
    assert result.returncode != 0
    assert "this Ray cluster has 2 nodes" in result.stdout and "set MILVUS_URI" in result.stdout


def test_ingest_of_files_on_the_drivers_node_runs_while_encoders_hold_every_cpu(isolated, milvus_port):
    """Three 1-CPU encoder actors take all three CPUs of the cluster, one of them the head's. The
    sources are local to the driver's node, so their parse tasks are pinned there; they reserve no
    CPU and run anyway (a task waiting for the head's CPU would never start: the job would hang)."""
    result = isolated.submit("python", "jobs/ingest.py", "jobs/configs/ingest_quickstart.yaml",
                             "--set", f"milvus.collection=c_{uuid.uuid4().hex[:8]}",
                             "--set", "embedding.concurrency=3", "--set", "embedding.num_cpus_per_actor=1",
                             env_vars={"MILVUS_URI": f"http://127.0.0.1:{milvus_port}"}, timeout=180)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert '"documents": 26' in result.stdout
