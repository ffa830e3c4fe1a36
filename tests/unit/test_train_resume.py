"""The resume guard on a run directory as Ray Train leaves it (a registered checkpoint's snapshot)."""

from ragtune.config import load_config
from ragtune.train.resume import RECORD, SNAPSHOT, record_run, resume_conflict


def _run(tmp_path, *overrides):
    return load_config(overrides=[f"train.storage_path={tmp_path}", "train.run_name=r", *overrides])


def test_nothing_to_resume_is_no_conflict_and_a_new_record_replaces_an_old_one(tmp_path):
    record_run(_run(tmp_path), "data-a")
    assert resume_conflict(_run(tmp_path, "train.lora.r=4"), "data-b") is None  # no registered checkpoint
    record_run(_run(tmp_path, "train.lora.r=4"), "data-b")
    (tmp_path / "r" / SNAPSHOT).write_text("{}")
    assert resume_conflict(_run(tmp_path, "train.lora.r=4"), "data-b") is None


def test_what_changed_is_named_and_how_a_run_is_executed_may_change(tmp_path):
    record_run(_run(tmp_path), "data-a")
    (tmp_path / "r" / SNAPSHOT).write_text("{}")
    # placement, checkpointing, validation cadence and restarts do not change what is trained
    assert resume_conflict(_run(tmp_path, "train.checkpoint_every=7", "train.eval_every=3", "train.max_failures=5",
                                "train.placement_strategy=SPREAD", "train.cpus_per_worker=1", "train.num_to_keep=4",
                                f"train.output_dir={tmp_path / 'elsewhere'}"), "data-a") is None
    message = resume_conflict(_run(tmp_path, "train.learning_rate=1e-3", "train.num_workers=4"), "data-b")
    assert message.startswith(f"train.run_name 'r' has checkpoints in {tmp_path}/r from another training (")
    for change in ("the prepared dataset's fingerprint: 'data-a' → 'data-b'", "train.learning_rate: 0.0002 → 0.001",
                   "train.num_workers: 2 → 4"):
        assert change in message
    assert "generator.model" not in message and "Set a new train.run_name" in message


def test_checkpoints_without_a_record_are_resumed(tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / SNAPSHOT).write_text("{}")  # a run started before runs carried a record
    assert not (tmp_path / "r" / RECORD).exists()
    assert resume_conflict(_run(tmp_path), "data-a") is None


def test_the_record_lives_beside_the_checkpoints_in_s3(s3_bucket):
    from pyarrow import fs

    storage = f"s3://{s3_bucket}/train-runs"
    cfg = load_config(overrides=[f"train.storage_path={storage}", "train.run_name=r"])
    record_run(cfg, "data-a")
    filesystem, base = fs.FileSystem.from_uri(f"{storage}/r")
    assert filesystem.get_file_info(f"{base}/{RECORD}").type == fs.FileType.File
    with filesystem.open_output_stream(f"{base}/{SNAPSHOT}") as stream:
        stream.write(b"{}")
    assert resume_conflict(cfg, "data-a") is None
    assert "the prepared dataset's fingerprint: 'data-a' → 'data-b'" in resume_conflict(cfg, "data-b")
