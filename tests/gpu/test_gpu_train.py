"""GPU tier (`pytest -m gpu`): the same training code on CUDA with bf16 and ZeRO-3, one worker per
GPU. Skipped without CUDA; prints tokens/s for BENCHMARKS.md."""

import json

import pytest

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_bf16_zero3_lora_on_gpu(tiny_lm, ray_cluster, tmp_path):
    from ragtune.config import load_config
    from ragtune.data import run_prepare
    from ragtune.train import run_train
    from tests.conftest import REPO

    gpus = torch.cuda.device_count()
    cfg = load_config(overrides=[
        f"generator.model={tiny_lm}", f"prepare.inputs=[{REPO / 'platform/ragtune/quickstart/qa.jsonl'}]",
        f"prepare.output_dir={tmp_path / 'data'}", "prepare.validation_fraction=0.2",
        f"train.storage_path={tmp_path / 'runs'}", f"train.output_dir={tmp_path / 'adapter'}", "train.run_name=gpu",
        f"train.num_workers={min(gpus, 2)}", "train.use_gpu=true", "train.precision=bf16", "train.deepspeed.stage=3",
        "train.deepspeed.stage3_param_persistence_threshold=0", "train.micro_batch_size=4", "train.max_steps=8",
        "train.checkpoint_every=4", "train.eval_every=4", "train.learning_rate=1e-2"])
    run_prepare(cfg)
    report = run_train(cfg).report
    assert report["device"] == "cuda" and report["steps"] == 8
    assert report["export_check"]["checked"] and report["final_loss"] < report["first_loss"]
    print(json.dumps({"tokens_per_second": report["tokens_per_second"], "gpu_hours": report["gpu_hours"]}))
