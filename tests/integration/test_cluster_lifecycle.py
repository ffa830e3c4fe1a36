"""The whole lifecycle on a Ray cluster whose two worker nodes share nothing with the driver by
accident (tests/cluster.py), through `ray job submit` and `serve deploy` as a user runs it (marker
``cluster``; about 3 minutes on 2 cores): ingest → prepare with retrieved context → train with one worker on
each worker node (ZeRO-3 with offload, checkpoints to s3://), one worker node killed after the first
registered checkpoint and replaced, the run resuming and publishing its adapter to an s3:// registry
→ compare with its generator actors on the worker nodes → the serving graph, its replicas on the
worker nodes, loading the adapter from the registry and answering through the official openai client.
Milvus is one milvus-lite server reached only by MILVUS_URI; the model travels as an s3:// URI."""

import json
import re
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import yaml

from tests.cluster import SimulatedCluster
from tests.conftest import QA, RAY, REPO, free_port
from tests.integration.test_isolated_nodes import upload

pytestmark = pytest.mark.cluster

SERVE = str(Path(RAY).with_name("serve"))
WORKER = {"isolated": 4}  # what only the worker nodes offer: work that asks for it never runs on the head


@pytest.fixture(scope="module")
def cluster(s3_bucket):
    cluster = SimulatedCluster.start(head_cpus=1)
    try:
        for name in ("worker-1", "worker-2"):
            cluster.add_node(name, num_cpus=2, resources={**WORKER, "trainer": 1})
        yield cluster
    finally:
        cluster.stop()


def _exists(uri: str) -> bool:
    from pyarrow import fs

    filesystem, path = fs.FileSystem.from_uri(uri)
    return filesystem.get_file_info(path).type == fs.FileType.File


def _read(uri: str) -> str:
    from pyarrow import fs

    filesystem, path = fs.FileSystem.from_uri(uri)
    with filesystem.open_input_stream(path) as f:
        return f.read().decode()


def _wait_job(cluster: SimulatedCluster, submission: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = subprocess.run([RAY, "job", "status", "--address", cluster.dashboard, submission],
                                env=cluster.env, capture_output=True, text=True)
        out = status.stdout + status.stderr  # the CLI logs the status to stderr
        finished = re.search(r"\b(succeeded|failed|stopped)\b", out, re.IGNORECASE)  # "Job '…' succeeded"
        if finished:
            return finished[1].upper()
        time.sleep(3)
    raise AssertionError(f"job {submission} did not finish in {timeout:.0f} s")


def _logs(cluster: SimulatedCluster, submission: str) -> str:
    return subprocess.run([RAY, "job", "logs", "--address", cluster.dashboard, submission], env=cluster.env,
                          capture_output=True, text=True).stdout[-6000:]


def test_ingest_prepare_train_lose_a_node_resume_compare_and_serve(cluster, s3_bucket, milvus_port, tiny_lm, tmp_path):
    run = f"lc-{uuid.uuid4().hex[:6]}"
    milvus = {"MILVUS_URI": f"http://127.0.0.1:{milvus_port}"}
    collection = f"lc_{run[3:]}"
    model = upload(tiny_lm, f"s3://{s3_bucket}/models/{run}")
    registry = f"s3://{s3_bucket}/adapters"

    # 1. ingest: the encoder actors run where Ray puts them; every write goes to the one Milvus
    result = cluster.submit("python", "jobs/ingest.py", "jobs/configs/ingest_quickstart.yaml",
                            "--set", f"milvus.collection={collection}", env_vars=milvus, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:]
    assert '"documents": 26' in result.stdout

    # 2-3. prepare with context and train: one worker per worker node, checkpoints to s3://
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump({
        "generator": {"model": model}, "milvus": {"collection": collection},
        "prepare": {"inputs": [str(QA)], "output_dir": str(tmp_path / "data"), "with_context": True,
                    "validation_fraction": 0.2, "eval_holdout": 8, "concurrency": 1},
        "train": {"run_name": run, "num_workers": 2, "cpus_per_worker": 1, "worker_resources": {"trainer": 1},
                  "placement_strategy": "STRICT_SPREAD", "storage_path": f"s3://{s3_bucket}/runs",
                  "output_dir": f"{registry}/{run}", "micro_batch_size": 2, "epochs": 3, "max_steps": 12, "checkpoint_every": 2,
                  "eval_every": 4, "max_failures": 2, "learning_rate": 1e-2, "warmup_ratio": 0,
                  "deepspeed": {"stage": 3, "offload_optimizer": True, "offload_param": True}},
    }))
    submission = f"train-{run}"
    started = cluster.submit("python", "jobs/train.py", str(config), env_vars=milvus,
                             flags=("--no-wait", "--submission-id", submission))
    assert started.returncode == 0, started.stderr[-2000:]
    snapshot = f"s3://{s3_bucket}/runs/{run}/checkpoint_manager_snapshot.json"
    deadline = time.monotonic() + 900
    while not _exists(snapshot):  # Ray Train writes it once every worker has reported a checkpoint
        assert time.monotonic() < deadline, "no registered checkpoint in 15 minutes:\n" + _logs(cluster, submission)
        time.sleep(1)
    cluster.kill_node("worker-2")
    cluster.add_node("worker-3", num_cpus=2, resources={**WORKER, "trainer": 1})
    assert _wait_job(cluster, submission, timeout=1200) == "SUCCEEDED", _logs(cluster, submission)
    assert _exists(f"{registry}/{run}/adapter_config.json") and _exists(f"{registry}/{run}/adapter_model.safetensors")
    report = json.loads(_read(f"{registry}/{run}/training_report.json"))  # published with the adapter
    assert report["steps"] == 12 and report["export_check"]["checked"]
    resumed = [a["resumed_from_step"] for a in report["attempts"]]
    assert len(resumed) == 2 and resumed[0] == 0 and resumed[1] >= 2, report["attempts"]  # one restart, from a checkpoint

    # 4. compare: generator actors of 2 CPUs, which only the worker nodes have
    out = tmp_path / "compare"
    result = cluster.submit(
        "python", "jobs/evaluate.py", "jobs/configs/compare_quickstart.yaml",
        "--set", f"generator.model={model}", "--set", f"milvus.collection={collection}",
        "--set", f"compare.adapter={registry}/{run}", "--set", f"compare.questions={tmp_path / 'data' / 'eval.jsonl'}",
        "--set", "compare.freshness_documents=null", "--set", "compare.freshness_questions=null",
        "--set", "compare.sample=null", "--set", "compare.max_tokens=8", "--set", "compare.bootstrap_samples=100",
        "--set", "compare.cpus_per_actor=2", "--set", f"compare.output_dir={out}",
        env_vars=milvus, timeout=900)
    assert result.returncode == 0, result.stdout[-4000:]
    compared = json.loads((out / "report.json").read_text())
    assert set(compared["arms"]) == {"base", "rag", "ft", "hybrid"}

    # 5. serve: `serve deploy` of a config whose replicas need the worker nodes' resource
    port = free_port()
    local = yaml.safe_load((REPO / "serve_configs" / "local.yaml").read_text())
    app = local["applications"][0]
    app["args"].update(generator={"model": model}, milvus={"uri": milvus["MILVUS_URI"], "collection": collection})
    app["args"]["serve"].update(adapters=registry, model_name="tiny")
    for deployment in app["deployments"]:
        if deployment["name"] != "Ingress":
            deployment["ray_actor_options"]["resources"] = {"isolated": 0.5}
    serve_config = tmp_path / "serve.yaml"
    serve_config.write_text(yaml.safe_dump({**local, "http_options": {**local["http_options"], "port": port}},
                                           sort_keys=False))
    deployed = subprocess.run([SERVE, "deploy", str(serve_config), "--address", cluster.dashboard],
                              env=cluster.env, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    from openai import OpenAI

    client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=60)
    deadline = time.monotonic() + 600
    while True:
        try:
            models = [m.id for m in client.models.list().data]
            break
        except Exception:  # noqa: BLE001 — not up yet
            assert time.monotonic() < deadline, subprocess.run(
                [SERVE, "status", "--address", cluster.dashboard], env=cluster.env, capture_output=True, text=True).stdout
            time.sleep(3)
    assert f"tiny:{run}" in models
    answer = client.chat.completions.create(model=f"tiny:{run}", max_tokens=8, messages=[
        {"role": "user", "content": "How much do the Aria ANC headphones cost?"}], extra_body={"ragtune": {"mode": "hybrid"}})
    assert answer.choices[0].message.content is not None and answer.model == f"tiny:{run}"
