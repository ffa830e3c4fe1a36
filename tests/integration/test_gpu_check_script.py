"""benchmarks/gpu_check.py, the GPU check, runs its Ray-free training step on CPU: a tiny random
Llama trained under ZeRO-2 and ZeRO-3 through ragtune.train.loop.build_engine with Ray unimportable
(the GPU machines have no Ray), the ZeRO-3 adapter exported and reloaded with equal logits, and
generation with the adapter."""

import json
import subprocess
import sys

from tests.conftest import REPO

NO_RAY = "import runpy, sys; sys.modules['ray'] = None; runpy.run_path('benchmarks/gpu_check.py', run_name='__main__')"


def test_the_gpu_check_runs_its_training_step_without_ray_on_cpu(tmp_path):
    result = subprocess.run([sys.executable, "-c", NO_RAY, "--tiny", "--device", "cpu", "--out", str(tmp_path)],
                            capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    figures = json.loads((tmp_path / "gpu_check.json").read_text())
    for stage in ("zero2", "zero3"):
        assert figures[stage]["tokens_per_s"] > 0 and figures[stage]["loss_last"] < figures[stage]["loss_first"]
    # the same step, partitioned or not: identical losses
    assert figures["zero2"]["loss_last"] == figures["zero3"]["loss_last"]
    export = figures["zero3_export"]
    assert export["tensors"] > 0 and export["empty_tensors"] == 0 and export["lora_b_nonzero"] and export["equal"]
    assert figures["generate"]["tokens_per_s"] > 0 and figures["generate"]["with_lora_adapter"]
