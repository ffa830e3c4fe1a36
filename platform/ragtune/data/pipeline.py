"""``ragtune prepare``: inputs → normalised rows → dedup → eval holdout and leakage guard →
split → (retrieved context) → chat template + answer-only labels → parquet + stats.json
(+ eval.jsonl with a holdout, and training_questions.txt)."""

from __future__ import annotations

import json
import logging
import shutil
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ragtune.config import RagtuneConfig, ragtune_home
from ragtune.core.documents import sha256_hex
from ragtune.core.metrics import normalize_answer
from ragtune.data.context import ContextChatRenderer
from ragtune.data.formats import DataError, detect_format, expand_inputs, normalize, read_rows, squad_rows
from ragtune.data.render import ChatRenderer, load_chat_tokenizer, pack
from ragtune.models import resolve
from ragtune.runtime import read_binary_file, read_text, write_parquet

log = logging.getLogger(__name__)
KEPT = ("ok", "truncated")
# The normalised questions of the training and validation rows, one per line: `ragtune train` copies
# it into the adapter, and `ragtune compare` flags evaluation questions found in it.
TRAINING_QUESTIONS = "training_questions.txt"


@dataclass
class PrepareStats:
    """What ``prepare`` read, removed and wrote (also written as stats.json)."""

    output_dir: str
    fingerprint: str
    model: str
    input_rows: int = 0
    duplicates_removed: int = 0
    eval_holdout: int = 0
    leakage_removed: int = 0
    sampled_out: int = 0
    truncated: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)
    tokens: dict[str, int] = field(default_factory=dict)
    label_tokens: dict[str, int] = field(default_factory=dict)
    packed: bool = False
    with_context: bool = False
    seconds: float = 0.0


def output_dir(cfg: RagtuneConfig) -> Path:
    return Path(cfg.prepare.output_dir or ragtune_home() / "datasets" / cfg.train.run_name).expanduser()


def fingerprint(cfg: RagtuneConfig) -> str:
    """Identity of a prepared dataset: the prepare settings, the model and the input files' sizes and times."""
    files = [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in expand_inputs(cfg.prepare.inputs)]
    retrieval = [cfg.milvus.collection, cfg.embedding.model, cfg.search.model_dump()] if cfg.prepare.with_context else []
    settings = cfg.prepare.model_dump(exclude={"output_dir", "concurrency"})
    return sha256_hex(json.dumps([settings, cfg.generator.model, files, retrieval], sort_keys=True, default=str))[:16]


def load_stats(directory: Path) -> dict | None:
    path = directory / "stats.json"
    return json.loads(path.read_text()) if path.exists() else None


def ensure_prepared(cfg: RagtuneConfig) -> Path:
    """Prepare ``cfg.prepare`` unless its output already holds the same fingerprint; returns the directory."""
    target = output_dir(cfg)
    stats = load_stats(target)
    if stats and stats.get("fingerprint") == fingerprint(cfg):
        log.info("prepared dataset %s is up to date", target)
        return target
    run_prepare(cfg)
    return target


def _split_key(seed: int, salt: str, row_id: str) -> float:
    return int(sha256_hex(f"{seed}:{salt}:{row_id}")[:13], 16) / float(16**13)


def _read(files: list[Path], formats: list[str]):
    parts = []
    for path, fmt in zip(files, formats):
        if fmt == "squad":
            ds = read_binary_file(path).flat_map(
                lambda r, where=str(path): list(squad_rows(json.loads(r["bytes"]), where)))
        else:
            ds = read_text(path).map(
                lambda r, fmt=fmt, where=str(path): normalize(json.loads(r["text"]), fmt, f"{where}, line '{r['text'][:60]}'"))
        parts.append(ds)
    return parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]


def _with_keys(batch: dict[str, np.ndarray], seed: int) -> dict[str, np.ndarray]:
    ids = [str(i) for i in batch["id"]]
    return {
        **batch,
        # tells apart copies of one row (a row's id derives from its content unless the input names it)
        "copy": np.asarray([uuid.uuid4().hex for _ in ids], dtype=object),
        "qkey": np.asarray([normalize_answer(str(q)) for q in batch["question"]], dtype=object),
        "row_hash": np.asarray([sha256_hex(json.dumps([str(batch[c][i]) for c in ("question", "answer", "context", "chat")]))
                                for i in range(len(ids))], dtype=object),
        "order_key": np.asarray([_split_key(seed, "order", i) for i in ids]),
        "val_key": np.asarray([_split_key(seed, "validation", i) for i in ids]),
    }


def run_prepare(cfg: RagtuneConfig) -> PrepareStats:
    """Prepare the fine-tuning dataset described by ``cfg.prepare``.

    Raises:
        DataError: unreadable input, a missing column, a model without a chat template, or no rows left.
    """
    from ray.data import ActorPoolStrategy

    from ragtune.runtime import init_ray

    started = time.monotonic()
    p = cfg.prepare
    files = expand_inputs(p.inputs)
    formats = [detect_format(f, p.format) for f in files]
    model = resolve(cfg.generator.model)
    load_chat_tokenizer(model)  # a missing chat template fails here, before any Ray work
    excluded = {normalize_answer(r["question"]) for path in expand_inputs(p.exclude_questions) for r in read_rows(path)} \
        if p.exclude_questions else set()
    stats = PrepareStats(output_dir=str(output_dir(cfg)), fingerprint=fingerprint(cfg), model=model.name,
                         packed=p.packing, with_context=p.with_context)

    init_ray()
    rows = _read(files, formats).map_batches(_with_keys, fn_kwargs={"seed": p.seed}, batch_format="numpy").materialize()
    stats.input_rows = rows.count()
    if stats.input_rows == 0:
        raise DataError(f"the inputs {', '.join(map(str, files))} hold no rows")
    # The driver decides every row's fate from its keys alone (a few short columns per row): the first
    # copy in the fixed order of each distinct row is kept, then the holdout, leakage and splits.
    keys = rows.select_columns(["copy", "id", "qkey", "row_hash", "order_key", "val_key"]).to_pandas() \
        .sort_values(["order_key", "copy"]).drop_duplicates("row_hash")
    stats.duplicates_removed = stats.input_rows - len(keys)
    eval_ids: set[str] = set()
    if p.eval_holdout:
        held = keys.drop_duplicates("qkey").head(p.eval_holdout)
        eval_ids = set(held["id"])
        excluded |= set(held["qkey"])
    rest = keys[~keys["id"].isin(eval_ids)]
    leaked = rest["qkey"].isin(excluded)
    stats.eval_holdout, stats.leakage_removed = len(eval_ids), int(leaked.sum())
    rest = rest[~leaked]
    if p.max_examples:
        stats.sampled_out = max(0, len(rest) - p.max_examples)
        rest = rest.head(p.max_examples)
    is_val = rest["val_key"] < p.validation_fraction
    keep_train = rest[~is_val]["copy"]
    split_of = {**{c: "validation" for c in rest[is_val]["copy"]}, **{c: "train" for c in keep_train},
                **{c: "eval" for c in keys[keys["id"].isin(eval_ids)]["copy"]}}
    if keep_train.empty:
        raise DataError(f"no training rows are left from {stats.input_rows} input rows (duplicates "
                        f"{stats.duplicates_removed}, eval holdout {stats.eval_holdout}, leakage {stats.leakage_removed}); "
                        "add data or lower prepare.eval_holdout / prepare.validation_fraction")
    rows = rows.map_batches(_assign_split, fn_kwargs={"split_of": split_of}, batch_format="numpy") \
        .filter(lambda r: r["split"] != "")
    target = output_dir(cfg)
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if eval_ids:
        _write_eval(rows.filter(lambda r: r["split"] == "eval"), tmp / "eval.jsonl")
    (tmp / TRAINING_QUESTIONS).write_text("".join(f"{q}\n" for q in sorted(set(rest["qkey"]))), encoding="utf-8")
    render_args = (cfg.generator.model, p.system_prompt, p.max_length, p.overflow)
    renderer, args, batch_size = ((ContextChatRenderer, (cfg, *render_args), 32) if p.with_context
                                  else (ChatRenderer, render_args, 64))
    rendered = rows.filter(lambda r: r["split"] != "eval").map_batches(
        renderer, fn_constructor_args=args, batch_size=batch_size, batch_format="numpy",
        compute=ActorPoolStrategy(min_size=1, max_size=p.concurrency)).materialize()

    summary = rendered.select_columns(["split", "status", "n_tokens", "n_label_tokens"]).to_pandas()
    statuses = Counter(summary["status"])
    stats.truncated = statuses.get("truncated", 0)
    stats.dropped = {s: n for s, n in statuses.items() if s not in KEPT}
    kept = summary[summary["status"].isin(KEPT)]
    for split in ("train", "validation"):
        part = kept[kept["split"] == split]
        stats.tokens[split], stats.label_tokens[split] = int(part["n_tokens"].sum()), int(part["n_label_tokens"].sum())
        # each split is one block, and one file, in a fixed shuffled order (sorted within the block:
        # no sort shuffle); each computed once for its count and its file
        ds = rendered.filter(lambda r, s=split: r["split"] == s and r["status"] in KEPT) \
            .select_columns(["order_key", "input_ids", "labels"]).repartition(1) \
            .map_batches(_in_order, batch_size=None, batch_format="numpy")
        if p.packing:
            ds = ds.map_batches(pack, fn_kwargs={"max_length": p.max_length}, batch_size=1024, batch_format="numpy")
        ds = ds.materialize()
        stats.rows[split] = ds.count()
        if stats.rows[split]:
            write_parquet(ds, tmp / split)
    if not stats.rows.get("train"):
        raise DataError(f"every training row was dropped ({stats.dropped}); raise prepare.max_length or "
                        "set prepare.overflow=truncate")
    stats.seconds = round(time.monotonic() - started, 2)
    (tmp / "stats.json").write_text(json.dumps(asdict(stats), indent=2))
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return stats


def _in_order(block: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    order = np.argsort(block["order_key"], kind="stable")
    return {"input_ids": block["input_ids"][order], "labels": block["labels"][order]}


def _assign_split(batch: dict[str, np.ndarray], split_of) -> dict[str, np.ndarray]:
    return {**batch, "split": np.asarray([split_of.get(c, "") for c in batch["copy"]], dtype=object)}


def _write_eval(ds, path: Path) -> None:
    columns = ["id", "question", "answer", "answers", "context", "doc_id"]
    with open(path, "w", encoding="utf-8") as fh:
        for row in sorted(ds.select_columns(columns).take_all(), key=lambda r: r["id"]):
            fh.write(json.dumps({**row, "answers": json.loads(row["answers"])}, ensure_ascii=False) + "\n")

