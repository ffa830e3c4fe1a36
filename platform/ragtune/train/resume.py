"""The resume guard. A run records in its storage what its checkpoints are trained on: the prepared
dataset's fingerprint, the base model and the settings that shape the training. The same
``train.run_name`` asked to train other data or with other settings is refused, with what changed,
instead of resuming checkpoints of another training (which exported the old adapter under the new
dataset's name, or failed deep inside DeepSpeed on a changed LoRA rank)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from ragtune.config import RagtuneConfig, ragtune_home
from ragtune.runtime import is_storage_uri

log = logging.getLogger(__name__)
RECORD = "ragtune_run.json"
SNAPSHOT = "checkpoint_manager_snapshot.json"  # Ray Train writes it once a checkpoint is registered
# how a run is executed, placed and kept: free to change between a run's attempts
OPERATIONAL = frozenset({"run_name", "storage_path", "output_dir", "use_gpu", "cpus_per_worker", "worker_resources",
                         "placement_strategy", "eval_every", "checkpoint_every", "num_to_keep", "max_failures",
                         "fail_at_step"})
_NAMES = {"dataset_fingerprint": "the prepared dataset's fingerprint"}  # record keys as an error names them


def storage_path(cfg: RagtuneConfig) -> str:
    return cfg.train.storage_path or str(ragtune_home() / "train_runs")


def run_location(cfg: RagtuneConfig) -> str:
    """The run's directory in its storage (Ray Train's ``storage_path/run_name``), as a path or URI."""
    return f"{storage_path(cfg).rstrip('/')}/{cfg.train.run_name}"


def trained_on(cfg: RagtuneConfig, dataset_fingerprint: str) -> dict:
    return {"dataset_fingerprint": dataset_fingerprint, "generator.model": cfg.generator.model,
            "train": cfg.train.model_dump(mode="json", exclude=set(OPERATIONAL))}


def _filesystem(location: str):
    from pyarrow import fs

    if is_storage_uri(location):
        return fs.FileSystem.from_uri(location)
    return fs.LocalFileSystem(), str(Path(location).expanduser().absolute())


def _flat(value, prefix: str = "") -> dict:
    if isinstance(value, dict):
        return {k: v for key, sub in value.items() for k, v in _flat(sub, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): value}


def resume_conflict(cfg: RagtuneConfig, dataset_fingerprint: str) -> str | None:
    """Why the run's registered checkpoints must not be resumed with ``cfg`` and this dataset, or
    None: no checkpoint to resume, or one trained on the same data with the same settings."""
    from pyarrow import fs

    location = run_location(cfg)
    filesystem, run_dir = _filesystem(location)
    if filesystem.get_file_info(f"{run_dir}/{SNAPSHOT}").type != fs.FileType.File:
        return None
    try:
        with filesystem.open_input_stream(f"{run_dir}/{RECORD}") as stream:
            recorded = json.loads(stream.read())
    except (FileNotFoundError, ValueError):
        log.warning("the checkpoints in %s carry no record of what they were trained on (%s); resuming them",
                    location, RECORD)
        return None
    was, now = _flat(recorded), _flat(trained_on(cfg, dataset_fingerprint))
    changes = [f"{_NAMES.get(key, key)}: {was.get(key)!r} → {now.get(key)!r}"
               for key in sorted(set(was) | set(now)) if was.get(key) != now.get(key)]
    if not changes:
        return None
    return (f"train.run_name {cfg.train.run_name!r} has checkpoints in {location} from another training "
            f"({'; '.join(changes)}); resuming them would mix the two. Set a new train.run_name to train "
            f"this one, or delete {location} to start the run over")


def record_run(cfg: RagtuneConfig, dataset_fingerprint: str) -> None:
    """Write what the run trains on into its storage, before its first checkpoint."""
    filesystem, run_dir = _filesystem(run_location(cfg))
    filesystem.create_dir(run_dir, recursive=True)
    with filesystem.open_output_stream(f"{run_dir}/{RECORD}") as stream:
        stream.write(json.dumps(trained_on(cfg, dataset_fingerprint), indent=2).encode())
