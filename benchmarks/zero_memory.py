"""Peak host memory per training worker under ZeRO-2, ZeRO-3 and ZeRO-3 with parameter offload, on
the random 1.1B Llama of benchmarks/gpu_check.py with 2 workers on CPU (fp32): the premise of the
multi-node ZeRO-3 preset is that no worker holds the whole model.

    python benchmarks/zero_memory.py [--steps 1] [--seq 128] [--out results/]

Each configuration runs as its own pair of processes (torch.distributed, gloo) through ragtune's
training step (ragtune.train.loop.build_engine / train_step: what Ray Train's workers run); each
worker reports its peak anonymous memory (RssAnon, sampled) and its peak resident memory (VmHWM,
which also counts the pages of the memory-mapped checkpoint file) after loading and after training.
ZeRO-3 runs as ragtune configures it (a live-parameter budget of a tenth of the model, glibc
returning freed tensors to the system) and with DeepSpeed's own defaults, as ragtune ran it before.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

# name → (ZeRO stage, offload_param, stage3_max_live_parameters = stage3_max_reuse_distance, the workers'
# environment as ragtune sets it). None: ragtune's budget (a tenth of the model, 1.1e8 here); 1e9 with
# no environment: DeepSpeed's own defaults, as ragtune ran ZeRO-3 before.
CONFIGS = {"zero2": (2, False, None, True), "zero3": (3, False, None, True),
           "zero3_offload_param": (3, True, None, True), "zero3_deepspeed_defaults": (3, False, 10**9, False)}


class AnonPeak:
    """The peak of this process's anonymous resident memory (RssAnon), sampled every 20 ms: what a
    worker really holds. VmHWM also counts the file pages of a memory-mapped checkpoint, which the
    kernel drops under pressure."""

    def __init__(self):
        import threading

        self.peak = 0.0
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        import time

        while True:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("RssAnon:"):
                    self.peak = max(self.peak, int(line.split()[1]) / 2**20)
            time.sleep(0.02)


def worker(name: str, model: Path, steps: int, seq: int, out: Path) -> None:
    """One rank of one configuration (RANK / WORLD_SIZE set by the parent)."""
    import torch

    from gpu_check import init_process_group, train

    anon = AnonPeak()
    torch.set_num_threads(1)
    device = torch.device("cpu")
    init_process_group(device)
    stage, offload, live, _ = CONFIGS[name]
    _, _, _, figures = train(model, stage, False, device, steps, 1, seq, offload_param=offload, micro_batch=1,
                             live_parameters=live)
    figures["anon_peak_gib"] = round(anon.peak, 2)
    (out / f"{name}.rank{os.environ['RANK']}.json").write_text(json.dumps(figures))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1, help="measured optimizer steps after one warm-up step")
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--out", type=Path, default=Path("zero-memory"))
    parser.add_argument("--only", action="append", choices=list(CONFIGS), help="run these configurations only")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.worker:
        worker(args.worker, args.model, args.steps, args.seq, args.out)
        return
    import torch

    from gpu_check import random_model, run_config

    from ragtune.train.loop import worker_env

    model = random_model(False, torch.device("cpu"), args.out)  # fp32 on CPU, saved once
    results = {}
    for name in args.only or list(CONFIGS):
        port = 29500 + list(CONFIGS).index(name)
        stage, offload, live, ragtune_env = CONFIGS[name]
        env = {k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_THRESHOLD_"}
        if ragtune_env:  # what ragtune.train.driver hands its Ray Train workers
            env.update(worker_env(run_config(model, stage, False, torch.device("cpu"), offload).train))
        procs = [subprocess.Popen([sys.executable, __file__, "--worker", name, "--model", str(model), "--steps",
                                   str(args.steps), "--seq", str(args.seq), "--out", str(args.out)],
                                  env={**env, "RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": "2",
                                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
                 for r in range(2)]
        codes = [p.wait() for p in procs]
        if any(codes):
            raise SystemExit(f"{name}: workers exited with {codes}")
        ranks = [json.loads((args.out / f"{name}.rank{r}.json").read_text()) for r in range(2)]
        results[name] = {"peak_anon_gib_per_worker": [r["anon_peak_gib"] for r in ranks],
                         "peak_rss_gib_per_worker": [r["host_peak_gib"] for r in ranks],
                         "peak_rss_gib_after_load": [r["host_peak_gib_after_load"] for r in ranks],
                         "parameters": ranks[0]["parameters"], "tokens_per_s": ranks[0]["tokens_per_s"],
                         "loss_last": ranks[0]["loss_last"]}
        print(json.dumps({name: results[name]}), flush=True)
    if "zero2" in results:
        for key in ("peak_anon_gib_per_worker", "peak_rss_gib_per_worker"):
            base = max(results["zero2"][key])
            for name in results:
                results[name][f"ratio_to_zero2 ({key})"] = round(max(results[name][key]) / base, 3)
    (args.out / "zero_memory.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
