"""The Ray Train worker loop: PEFT LoRA inside a DeepSpeed engine, fed by Ray Data shards.

The same function runs on 2 CPU workers (gloo, fp32) and on 8 GPUs per node (NCCL, bf16);
only the configuration differs.
"""

from __future__ import annotations

import logging
import math
import os
import random
import tempfile
import time
from pathlib import Path
from typing import Any

from ragtune.config import RagtuneConfig, TrainConfig, ragtune_home
from ragtune.models import resolve
from ragtune.train.state import TrainState, load_rng_state, save_rng_state

log = logging.getLogger(__name__)

ADAPTER_DIR = "adapter"
PROBE_FILE = "probe.safetensors"
DS_TAG = "deepspeed"
_PROBE_POSITIONS = 8


def deepspeed_config(t: TrainConfig, bf16: bool) -> dict[str, Any]:
    """The DeepSpeed config for the run (the optimizer and scheduler are passed as objects)."""
    zero: dict[str, Any] = {"stage": t.deepspeed.stage}
    if t.deepspeed.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": bf16}
    if t.deepspeed.offload_param:
        zero["offload_param"] = {"device": "cpu", "pin_memory": bf16}
    for knob in ("stage3_param_persistence_threshold", "stage3_max_live_parameters", "stage3_max_reuse_distance"):
        if getattr(t.deepspeed, knob) is not None:
            zero[knob] = getattr(t.deepspeed, knob)
    return {
        "train_micro_batch_size_per_gpu": t.micro_batch_size,
        "gradient_accumulation_steps": t.gradient_accumulation_steps,
        "gradient_clipping": t.max_grad_norm,
        "zero_optimization": zero,
        "bf16": {"enabled": bf16},
        # a torch optimizer is passed in; DeepSpeed would otherwise insist on its own CPU Adam with offload
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def cosine_with_warmup(total_steps: int, warmup_steps: int):
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return factor


def collate(batch: dict, device) -> dict:
    """Right-pad a batch of variable-length rows; pad labels are ignored by the loss."""
    import torch

    lengths = [len(x) for x in batch["input_ids"]]
    width = max(lengths)
    out = {"input_ids": torch.zeros(len(lengths), width, dtype=torch.long),
           "labels": torch.full((len(lengths), width), -100, dtype=torch.long),
           "attention_mask": torch.zeros(len(lengths), width, dtype=torch.long)}
    if "position_ids" in batch:
        out["position_ids"] = torch.zeros(len(lengths), width, dtype=torch.long)
    for i, n in enumerate(lengths):
        out["input_ids"][i, :n] = torch.as_tensor(batch["input_ids"][i])
        out["labels"][i, :n] = torch.as_tensor(batch["labels"][i])
        out["attention_mask"][i, :n] = 1
        if "position_ids" in out:
            out["position_ids"][i, :n] = torch.as_tensor(batch["position_ids"][i])
    return {k: v.to(device) for k, v in out.items()}


def _load_model(cfg: RagtuneConfig, targets: list[str], bf16: bool, device):
    """The base model with LoRA applied. The worker resolves the model reference itself (into its
    node's cache): the driver's resolved path does not exist on other nodes."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    t = cfg.train
    kwargs: dict[str, Any] = {"dtype": torch.bfloat16 if bf16 else torch.float32}
    if t.lora.quantize_4bit:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16, bnb_4bit_use_double_quant=True)
        kwargs["device_map"] = {"": device}
    path = resolve(cfg.generator.model).path
    if t.deepspeed.stage == 3:  # QLoRA is stage 0-2 (config)
        model = _from_pretrained_partitioned(path, kwargs["dtype"])
    else:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if t.lora.quantize_4bit:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=t.gradient_checkpointing)
    elif t.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model.config.use_cache = False
    lora = LoraConfig(r=t.lora.r, lora_alpha=t.lora.alpha, lora_dropout=t.lora.dropout, target_modules=targets,
                      task_type="CAUSAL_LM")
    torch.manual_seed(t.seed)  # the same LoRA initialisation on every rank, whichever way the base was built
    return get_peft_model(model, lora)


def _from_pretrained_partitioned(path: Path, dtype):
    """Under ZeRO-3, while ``_load_sharded``'s config lives: the model built partitioned
    (``from_config`` inside ``deepspeed.zero.Init``), then its weights streamed in one tensor at a
    time — rank 0 reads each from the safetensors files and ZeRO hands every rank its shard — so no
    rank holds more than its shards and one whole tensor. (transformers' ZeRO-3 ``from_pretrained``
    first reads the whole checkpoint into rank 0's memory: 7.44 GiB there against 3.50 GiB on the
    other rank after loading a 1.1B model in fp32, benchmarks/zero_memory.py.)

    Raises:
        ValueError: the checkpoint lacks weights the model has.
    """
    import json

    import deepspeed
    import torch.distributed as dist
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path), dtype=dtype)
    index = path / "model.safetensors.index.json"
    files = sorted({path / f for f in json.loads(index.read_text())["weight_map"].values()}) if index.exists() \
        else sorted(path.glob("*.safetensors"))
    source = {}
    for file in files:  # the headers only, on every rank
        with safe_open(str(file), framework="pt") as handle:
            source.update(dict.fromkeys(handle.keys(), file))
    params = list(model.named_parameters())
    missing = [name for name, _ in params if name not in source]
    if missing:
        raise ValueError(f"the checkpoint in {path} has no weights for {', '.join(missing[:5])}"
                         f"{' and more' if len(missing) > 5 else ''}")
    reader = dist.get_rank() == 0 if dist.is_initialized() else True
    for name, param in params:  # the same order on every rank: each gather is collective
        with deepspeed.zero.GatheredParameters([param], modifier_rank=0):
            if reader:  # opened per tensor: the file's pages are mapped for one tensor at a time
                with safe_open(str(source[name]), framework="pt") as handle:
                    param.data.copy_(handle.get_tensor(name))
    return model


def skip_cpu_shm_comm() -> None:
    """On a CPU accelerator DeepSpeed JIT-compiles its shared-memory all-reduce on first use (minutes
    of C++ on 2 cores, on every new machine), which only inference's tensor-parallel layers call;
    training reduces through torch.distributed. DeepSpeed keeps this dict for edits like this one."""
    import deepspeed

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def _load_sharded(ds_config: dict):
    """Under ZeRO-3, ``from_config`` builds the model inside ``deepspeed.zero.Init`` while this
    object lives (``_from_pretrained_partitioned``): each rank materialises only its shard of every
    weight, never the whole base model (the premise of ZeRO-3 across nodes). Keep the returned
    object until ``deepspeed.initialize``."""
    from transformers.integrations import HfDeepSpeedConfig

    return HfDeepSpeedConfig(ds_config)


def build_engine(cfg: RagtuneConfig, targets: list[str], bf16: bool, device, total_steps: int):
    """The DeepSpeed engine of a LoRA run and its LR scheduler, on an initialised process group.
    Ray-free: Ray Train's workers call it (train_loop), and so does benchmarks/gpu_check.py on a
    machine without Ray. Under ZeRO-3 the base model is built partitioned (``_load_sharded``)."""
    import deepspeed
    import torch

    t = cfg.train
    ds_config = deepspeed_config(t, bf16)
    sharded = _load_sharded(ds_config) if t.deepspeed.stage == 3 else None
    model = _load_model(cfg, targets, bf16, device)
    if t.deepspeed.stage == 3:
        _bound_live_parameters(ds_config["zero_optimization"], model)
    params = [p for p in model.parameters() if p.requires_grad]
    if t.deepspeed.offload_optimizer and device.type == "cuda":
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        optimizer = DeepSpeedCPUAdam(params, lr=t.learning_rate, weight_decay=t.weight_decay)
    else:
        optimizer = torch.optim.AdamW(params, lr=t.learning_rate, weight_decay=t.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, cosine_with_warmup(total_steps, int(t.warmup_ratio * total_steps)))
    engine, optimizer, _, scheduler = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config)
    del sharded  # the engine holds the partitioned model now
    _load_checkpoints_without_pickle(engine)
    return engine, scheduler


def _load_checkpoints_without_pickle(engine) -> None:
    """DeepSpeed reads its checkpoint files with ``torch.load(weights_only=False)``: a file planted in
    the run's storage (an S3 prefix, a shared volume) would run its code on every worker that
    resumes. Its engine reads them through ``checkpoint_engine.load``, which this makes a
    ``weights_only=True`` load that allows, besides tensors and plain containers, only the DeepSpeed
    classes its ZeRO checkpoints hold."""
    import torch
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    allowed = [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]

    def load(path: str, map_location=None):
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location=map_location, weights_only=True)

    engine.checkpoint_engine.load = load


def _bound_live_parameters(zero: dict, model) -> None:
    """Unless configured: at most a tenth of the model's parameters gathered at once (and kept for
    reuse), and at most DeepSpeed's 1e9. DeepSpeed's 1e9 alone is the whole of a model of 1B
    parameters or less, and a ZeRO-3 worker then ends above a ZeRO-2 one (benchmarks/zero_memory.py)."""
    total = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())
    budget = min(10**9, max(10**7, total // 10))
    for knob in ("stage3_max_live_parameters", "stage3_max_reuse_distance"):
        zero.setdefault(knob, budget)


def worker_env(t: TrainConfig) -> dict[str, str]:
    """Environment variables of the training workers. Under ZeRO-3, glibc returns freed allocations
    over 128 KiB to the system at once: the weights gathered for a layer and freed after it would
    otherwise stay in malloc's heap, and a worker would hold as much as under ZeRO-2
    (benchmarks/zero_memory.py). A value set in the environment wins."""
    if t.deepspeed.stage != 3 or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return {}
    return {"MALLOC_MMAP_THRESHOLD_": "131072"}


def train_step(engine, inputs: dict):
    """One micro-batch: forward, backward, and the optimizer step when the accumulation window closes."""
    loss = engine(**inputs).loss
    engine.backward(loss)
    engine.step()
    return loss


def _all_reduce_sum(values: list[float], device) -> list[float]:
    import torch
    import torch.distributed as dist

    tensor = torch.tensor(values, dtype=torch.float64 if device.type == "cpu" else torch.float32, device=device)
    if dist.is_initialized():
        dist.all_reduce(tensor)
    return tensor.tolist()


def adapter_state(engine) -> dict:
    """The LoRA weights as a full state dict on every rank (gathered from the shards under ZeRO-3)."""
    import deepspeed
    from peft import get_peft_model_state_dict

    trainable = [p for p in engine.module.parameters() if p.requires_grad]
    with deepspeed.zero.GatheredParameters(trainable, modifier_rank=None, enabled=engine.zero_optimization_stage() == 3):
        return {k: v.detach().to("cpu", copy=True).float().contiguous() for k, v in get_peft_model_state_dict(engine.module).items()}


def train_loop(loop_config: dict) -> None:
    """Ray Train worker entry point; ``loop_config`` holds the validated config and run constants."""
    import ray.train
    from ray.train.torch import get_device

    cfg = RagtuneConfig.model_validate(loop_config["config"])
    t = cfg.train
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(ragtune_home() / "torch_extensions"))
    import torch

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = get_device()
    bf16 = t.precision == "bf16" or (t.precision == "auto" and device.type == "cuda")
    total_steps, steps_per_epoch = loop_config["total_steps"], loop_config["steps_per_epoch"]
    if device.type == "cpu":
        torch.set_num_threads(loop_config["torch_threads"])
        skip_cpu_shm_comm()
    random.seed(t.seed)
    torch.manual_seed(t.seed)

    engine, scheduler = build_engine(cfg, loop_config["targets"], bf16, device, total_steps)

    state = TrainState()
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d:
            engine.load_checkpoint(d, tag=DS_TAG, load_module_strict=False)
            state = TrainState.load(Path(d))
            load_rng_state(Path(d) / f"rng_rank{rank}.json")
    state.attempts.append({"resumed_from_step": state.step, "recomputed_steps": _recomputed(loop_config, state.step)})

    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("validation") if loop_config["has_validation"] else None
    accumulation = t.gradient_accumulation_steps
    while state.step < total_steps:
        window_loss, window_micro = 0.0, 0
        started = time.perf_counter()
        batches = train_shard.iter_batches(batch_size=t.micro_batch_size, batch_format="numpy", drop_last=True)
        for index, batch in enumerate(batches):
            if index >= steps_per_epoch * accumulation or state.step >= total_steps:
                break  # an epoch's leftover micro-batches would not fill an optimizer step
            if index < state.micro_batches_in_epoch:
                continue  # consumed before the restart: the data position is restored, not replayed
            inputs = collate(batch, device)
            loss = train_step(engine, inputs)
            state.micro_batches_in_epoch += 1
            state.tokens += int(_all_reduce_sum([float(inputs["attention_mask"].sum())], device)[0])
            window_loss, window_micro = window_loss + float(loss.detach()), window_micro + 1
            if state.micro_batches_in_epoch % accumulation:
                continue
            state.step += 1
            loss_sum, micro = _all_reduce_sum([window_loss, window_micro], device)
            state.loss.append({"step": state.step, "loss": loss_sum / micro, "lr": scheduler.get_last_lr()[0]})
            window_loss, window_micro = 0.0, 0
            if rank == 0:  # the driver's terminal shows these lines (ragtune.logfile._TRAINING_STEP)
                log.info("step %d/%d · epoch %d · loss %.4f", state.step, total_steps, state.epoch + 1,
                         state.loss[-1]["loss"])
            _note_progress(loop_config, rank, state.step)
            _maybe_fail(t, loop_config, rank, world, state.step)
            last = state.step == total_steps
            evaluate = val_shard is not None and (state.step % t.eval_every == 0 or last)
            save = state.step % t.checkpoint_every == 0 or last
            if evaluate or save:
                state.train_seconds += time.perf_counter() - started
                if evaluate:
                    state.validation.append({"step": state.step, **_validate(engine, val_shard, t, device)})
                    if rank == 0:
                        log.info("step %d/%d · validation loss %.4f", state.step, total_steps,
                                 state.validation[-1]["loss"])
                if save:
                    _checkpoint(engine, state, rank, val_shard, t, device, final=last)
                started = time.perf_counter()
        state.train_seconds += time.perf_counter() - started
        if state.step < total_steps:
            state.epoch += 1
            state.micro_batches_in_epoch = 0


def _validate(engine, shard, t: TrainConfig, device) -> dict[str, float]:
    """Token-weighted validation loss over every worker's shard, and its perplexity."""
    import torch

    engine.eval()
    total, count = 0.0, 0.0
    with torch.no_grad():
        for batch in shard.iter_batches(batch_size=t.micro_batch_size, batch_format="numpy"):
            inputs = collate(batch, device)
            tokens = float((inputs["labels"][:, 1:] != -100).sum())
            total += float(engine(**inputs).loss) * tokens
            count += tokens
    engine.train()
    total, count = _all_reduce_sum([total, count], device)
    loss = total / max(count, 1.0)
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0))}


def _probe(engine, shard, t: TrainConfig, device) -> dict:
    """Input ids and logits of the first validation row: the driver checks the exported adapter against them."""
    import torch

    batch = next(iter(shard.iter_batches(batch_size=1, batch_format="numpy")))
    inputs = collate(batch, device)
    engine.eval()
    with torch.no_grad():
        logits = engine(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
    engine.train()
    return {"input_ids": inputs["input_ids"][0].cpu().contiguous(),
            "logits": logits[0, :_PROBE_POSITIONS].float().cpu().contiguous()}


def _checkpoint(engine, state: TrainState, rank: int, val_shard, t: TrainConfig, device, final: bool) -> None:
    """Every worker writes its DeepSpeed shard and RNG state; rank 0 adds the adapter and the state."""
    import ray.train
    from ray.train import Checkpoint

    adapter = adapter_state(engine)  # collective under ZeRO-3: every rank takes part
    probe = _probe(engine, val_shard, t, device) if final and val_shard is not None else None
    with tempfile.TemporaryDirectory(prefix="ragtune-ckpt-") as tmp:
        directory = Path(tmp)
        engine.save_checkpoint(str(directory), tag=DS_TAG, exclude_frozen_parameters=True)
        save_rng_state(directory / f"rng_rank{rank}.json")
        if rank == 0:
            from safetensors.torch import save_file

            engine.module.save_pretrained(directory / ADAPTER_DIR, state_dict=adapter, safe_serialization=True)
            if probe is not None:
                save_file(probe, str(directory / PROBE_FILE))
            state.save(directory)
        metrics = {"step": state.step, "loss": state.loss[-1]["loss"] if state.loss else None}
        if state.validation:
            metrics["validation_loss"] = state.validation[-1]["loss"]
        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(tmp))


def _kv_key(loop_config: dict, what: str) -> str:
    return f"ragtune:{loop_config['run_id']}:{what}"


def _note_progress(loop_config: dict, rank: int, step: int) -> None:
    """The furthest step reached, kept in the cluster's KV store so a restarted attempt can count
    the steps it has to recompute."""
    if rank == 0:
        from ray.experimental.internal_kv import _internal_kv_put

        _internal_kv_put(_kv_key(loop_config, "step"), str(step).encode(), overwrite=True)


def _recomputed(loop_config: dict, restored_step: int) -> int:
    from ray.experimental.internal_kv import _internal_kv_get

    reached = _internal_kv_get(_kv_key(loop_config, "step"))
    return max(0, int(reached) - restored_step) if reached else 0


def _maybe_fail(t: TrainConfig, loop_config: dict, rank: int, world: int, step: int) -> None:
    """Fault injection (``train.fail_at_step``): the last worker raises once per cluster."""
    if t.fail_at_step != step or rank != world - 1:
        return
    from ray.experimental.internal_kv import _internal_kv_put

    if _internal_kv_put(_kv_key(loop_config, f"failed-at-{step}"), b"1", overwrite=False):
        return  # already injected once
    raise RuntimeError(f"injected failure after step {step} (train.fail_at_step)")
