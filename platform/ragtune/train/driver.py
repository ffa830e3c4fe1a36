"""``ragtune train`` / ``jobs/train.py``: checks everything that can fail before training starts,
runs the ``TorchTrainer``, then exports the adapter, the report and the loss curve."""

from __future__ import annotations

import json
import logging
import math
import re
import shutil
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from ragtune.config import RagtuneConfig, ragtune_home
from ragtune.data import DataError, ensure_prepared, output_dir as dataset_dir
from ragtune.data.pipeline import TRAINING_QUESTIONS, load_stats
from ragtune.data.render import load_chat_tokenizer
from ragtune.models import ResolvedModel, resolve
from ragtune.runtime import is_storage_uri
from ragtune.train.lora import target_modules
from ragtune.train.loop import ADAPTER_DIR, PROBE_FILE, train_loop, worker_env
from ragtune.train.report import REPORT_FILE, report_config, write_report
from ragtune.train.resume import record_run, resume_conflict, storage_path
from ragtune.train.state import TrainState

log = logging.getLogger(__name__)
ADAPTER_INFO = "ragtune_adapter.json"


class TrainSetupError(ValueError):
    """Training cannot start as configured; the message says what to change."""


@dataclass
class TrainResult:
    output_dir: Path
    report: dict
    reused: bool = False  # the adapter was already trained on the same dataset with the same settings


def output_dir(cfg: RagtuneConfig) -> Path:
    """Where the adapter is exported on the driver's node; with an ``s3://`` ``train.output_dir`` it
    is built in $RAGTUNE_HOME/adapters/<run_name> and then published there (``published_to``)."""
    if cfg.train.output_dir and not is_storage_uri(cfg.train.output_dir):
        return Path(cfg.train.output_dir).expanduser()
    return ragtune_home() / "adapters" / cfg.train.run_name


def published_to(cfg: RagtuneConfig) -> str | None:
    """The storage URI the adapter is published to, when ``train.output_dir`` names one."""
    out = cfg.train.output_dir
    return out.rstrip("/") if out and is_storage_uri(out) else None


def publish(adapter: Path, uri: str) -> None:
    """Upload an exported adapter directory to ``uri`` so that a registry reading the prefix never
    loads half of one: its adapter_config.json (what a registry looks for) goes first out and last in."""
    from pyarrow import fs

    filesystem, base = fs.FileSystem.from_uri(uri)
    marker = f"{base}/adapter_config.json"
    if filesystem.get_file_info(marker).type == fs.FileType.File:
        filesystem.delete_file(marker)
    local = fs.LocalFileSystem()
    for path in sorted((p for p in adapter.rglob("*") if p.is_file()), key=lambda p: (p.name == "adapter_config.json", p)):
        fs.copy_files(str(path), f"{base}/{path.relative_to(adapter).as_posix()}", source_filesystem=local,
                      destination_filesystem=filesystem)


def plan_steps(cfg: RagtuneConfig, train_rows: int, workers: int) -> tuple[int, int]:
    """(total optimizer steps, steps per epoch) for ``train_rows`` rows split evenly over the workers."""
    t = cfg.train
    per_step = t.micro_batch_size * t.gradient_accumulation_steps
    steps_per_epoch = (train_rows // workers) // per_step
    if steps_per_epoch == 0:
        raise TrainSetupError(
            f"{train_rows} training rows over {workers} workers do not fill one optimizer step of "
            f"{per_step} rows per worker (micro_batch_size × gradient_accumulation_steps); add data or lower them")
    total = steps_per_epoch * t.epochs
    return (min(total, t.max_steps) if t.max_steps else total), steps_per_epoch


def _check_gpu_features(cfg: RagtuneConfig, use_gpu: bool) -> None:
    if cfg.train.lora.quantize_4bit:
        import importlib.util

        if not use_gpu:
            raise TrainSetupError("train.lora.quantize_4bit (QLoRA) needs GPU workers: set train.use_gpu=true on a "
                                  "GPU cluster, or quantize_4bit=false")
        if importlib.util.find_spec("bitsandbytes") is None:
            raise TrainSetupError("train.lora.quantize_4bit needs bitsandbytes: pip install 'ragtune[qlora]'")
    if cfg.train.precision == "bf16" and not use_gpu:
        raise TrainSetupError("train.precision=bf16 runs on GPU workers; on CPU use precision=auto or fp32")


def _use_gpu(cfg: RagtuneConfig) -> bool:
    from ragtune.runtime import cluster_resources

    if cfg.train.use_gpu is not None:
        return cfg.train.use_gpu
    return cluster_resources().get("GPU", 0) >= cfg.train.num_workers


def cpus_per_worker(cfg: RagtuneConfig, use_gpu: bool) -> float:
    """The configured CPUs per worker, or: 1 next to a GPU; on CPU, what is left after one whole CPU
    for the Ray Data reader (its tasks each need one) shared by the workers, at most 1."""
    from ragtune.runtime import cluster_resources

    if cfg.train.cpus_per_worker is not None:
        return cfg.train.cpus_per_worker
    if use_gpu:
        return 1.0
    share = (cluster_resources().get("CPU", 1) - 1) / cfg.train.num_workers
    return max(0.1, min(1.0, round(share, 2)))


def exported_report(cfg: RagtuneConfig) -> dict | None:
    """The training report of this run's exported adapter, if there is one."""
    try:
        return json.loads((output_dir(cfg) / REPORT_FILE).read_text())
    except (OSError, ValueError):
        return None


def finished_adapter(cfg: RagtuneConfig, dataset_fingerprint: str) -> TrainResult | None:
    """The exported adapter of this run when it was trained on the same dataset with the same settings."""
    report = exported_report(cfg)
    same = report is not None and report.get("dataset", {}).get("fingerprint") == dataset_fingerprint \
        and report.get("config") == report_config(cfg)
    return TrainResult(output_dir(cfg), report, reused=True) if same else None


def run_train(cfg: RagtuneConfig) -> TrainResult:
    """Fine-tune a LoRA adapter; re-running the same run name resumes it, and a finished run with the
    same dataset and settings returns its adapter. With ``prepare.inputs`` set, the dataset is prepared
    first unless it is up to date.

    Raises:
        DataError: the prepared dataset is missing or empty.
        TrainSetupError, LoraTargetError, ModelError: the model or the settings cannot train, or the run
            name has checkpoints from other data or settings (the message says what changed).
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from ragtune.runtime import init_ray, read_parquet

    t = cfg.train
    data = ensure_prepared(cfg) if cfg.prepare.inputs else dataset_dir(cfg)
    stats = load_stats(data)
    if stats is None:
        raise DataError(f"no prepared dataset in {data}: run `ragtune prepare` (or set prepare.inputs) first")
    finished = finished_adapter(cfg, stats["fingerprint"])
    if finished:
        log.warning("adapter %s is already trained on this dataset with these settings; delete it (or change "
                    "train.run_name) to train again", finished.output_dir)
        return finished
    conflict = resume_conflict(cfg, stats["fingerprint"])
    if conflict:
        raise TrainSetupError(conflict)
    model = resolve(cfg.generator.model)
    if stats["model"] != model.name:
        raise DataError(f"{data} was prepared for {stats['model']}, not {model.name}: prepare it again for this model")
    load_chat_tokenizer(model)
    targets = target_modules(t.lora, model)
    total_steps, steps_per_epoch = plan_steps(cfg, stats["rows"]["train"], t.num_workers)

    init_ray()
    use_gpu = _use_gpu(cfg)
    _check_gpu_features(cfg, use_gpu)
    cpus = cpus_per_worker(cfg, use_gpu)
    datasets = {"train": read_parquet(data / "train")}
    has_validation = stats["rows"].get("validation", 0) >= t.num_workers
    if has_validation:
        datasets["validation"] = read_parquet(data / "validation")
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"config": cfg.model_dump(mode="json"), "targets": targets,
                           "total_steps": total_steps, "steps_per_epoch": steps_per_epoch,
                           "has_validation": has_validation, "torch_threads": max(1, round(cpus)), "run_id": f"{t.run_name}:{uuid.uuid4().hex[:8]}"},
        scaling_config=ScalingConfig(num_workers=t.num_workers, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": cpus, **({"GPU": 1} if use_gpu else {}),
                                                           **t.worker_resources},
                                     placement_strategy=t.placement_strategy),
        run_config=RunConfig(name=t.run_name, storage_path=storage_path(cfg),
                             checkpoint_config=CheckpointConfig(num_to_keep=t.num_to_keep),
                             failure_config=FailureConfig(max_failures=t.max_failures),
                             worker_runtime_env={"env_vars": env} if (env := worker_env(t)) else None),
        datasets=datasets,
        dataset_config=_shards_in_order(),
    )
    record_run(cfg, stats["fingerprint"])
    started = time.monotonic()
    result = _fit(trainer)
    wall = time.monotonic() - started
    if result.checkpoint is None:
        raise RuntimeError(f"training run {t.run_name} finished without a checkpoint: {result.error}")
    target = output_dir(cfg)
    with result.checkpoint.as_directory() as ckpt:
        ckpt = Path(ckpt)
        state = TrainState.load(ckpt)
        if state.step < total_steps:
            raise RuntimeError(f"training run {t.run_name} stopped at step {state.step} of {total_steps}: {result.error}")
        tmp = target.with_name(target.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(ckpt / ADAPTER_DIR, tmp)
        _record_base(tmp, model, cfg.generator.model)
        if (data / TRAINING_QUESTIONS).is_file():  # the leakage check of `ragtune compare` travels with the adapter
            shutil.copy2(data / TRAINING_QUESTIONS, tmp / TRAINING_QUESTIONS)
        check = _verify_on_a_worker(cfg, result.checkpoint, use_gpu, cpus)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    report = write_report(target, cfg, state, stats, wall_seconds=wall, total_steps=total_steps, use_gpu=use_gpu, cpus_per_worker=cpus,
                          export_check=check, checkpoint_path=result.checkpoint.path)
    if published_to(cfg):
        publish(target, published_to(cfg))
    return TrainResult(target, report)


def _shards_in_order():
    """Shards in a fixed order: Ray Data hands the blocks out in dataset order, each to the worker
    with the fewest rows so far (no locality, no buffering), so every attempt of a run feeds each
    worker the same rows in the same order, and a resume that skips the micro-batches an epoch has
    consumed skips exactly those (with several blocks and several workers too)."""
    from ray.train import DataConfig

    options = DataConfig.default_ingest_options()
    options.preserve_order = True
    return DataConfig(execution_options=options, enable_shard_locality=False)


def _verify_on_a_worker(cfg: RagtuneConfig, checkpoint, use_gpu: bool, cpus: float) -> dict:
    """``verify_export`` of the final checkpoint as a Ray task with one training worker's resources:
    it loads the whole base model, which the driver's node (a head pod) need not have room for."""
    import ray

    resources = {"num_cpus": cpus, "num_gpus": 1 if use_gpu else 0, "resources": cfg.train.worker_resources}
    bf16 = use_gpu and cfg.train.precision != "fp32"
    return ray.get(ray.remote(_verify_checkpoint).options(**resources).remote(cfg.generator.model, checkpoint, bf16))


def _verify_checkpoint(model_ref: str, checkpoint, bf16: bool) -> dict:
    with checkpoint.as_directory() as ckpt:
        return verify_export(resolve(model_ref), Path(ckpt) / ADAPTER_DIR, Path(ckpt) / PROBE_FILE, bf16=bf16)


def _fit(trainer):
    """``trainer.fit()`` in a helper thread, so that Ctrl-C stays a KeyboardInterrupt for the caller.

    Called from the main thread, Ray Train replaces the process's SIGINT handler with one that aborts
    the run and exits, and never restores it: a program that goes on after training (the quickstart)
    could then not be interrupted. On Ctrl-C here the run's controller is asked to abort (it stops the
    workers; the run's registered checkpoints stay, and the same run name resumes from the newest) and
    the helper thread is waited for, up to ``_ABORT_WAIT_S`` (a second Ctrl-C stops waiting): a thread
    left inside a Ray call when the caller then shuts Ray down crashes the process (SIGSEGV,
    ray-project/ray#31145). The wait is on an event, not ``Thread.join``: in Python 3.11 a join that
    Ctrl-C interrupts can leave the thread marked stopped while it still runs.
    """
    outcome: dict = {}
    done = threading.Event()

    def fit() -> None:
        try:
            outcome["result"] = trainer.fit()
        except BaseException as exc:  # handed to the caller's thread
            outcome["error"] = exc
        finally:
            done.set()

    thread = threading.Thread(target=fit, name="ray-train-fit", daemon=True)
    thread.start()
    try:
        while not done.wait(0.5):
            pass
    except KeyboardInterrupt:
        _abort_run(thread, done)
        raise
    if "error" in outcome:
        raise explained(outcome["error"])
    return outcome["result"]


# what Ray's memory monitor says when it killed workers (ray/_raylet memory monitor, Ray 2.60)
_OUT_OF_MEMORY = "killed due to the node running low on memory"


def explained(error: BaseException) -> BaseException:
    """A training failure as the user can act on it: workers killed by Ray's memory monitor become a
    TrainSetupError naming the settings that size a step's memory; anything else as it came."""
    if _OUT_OF_MEMORY not in str(error):
        return error
    found = re.search(r"was ([\d.]+GB) used / ([\d.]+GB) limit", str(error))
    used = f" ({found[1]} of {found[2]} in use)" if found else ""
    setup = TrainSetupError(
        f"training ran out of memory: Ray's memory monitor killed its workers{used}. A step's memory grows "
        "with train.micro_batch_size × prepare.max_length (and the workers per node): lower "
        "train.micro_batch_size and raise train.gradient_accumulation_steps to keep the batch, or lower "
        "prepare.max_length; the run's checkpoints stay, and the same train.run_name resumes from the newest")
    setup.__cause__ = error
    return setup


_ABORT_WAIT_S = 60


def _abort_run(thread: threading.Thread, done: threading.Event) -> None:
    """Ask the controller of the run that ``thread`` waits on to abort, and wait until it is ``done``."""
    controller = _controller_of(thread)
    if controller is None:
        return
    log.info("aborting the training run (its checkpoints stay)")
    controller.abort.remote()
    try:
        done.wait(_ABORT_WAIT_S)
    except KeyboardInterrupt:
        pass


def _controller_of(thread: threading.Thread):
    """The Ray Train controller handle that ``thread``'s ``trainer.fit()`` holds, or None before it has
    one (Ray Train keeps it only in a local variable of the call that starts and waits on it)."""
    import ray

    frame = sys._current_frames().get(thread.ident)
    while frame is not None:
        candidate = frame.f_locals.get("controller")
        if isinstance(candidate, ray.actor.ActorHandle):
            return candidate
        frame = frame.f_back
    return None


def _record_base(adapter: Path, model: ResolvedModel, ref: str) -> None:
    """Name the base model the way PEFT and vLLM look it up (the hub id), and keep ragtune's reference."""
    config_path = adapter / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = model.name
    config_path.write_text(json.dumps(config, indent=2))
    (adapter / ADAPTER_INFO).write_text(json.dumps({"base_model": ref, "base_model_name": model.name}, indent=2))


def load_adapted(model: ResolvedModel, adapter: Path):
    """The base model in float32 with the adapter applied (PEFT), in eval mode."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model.path, dtype=torch.float32)
    return PeftModel.from_pretrained(base, str(adapter)).eval()


def verify_export(model: ResolvedModel, adapter: Path, probe_file: Path, bf16: bool) -> dict:
    """Reload the exported adapter onto the base model and compare its logits with the trained engine's.

    Raises:
        RuntimeError: the reloaded model disagrees (an adapter that lost its weights, e.g. under ZeRO-3).
    """
    if not probe_file.exists():
        return {"checked": False, "reason": "no validation rows to probe"}
    import torch
    from safetensors.torch import load_file

    probe = load_file(str(probe_file))
    with torch.no_grad():
        logits = load_adapted(model, adapter)(input_ids=probe["input_ids"][None]).logits[0, : probe["logits"].shape[0]]
    diff = float((logits - probe["logits"]).abs().max())
    scale = float(probe["logits"].abs().max())
    tolerance = (0.05 if bf16 else 1e-3) * max(scale, 1.0)
    if not math.isfinite(diff) or diff > tolerance:
        raise RuntimeError(f"the exported adapter in {adapter} does not reproduce the trained model (max logit "
                           f"difference {diff:.4g} > {tolerance:.4g}); the checkpoint is kept in storage_path")
    return {"checked": True, "max_abs_logit_diff": diff, "tolerance": tolerance}


def merge_adapter(adapter: Path, target: Path) -> Path:
    """Write base + adapter as one model (safetensors) for engines that do not load adapters."""
    info_path = adapter / ADAPTER_INFO
    if not info_path.exists():
        raise TrainSetupError(f"{adapter} is not a ragtune adapter directory (no {ADAPTER_INFO})")
    info = json.loads(info_path.read_text())
    model = resolve(info["base_model"])
    merged = load_adapted(model, adapter).merge_and_unload()
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    merged.save_pretrained(tmp, safe_serialization=True)
    load_chat_tokenizer(model).save_pretrained(tmp)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target
