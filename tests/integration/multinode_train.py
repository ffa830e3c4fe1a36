"""Run by test_multinode.py in its own process: a 3-node Ray cluster on this machine (a head for
the driver and data, two 1-CPU worker nodes), one training worker per node, a shared
storage_path; once the first checkpoint exists, the node of one worker is removed and a fresh
node joins. Prints the training report as JSON."""

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
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "node_ip_address": "127.0.0.1",
                                                       "include_dashboard": False})
workers = [cluster.add_node(num_cpus=1, resources={"trainer": 1}) for _ in range(2)]
ray.init(address=cluster.address)
cfg = load_config(overrides=[
    f"generator.model={tiny_lm}", f"prepare.output_dir={dataset}", "train.run_name=multinode",
    f"train.storage_path={storage}", f"train.output_dir={out}", "train.num_workers=2", "train.cpus_per_worker=1",
    "train.placement_strategy=STRICT_SPREAD", "train.micro_batch_size=4", "train.max_steps=8",
    "train.checkpoint_every=2", "train.eval_every=8", "train.max_failures=2"])


def remove_a_node_after_first_checkpoint():
    while not list(Path(storage, "multinode").glob("checkpoint_*/trainer_state.json")):
        time.sleep(0.5)
    cluster.remove_node(workers[1])
    cluster.add_node(num_cpus=1, resources={"trainer": 1})
    print("NODE_REMOVED", flush=True)


threading.Thread(target=remove_a_node_after_first_checkpoint, daemon=True).start()
report = run_train(cfg).report
print("REPORT " + json.dumps({k: report[k] for k in ("steps", "attempts", "export_check", "workers")}), flush=True)
ray.shutdown()
cluster.shutdown()
