"""Run by test_multinode.py in its own process: a 3-node Ray cluster on this machine (a head for
the driver and data, two 1-CPU worker nodes), one training worker per node (the workers reserve
the `trainer` resource, which only the worker nodes have), ZeRO-3 with CPU offload, a shared
storage_path. Once the first checkpoint is registered, the node of one worker is removed and a
fresh node joins. Prints the training report as JSON."""

import json
import sys
import threading
import time
from pathlib import Path

import ray
from ray.cluster_utils import Cluster

from ragtune.config import load_config
from ragtune.train import run_train

tiny_lm, dataset, storage, out = sys.argv[1:5]
head_ports = json.loads(sys.argv[5])  # the session's local cluster may run beside this one: no default ports
# Nodes keep Ray's default node IP: ray.init(address=...) turns a 127.0.0.1 address into that IP.
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False, **head_ports})
workers = [cluster.add_node(num_cpus=1, resources={"trainer": 1}) for _ in range(2)]
ray.init(address=cluster.address)
cfg = load_config(overrides=[
    f"generator.model={tiny_lm}", f"prepare.output_dir={dataset}", "train.run_name=multinode",
    f"train.storage_path={storage}", f"train.output_dir={out}", "train.num_workers=2", "train.cpus_per_worker=1",
    "train.worker_resources={trainer: 1}",
    "train.placement_strategy=STRICT_SPREAD", "train.micro_batch_size=4", "train.max_steps=8",
    "train.checkpoint_every=2", "train.eval_every=8", "train.max_failures=2",
    # the multi-node preset's ZeRO-3 with parameters and optimizer state offloaded to CPU memory
    "train.deepspeed.stage=3", "train.deepspeed.offload_optimizer=true", "train.deepspeed.offload_param=true",
    "train.deepspeed.stage3_param_persistence_threshold=0"])


outcome = {}


def train():
    """In a thread: Ray starts and stops nodes only from the main thread (signal handlers)."""
    try:
        outcome["report"] = run_train(cfg).report
    except BaseException as exc:  # re-raised on the main thread
        outcome["error"] = exc


trainer = threading.Thread(target=train, daemon=True)
trainer.start()
# Ray Train writes this snapshot once a checkpoint is registered (every worker reported it); a
# checkpoint directory alone may still be unregistered, and a restart would not resume from it.
while trainer.is_alive() and not Path(storage, "multinode", "checkpoint_manager_snapshot.json").exists():
    time.sleep(0.5)
if trainer.is_alive():
    cluster.remove_node(workers[1])
    cluster.add_node(num_cpus=1, resources={"trainer": 1})
    print("NODE_REMOVED", flush=True)
trainer.join()
if "error" in outcome:
    raise outcome["error"]
report = outcome["report"]
print("REPORT " + json.dumps({k: report[k] for k in ("steps", "attempts", "export_check", "workers")}), flush=True)
ray.shutdown()
cluster.shutdown()
