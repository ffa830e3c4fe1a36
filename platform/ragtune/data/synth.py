"""``ragtune synth``: question/answer pairs written from the chunks of a collection (or of
``synth.sources``, parsed and chunked as ingest does, with no collection), as a Ray Data
batch job through the generation backend (``generator.*``: the bundled model on CPU, vLLM on GPUs).

Per chunk, ``synth.questions_per_chunk`` answers are picked (names, numbers, dates) and the
generator writes the question each answers; the pairs that pass every check (``core.synth``) are
split by document and by question into ``train.jsonl`` (what ``prepare`` reads), ``eval_seen.jsonl``
(new questions on documents that trained) and ``eval_unseen.jsonl`` (documents that did not train),
with ``eval.jsonl`` holding both for ``compare``; ``stats.json`` counts what was generated, kept and
dropped by each check. Rows carry their chunk as ``context``, so ``prepare.with_context`` trains on
the chunk beside retrieved distractors.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ragtune.config import ConfigError, RagtuneConfig, ragtune_home
from ragtune.core.documents import sha256_hex
from ragtune.core.synth import (
    DROP_REASONS, SPLITS, answer_candidates, clean_question, in_chunk, near_duplicates, question_problem,
    split_of, token_recall,
)
from ragtune.logfile import work_done

log = logging.getLogger(__name__)

STATS_FILE = "stats.json"
GROUPS = {"eval_seen": "seen", "eval_unseen": "unseen"}  # the evaluation splits' `group` in their rows


@dataclass
class SynthResult:
    output_dir: Path
    stats: dict


def output_dir(cfg: RagtuneConfig) -> Path:
    return Path(cfg.synth.output_dir or ragtune_home() / "synth" / cfg.milvus.collection).expanduser()


class _QuestionWriter:
    """A Ray Data actor: the generator writes each row's question, and (with a round trip) answers
    it from the row's chunk; the row says why it is dropped, or nothing."""

    def __init__(self, cfg_json: str, answers_total: int):
        import asyncio

        from ragtune.generation import make_backend

        self.cfg = RagtuneConfig.model_validate_json(cfg_json)
        self.answers_total = answers_total
        self.loop = asyncio.new_event_loop()  # the backend's calls are coroutines; this actor awaits them in turn
        self.backend = make_backend(self.cfg.generator, slots=1)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from ragtune.core.prompts import qa_messages, question_messages

        s = self.cfg.synth
        chunks, answers = [str(t) for t in batch["context"]], [str(a) for a in batch["answer"]]
        replies = self._generate([question_messages(c, a) for c, a in zip(chunks, answers)], s.max_question_tokens)
        questions = [clean_question(r) or "" for r in replies]
        dropped = ["no_question" if not q else question_problem(q, a) or ("" if in_chunk(a, c) else "not_in_chunk")
                   for q, a, c in zip(questions, answers, chunks)]
        roundtrip = [""] * len(questions)
        if s.roundtrip_recall > 0:
            asked = [i for i, reason in enumerate(dropped) if not reason]
            said = self._generate([qa_messages(questions[i], [chunks[i]], self.cfg.prepare.system_prompt) for i in asked],
                                  self.cfg.compare.max_tokens)
            for i, reply in zip(asked, said):
                roundtrip[i] = reply
                if token_recall(answers[i], reply) < s.roundtrip_recall:
                    dropped[i] = "roundtrip"
        work_done("writing questions for", len(chunks), self.answers_total, "answers")
        return {**batch, "reply": np.asarray(replies, dtype=object), "question": np.asarray(questions, dtype=object),
                "roundtrip": np.asarray(roundtrip, dtype=object), "dropped": np.asarray(dropped, dtype=object)}

    def _generate(self, conversations: list, max_tokens: int) -> list[str]:
        from ragtune.generation import SamplingParams

        if not conversations:
            return []
        done = self.loop.run_until_complete(self.backend.generate(conversations, SamplingParams(max_tokens=max_tokens)))
        return [c.text.strip() for c in done]


def read_chunks(cfg: RagtuneConfig) -> tuple[list[dict[str, str]], dict[str, int] | None]:
    """The chunks to write from, ordered by document and position, ``synth.max_chunks`` of them drawn
    with ``synth.seed``: those of ``synth.sources`` when set (with the files read and rejected), else
    the collection's as searches show them (each document's newest complete version).

    Raises:
        ConfigError: the collection does not exist or holds no chunk; no source gave a document.
        SourceError: a source does not exist.
    """
    files = None
    if cfg.synth.sources:
        chunks, files = _source_chunks(cfg)
    else:
        chunks = _collection_chunks(cfg)
    chunks.sort(key=lambda c: (c["doc_id"], c["chunk_index"]))
    n = cfg.synth.max_chunks
    if n is not None and n < len(chunks):
        keep = set(random.Random(cfg.synth.seed).sample(range(len(chunks)), n))
        chunks = [c for i, c in enumerate(chunks) if i in keep]
    return chunks, files


def _collection_chunks(cfg: RagtuneConfig) -> list[dict[str, str]]:
    from ragtune.store import VectorStore

    store = VectorStore(cfg.milvus)
    try:
        if not store.exists():
            raise ConfigError(f"collection {cfg.milvus.collection!r} does not exist: `ragtune ingest` the documents "
                              "first, set milvus.collection, or give the documents as synth.sources")
        chunks = store.newest_chunks()
    finally:
        store.close()
    if not chunks:
        raise ConfigError(f"collection {cfg.milvus.collection!r} holds no chunk: `ragtune ingest` the documents first")
    return chunks


def _source_chunks(cfg: RagtuneConfig) -> tuple[list[dict[str, str]], dict[str, int]]:
    """The chunks of ``synth.sources`` as ingest would write them (the same parsers, checks and
    chunking; no collection, no embedding), parsed here on the driver, and the files read and rejected."""
    from ragtune.embedding import encoder_info
    from ragtune.ingest.pipeline import index_files
    from ragtune.ingest.sources import expand_sources

    entries = expand_sources(cfg.synth.sources)
    rows = index_files([{"uri": e.uri, "rel": e.rel, "size": e.size} for e in entries], cfg,
                       encoder_info(cfg.embedding.model).max_tokens, lambda ids: {})
    rejected = [r for r in rows if r["kind"] == "reject"]
    if rejected:
        reasons = Counter(r["reason"] for r in rejected)
        log.warning("%d of the sources rejected (%s), as ingest would: e.g. %s: %s", len(rejected), dict(reasons),
                    rejected[0]["source"] or rejected[0]["doc_id"], rejected[0]["detail"])
    chunks = [{"doc_id": r["doc_id"], "chunk_index": r["chunk_index"], "text": r["text"]}
              for r in rows if r["kind"] == "chunk"]
    if not chunks:
        raise ConfigError(f"no document in synth.sources {cfg.synth.sources}: {len(entries)} file(s), "
                          f"{len(rejected)} rejected")
    return chunks, {"files": len(entries), "rejected": len(rejected)}


def run_synth(cfg: RagtuneConfig, progress=None) -> SynthResult:
    """Write question/answer pairs from the chunks of ``milvus.collection`` or ``synth.sources`` (see
    the module's docstring).

    Args:
        progress: called with a line of text as the job goes (None: quiet).

    Raises:
        ConfigError: no collection, or nothing to write questions for.
        SourceError: a source does not exist.
    """
    import ray.data

    from ragtune.runtime import init_ray

    s, say = cfg.synth, progress or (lambda line: None)
    started = time.perf_counter()
    chunks, files = read_chunks(cfg)
    rows, short, no_answer = [], 0, 0
    for c in chunks:
        if len(c["text"].split()) < s.min_chunk_words:
            short += 1
            continue
        picked = answer_candidates(c["text"], s.questions_per_chunk)
        no_answer += not picked
        rows += [{"doc_id": c["doc_id"], "chunk_index": c["chunk_index"], "context": c["text"], "answer": a}
                 for a in picked]
    if not rows:
        where = f"synth.sources {s.sources}" if s.sources else f"collection {cfg.milvus.collection!r}"
        raise ConfigError(f"no chunk of {where} has an answer to ask about ({len(chunks)} "
                          f"read, {short} shorter than synth.min_chunk_words={s.min_chunk_words}, {no_answer} without "
                          "a name, number or date)")
    say(f"{len(rows)} answers picked from {len(chunks) - short - no_answer} of {len(chunks)} chunks; "
        f"the {cfg.generator.backend} backend writes their questions")
    init_ray()
    written = ray.data.from_items(rows).map_batches(
        _QuestionWriter, fn_constructor_args=(cfg.model_dump_json(), len(rows)), batch_size=s.batch_size, concurrency=s.actors,
        num_cpus=s.cpus_per_actor, num_gpus=s.gpus_per_actor or None)
    results = sorted(written.iter_rows(), key=lambda r: (r["doc_id"], r["chunk_index"], r["context"].find(r["answer"])))
    stats = _keep(cfg, results)
    stats["chunks"] = {"read": len(chunks), "too_short": short, "no_answer": no_answer,
                       "used": len(chunks) - short - no_answer}
    stats["sources"] = files  # synth.sources: files read and rejected; None: the collection's chunks
    stats["seconds"] = round(time.perf_counter() - started, 1)
    out = output_dir(cfg)
    _write(out, cfg, results, stats)
    return SynthResult(out, stats)


def _keep(cfg: RagtuneConfig, results: list[dict]) -> dict:
    """Drop near-duplicate questions, assign each kept pair its split (in place), and count."""
    s = cfg.synth
    passing = [r for r in results if not r["dropped"]]
    for i in near_duplicates([r["question"] for r in passing], s.duplicate_similarity):
        passing[i]["dropped"] = "duplicate"
    for r in results:
        r["id"] = sha256_hex(f"{r['doc_id']}\x00{r['chunk_index']}\x00{r['answer']}\x00{r['question']}")[:16]
        r["split"] = "" if r["dropped"] else split_of(r["doc_id"], r["id"], s.unseen_document_fraction,
                                                       s.heldout_question_fraction, s.seed)
    kept = [r for r in results if not r["dropped"]]
    reasons = Counter(r["dropped"] for r in results if r["dropped"])
    return {
        "generated": len(results), "kept": len(kept), "dropped": {reason: reasons.get(reason, 0) for reason in DROP_REASONS},
        # every answer is picked from its chunk; measured all the same, after SQuAD's normalisation
        "kept_answers_in_chunk": round(sum(in_chunk(r["answer"], r["context"]) for r in kept) / len(kept), 4) if kept else None,
        "questions": {split: sum(r["split"] == split for r in kept) for split in SPLITS},
        "documents": {split: len({r["doc_id"] for r in kept if r["split"] == split}) for split in SPLITS},
        "generator": {"model": cfg.generator.model, "backend": cfg.generator.backend},
        "config": cfg.synth.model_dump(mode="json"),
    }


def _write(out: Path, cfg: RagtuneConfig, results: list[dict], stats: dict) -> None:
    """The splits as QA jsonl, every generated pair with its verdict, and the stats; written beside
    and renamed into place, so that a reader never sees half a set."""
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, list[str]] = {split: [] for split in SPLITS}
    for r in results:
        if r["split"]:  # the evaluation rows say which part of the set they are (GROUPS), for the report
            group = {"group": GROUPS[r["split"]]} if r["split"] in GROUPS else {}
            files[r["split"]].append(json.dumps({"id": r["id"], "question": r["question"], "answer": r["answer"],
                                                 "doc_id": r["doc_id"], "context": r["context"], **group},
                                                ensure_ascii=False))
    files["eval"] = files["eval_seen"] + files["eval_unseen"]
    files["generated"] = [json.dumps({k: r[k] for k in ("id", "doc_id", "chunk_index", "answer", "reply", "question",
                                                          "roundtrip", "dropped", "split")}, ensure_ascii=False)
                          for r in results]
    for name, lines in files.items():
        _replace(out / f"{name}.jsonl", "".join(f"{line}\n" for line in lines))
    _replace(out / STATS_FILE, json.dumps(stats, indent=2))


def _replace(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
