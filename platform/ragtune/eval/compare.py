"""``ragtune compare``: the same questions through base, rag, ft and hybrid — as a Ray Data batch
job (one pool of generator actors, ``map_batches``, each answering every arm on one copy of the model) or against a running `ragtune serve`
(``compare.endpoint``) — scored and written as a report."""

from __future__ import annotations

import json
import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ragtune.config import ConfigError, RagtuneConfig
from ragtune.core.modes import RETRIEVAL_MODES
from ragtune.eval.answers import (
    Answer, FactUpdate, Question, adapter_for, check_arms, load_fact_updates, load_questions,
    which_fact,
)
from ragtune.eval.report import share
from ragtune.logfile import work_done
from ragtune.runtime import is_storage_uri

if TYPE_CHECKING:
    from ragtune.ingest import IngestSummary
    from ragtune.serve.client import ServeClient


class _Answerer:
    """A Ray Data actor answering batches of questions for several arms on one copy of the base
    model — the arms' adapters loaded beside it and picked per arm, so each pass loads the model once:
    retrieval (rag, hybrid) with the collection's encoder, the same prompt builder as training and
    serving, greedy generation through the configured backend (``generator.backend``). Each arm's
    answers come back in a column of their own."""

    def __init__(self, cfg_json: str, arms: list[str], questions_total: int):
        import asyncio

        from ragtune.config import RagtuneConfig
        from ragtune.generation import fetch_adapter, make_backend

        self.cfg = RagtuneConfig.model_validate_json(cfg_json)
        self.arms = arms
        self.questions_total = questions_total
        c = self.cfg.compare
        self.loop = asyncio.new_event_loop()  # the backend's calls are coroutines; this actor awaits them in turn
        self.backend = make_backend(self.cfg.generator, slots=2)
        slots: dict[str, str] = {}  # adapter directory -> its slot (ft and hybrid may share one)
        self.slot_of: dict[str, str | None] = {}
        for arm in arms:
            path = adapter_for(arm, c.adapter, c.hybrid_adapter)
            if path is not None and path not in slots:
                slots[path] = f"adapter{len(slots)}"
                self.loop.run_until_complete(self.backend.load_adapter(slots[path], fetch_adapter(path)))
            self.slot_of[arm] = slots.get(path)
        self._open_retrieval()

    def _open_retrieval(self) -> None:
        """The collection's encoder and store, when an arm retrieves."""
        self.encoder = self.store = None
        if any(arm in RETRIEVAL_MODES for arm in self.arms):
            from ragtune.embedding import load_encoder
            from ragtune.store import VectorStore

            self.encoder, self.store = load_encoder(self.cfg.embedding), VectorStore(self.cfg.milvus)
            self.store.check_model(self.encoder.name, self.encoder.dim)

    def prompts(self, questions: list[str], arm: str) -> tuple[list[list[dict[str, str]]], list[list[Any]]]:
        """Each question's conversation for ``arm``, and the passages retrieved for it."""
        from ragtune.core.prompts import qa_messages

        hits: list[list[Any]] = [[] for _ in questions]
        if arm in RETRIEVAL_MODES:
            hits = self.store.search(self.encoder.encode(questions), questions, self.cfg.search, k=self.cfg.compare.top_k)
        return [qa_messages(q, [h.text for h in found] if arm in RETRIEVAL_MODES else None, self.cfg.prepare.system_prompt)
                for q, found in zip(questions, hits)], hits

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from ragtune.generation import SamplingParams

        questions = [str(q) for q in batch["question"]]
        greedy = SamplingParams(max_tokens=self.cfg.compare.max_tokens)
        judged = [i for i, flag in enumerate(batch["judge"]) if flag]
        golds = [json.loads(g) for g in batch["gold"]]
        out = {}
        for arm in self.arms:
            started = time.perf_counter()
            conversations, hits = self.prompts(questions, arm)
            replies = self.loop.run_until_complete(self.backend.generate(conversations, greedy, self.slot_of[arm]))
            share = (time.perf_counter() - started) / len(questions)
            answers = [Answer(question_id=str(qid), text=r.text.strip(), retrieved=[h.doc_id for h in found],
                              prompt_tokens=r.prompt_tokens, completion_tokens=r.completion_tokens, seconds=share)
                       for qid, r, found in zip(batch["id"], replies, hits)]
            if judged:
                self._judge(arm, [answers[i] for i in judged], [questions[i] for i in judged],
                            [golds[i][0] for i in judged], [hits[i] for i in judged])
            out[arm] = np.asarray([json.dumps(asdict(a)) for a in answers], dtype=object)
        known = json.dumps({"batch": uuid.uuid4().hex, "pairs": self._known(questions, golds, judged)})
        out["judge_known"] = np.asarray([known] * len(questions), dtype=object)  # each row carries its batch's
        work_done("answering", len(questions), self.questions_total, "questions")
        return out

    def _verdicts(self, conversations: list[list[dict[str, str]]]) -> list[float]:
        """The judge's verdicts (the base model, greedy, a word or two each)."""
        from ragtune.core.prompts import judge_verdict
        from ragtune.generation import SamplingParams

        replies = self.loop.run_until_complete(self.backend.generate(conversations, SamplingParams(max_tokens=3)))
        return [judge_verdict(r.text) for r in replies]

    def _judge(self, arm: str, answers: list[Answer], questions: list[str], references: list[str],
               hits: list[list[Any]]) -> None:
        from ragtune.core.prompts import judge_correct_messages, judge_faithful_messages

        correct = self._verdicts([judge_correct_messages(q, ref, a.text) for q, ref, a in zip(questions, references, answers)])
        faithful = (self._verdicts([judge_faithful_messages([h.text for h in found], a.text)
                                    for found, a in zip(hits, answers)]) if arm in RETRIEVAL_MODES else None)
        for i, a in enumerate(answers):
            a.judged = {"correct": correct[i], **({"faithful": faithful[i]} if faithful is not None else {})}

    def _known(self, questions: list[str], golds: list[list[str]], judged: list[int]) -> list[list[float]]:
        """The judge on pairs whose verdict is known, as [expected, verdict]: each judged question's gold
        answer (its second phrasing when it has one) against its own gold (yes), and another
        question's gold answer in this batch (no)."""
        from ragtune.core.prompts import judge_correct_messages

        pairs = []
        for n, i in enumerate(judged):
            other = next((golds[j][0] for j in judged[n + 1:] + judged[:n] if golds[j][0] != golds[i][0]), None)
            pairs.append((1.0, judge_correct_messages(questions[i], golds[i][0], golds[i][-1])))
            if other is not None:
                pairs.append((0.0, judge_correct_messages(questions[i], golds[i][0], other)))
        verdicts = self._verdicts([messages for _, messages in pairs]) if pairs else []
        return [[expected, got] for (expected, _), got in zip(pairs, verdicts)]


class _Prompter(_Answerer):
    """The retrieval half of ``_Answerer`` (no generator): one row per question and arm, holding its
    conversation, the processor's model (the base model, or the arm's adapter by name) and the
    documents retrieved — what Ray Data LLM's processor answers on the GPUs."""

    def __init__(self, cfg_json: str, arms: list[str], models: dict[str, str]):
        from ragtune.config import RagtuneConfig

        self.cfg, self.arms, self.models = RagtuneConfig.model_validate_json(cfg_json), arms, models
        self._open_retrieval()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        questions, rows = [str(q) for q in batch["question"]], []
        for arm in self.arms:
            conversations, hits = self.prompts(questions, arm)
            rows += [{"id": str(qid), "arm": arm, "messages": json.dumps(c), "model": self.models[arm],
                      "retrieved": json.dumps([h.doc_id for h in found])}
                     for qid, c, found in zip(batch["id"], conversations, hits)]
        return {key: np.asarray([r[key] for r in rows], dtype=object) for key in rows[0]}


def vllm_processor(cfg: RagtuneConfig, arms: list[str]):
    """With ``generator.backend=vllm``: Ray Data LLM's vLLM processor for the comparison, and the
    model each arm's rows name (the base model, or an adapter by its directory's name: vLLM loads it
    per row from the directory both adapters sit in). It runs ``compare.actors`` engines of
    ``compare.gpus_per_actor`` GPUs each (tensor parallelism from ``generator.vllm.engine_kwargs``),
    ``compare.batch_size`` rows per batch, greedy answers of up to ``compare.max_tokens``.

    Raises:
        ConfigError: the ft and hybrid adapters sit in different directories.
    """
    from ray.data.llm import build_processor, vLLMEngineProcessorConfig

    c = cfg.compare
    base, _, revision = cfg.generator.model.partition("@")  # a hub id is org/name@revision
    adapters = {arm: path.rstrip("/") for arm in arms if (path := adapter_for(arm, c.adapter, c.hybrid_adapter))}
    homes = {path.rsplit("/", 1)[0] for path in adapters.values()}
    if len(homes) > 1:
        raise ConfigError(f"compare on generator.backend=vllm loads adapters by name from one directory, but they sit "
                          f"in {' and '.join(sorted(homes))}: copy them into one directory (or s3:// prefix)")
    engine = {"enable_lora": bool(adapters), "max_loras": max(1, len(set(adapters.values()))),
              **({"revision": revision} if revision else {}), **cfg.generator.vllm.engine_kwargs}
    config = vLLMEngineProcessorConfig(model_source=base, engine_kwargs=engine, batch_size=c.batch_size,
                                       concurrency=c.actors, dynamic_lora_loading_path=homes.pop() if homes else None)
    greedy = {"temperature": 0.0, "max_tokens": c.max_tokens}
    processor = build_processor(
        config,
        preprocess=lambda row: {"messages": json.loads(row["messages"]), "model": row["model"], "sampling_params": greedy,
                                "id": row["id"], "arm": row["arm"], "retrieved": row["retrieved"]},
        postprocess=lambda row: {"id": row["id"], "arm": row["arm"], "retrieved": row["retrieved"],
                                 "text": row["generated_text"], "prompt_tokens": row["num_input_tokens"],
                                 "completion_tokens": row["num_generated_tokens"]})
    return processor, {arm: adapters[arm].rsplit("/", 1)[1] if arm in adapters else base for arm in arms}


def _answer_with_ray_data_llm(cfg: RagtuneConfig, ds, arms: list[str]) -> dict[str, dict[str, Answer]]:
    """Every question's answer for each arm: retrieval on CPU actors, then the vLLM processor."""
    processor, models = vllm_processor(cfg, arms)
    prompts = ds.map_batches(_Prompter, fn_constructor_args=(cfg.model_dump_json(), arms, models),
                             batch_size=cfg.compare.batch_size, concurrency=cfg.compare.actors, num_cpus=1)
    by_id: dict[str, dict[str, Answer]] = {arm: {} for arm in arms}
    for row in processor(prompts).iter_rows():
        by_id[row["arm"]][row["id"]] = Answer(question_id=row["id"], text=str(row["text"]).strip(),
                                              retrieved=json.loads(row["retrieved"]), prompt_tokens=int(row["prompt_tokens"]),
                                              completion_tokens=int(row["completion_tokens"]), seconds=0.0)
    return by_id


def answer_all(cfg: RagtuneConfig, questions: list[Question], arms: list[str], judged: frozenset[str] = frozenset(),
               ) -> tuple[dict[str, list[Answer]], dict[str, float], list[list[float]]]:
    """Every question's answer for each of ``arms``, in the questions' order — one Ray Data pass,
    each actor answering every arm (on ``generator.backend=vllm``: Ray Data LLM's processor) — and
    the wall time of each arm: the pass's, split between the arms in proportion to the time each
    took to answer (in equal shares on vllm, whose engine answers the arms' rows together). The
    answers to the questions in ``judged`` get the judge's verdicts (``compare.judge``), and the
    judge's [expected, verdict] on known pairs drawn from them come last."""
    import ray.data

    ds = ray.data.from_items([{"id": q.id, "question": q.question, "gold": json.dumps(q.answers),
                               "judge": q.id in judged} for q in questions])
    known: list[list[float]] = []
    started = time.perf_counter()
    if cfg.generator.backend == "vllm":
        by_id = _answer_with_ray_data_llm(cfg, ds, arms)
    else:
        answered = ds.map_batches(_Answerer, fn_constructor_args=(cfg.model_dump_json(), arms, len(questions)),
                                  batch_size=cfg.compare.batch_size, concurrency=cfg.compare.actors,
                                  num_cpus=cfg.compare.cpus_per_actor, num_gpus=cfg.compare.gpus_per_actor or None)
        by_id = {arm: {} for arm in arms}
        batches_seen: set[str] = set()
        for row in answered.iter_rows():
            for arm in arms:
                answer = Answer(**json.loads(row[arm]))
                by_id[arm][answer.question_id] = answer
            batch = json.loads(row["judge_known"])
            if batch["batch"] not in batches_seen:  # every row of a batch carries its batch's pairs
                batches_seen.add(batch["batch"])
                known += batch["pairs"]
    elapsed = time.perf_counter() - started
    busy = {arm: sum(a.seconds for a in by_id[arm].values()) for arm in arms}
    total = sum(busy.values())
    wall = {arm: elapsed * (busy[arm] / total if total else 1 / len(arms)) for arm in arms}
    return {arm: [by_id[arm][q.id] for q in questions] for arm in arms}, wall, known


def answer_via_endpoint(cfg: RagtuneConfig, questions: list[Question], arm: str, client: ServeClient,
                        base: str) -> list[Answer]:
    """Every question's answer for ``arm`` from a running server (``compare.endpoint_concurrency``
    requests in flight, a 503 retried twice); ``seconds`` is each request's round trip."""
    c = cfg.compare
    model = _served_model(base, adapter_for(arm, c.adapter, c.hybrid_adapter))

    def ask(q: Question) -> Answer:
        started = time.perf_counter()
        reply = client.chat(q.question, model, c.max_tokens, {"mode": arm, "top_k": c.top_k}, retries=2)
        return Answer(question_id=q.id, text=reply["choices"][0]["message"]["content"],
                      retrieved=[hit["doc_id"] for hit in reply.get("citations", [])],
                      prompt_tokens=reply["usage"]["prompt_tokens"], completion_tokens=reply["usage"]["completion_tokens"],
                      seconds=time.perf_counter() - started)

    with ThreadPoolExecutor(c.endpoint_concurrency) as pool:
        return list(pool.map(ask, questions))


def _endpoint(cfg: RagtuneConfig) -> tuple[ServeClient, str]:
    """The server's client and base model id, after checking it serves every arm's adapter.

    Raises:
        EndpointError: the server cannot be reached or refuses the key.
        ConfigError: an arm's adapter is not among the server's models.
    """
    from ragtune.serve.client import ServeClient

    c = cfg.compare
    client = ServeClient(c.endpoint, os.environ.get("RAGTUNE_API_KEY"))
    models = client.models()
    base = models[0]
    for arm in c.arms:
        adapter = adapter_for(arm, c.adapter, c.hybrid_adapter)
        if _served_model(base, adapter) not in models:
            raise ConfigError(f"{c.endpoint} serves no adapter {Path(adapter).name!r} for the {arm} arm (it serves: "
                              f"{', '.join(models)}): copy the adapter into the server's serve.adapters registry")
    return client, base


def _served_model(base: str, adapter: str | None) -> str:
    """The server's name for an arm's adapter: a registry name, or a directory named like one."""
    from ragtune.serve.client import model_id

    return model_id(base, adapter and Path(adapter).name)


def run_compare(cfg: RagtuneConfig) -> Path:
    """Answer ``cfg.compare.questions`` with every arm, score them, write the report; returns its directory.

    Raises:
        DataError: the question set is missing, empty, or has questions without gold answers.
        ConfigError: no question set, or an arm cannot run (unknown, or ft/hybrid without an adapter) — before any model loads.
        EndpointError: with ``compare.endpoint``, the server cannot be reached or answers an error.
    """
    from ragtune.eval.report import write_report
    from ragtune.runtime import init_ray

    c = cfg.compare
    if not c.questions:
        raise ConfigError("compare.questions is not set: give a SQuAD json or QA jsonl file with gold answers")
    # an adapter in storage: the generator actors fetch it on their nodes, the report reads this node's copy
    here = cfg if c.endpoint else _with_local_adapters(cfg)
    check_arms(c.arms, here.compare.adapter, here.compare.hybrid_adapter, local=not c.endpoint)
    if c.judge and (c.endpoint or cfg.generator.backend == "vllm"):
        raise ConfigError("compare.judge runs in the generator actors of a batch comparison on the hf or onnx backend: "
                          "unset compare.endpoint (or set generator.backend=hf or onnx), or set compare.judge=false")
    questions = load_questions(c.questions, c.format, c.sample, c.seed)
    updates = load_fact_updates(c.freshness_questions) if c.freshness_questions else None
    server = _endpoint(cfg) if c.endpoint else None
    if server is None:
        init_ray()
    # The freshness questions' first pass rides along with the comparison's (one generator load);
    # their ids are prefixed so that they cannot collide with the compared questions' ids.
    asked = [Question(f"freshness:{u.id}", u.question, [u.after[0]], u.doc_id) for u in updates or []]
    answers, wall, before, known = {}, {}, {}, []
    if server:
        for arm in c.arms:
            started = time.perf_counter()
            answers[arm] = answer_via_endpoint(cfg, questions, arm, *server)
            wall[arm] = time.perf_counter() - started
    else:
        answered, wall, known = answer_all(cfg, questions + asked, c.arms,
                                           frozenset(q.id for q in questions) if c.judge else frozenset())
        for arm in c.arms:
            answers[arm], before[arm] = answered[arm][:len(questions)], answered[arm][len(questions):]
            # the pass's wall time, in the share spent on the compared questions
            wall[arm] *= len(questions) / (len(questions) + len(asked))
    freshness = run_freshness(cfg, updates, before, asked) if updates else None
    return write_report(here, questions, answers, wall, freshness, known if c.judge else None)


def _with_local_adapters(cfg: RagtuneConfig) -> RagtuneConfig:
    """``cfg`` with each adapter given by a storage URI replaced by a copy on this node."""
    from ragtune.generation import AdapterError, fetch_adapter

    c = cfg.compare
    update = {}
    for field in ("adapter", "hybrid_adapter"):
        ref = getattr(c, field)
        if ref and is_storage_uri(ref):
            try:
                update[field] = str(fetch_adapter(ref))
            except AdapterError as exc:
                raise ConfigError(f"compare.{field}: {exc}") from None
    return cfg.model_copy(update={"compare": c.model_copy(update=update)}) if update else cfg


def ingest_revised_documents(cfg: RagtuneConfig) -> IngestSummary:
    """Ingest ``compare.freshness_documents`` into the collection (the knowledge-base update, no
    pruning: only the revised documents change); returns the ingest summary."""
    from ragtune.ingest import run_ingest

    return run_ingest(cfg.model_copy(update={"ingest": cfg.ingest.model_copy(
        update={"sources": [cfg.compare.freshness_documents], "prune": False})}))


def run_freshness(cfg: RagtuneConfig, updates: list[FactUpdate], before: dict[str, list[Answer]],
                  asked: list[Question]) -> dict[str, Any]:
    """Given every arm's answers to the changed facts' questions (``before``), ingest the revised
    documents into the collection and ask again: which answers state the new fact, the old one, or neither."""
    applied = ingest_revised_documents(cfg)
    # base and ft read no documents: their prompts, and so their greedy answers, cannot change
    reread = [arm for arm in cfg.compare.arms if arm in RETRIEVAL_MODES]
    after = {**before, **(answer_all(cfg, asked, reread)[0] if reread else {})}
    result: dict[str, Any] = {"documents_updated": applied.new + applied.changed, "facts": len(updates), "arms": {}}
    for arm in cfg.compare.arms:
        rows = [{"id": u.id, "before_update": which_fact(b.text, u), "after_update": which_fact(a.text, u),
                 "answer_before_update": b.text, "answer_after_update": a.text, "retrieved_after_update": a.retrieved}
                for u, b, a in zip(updates, before[arm], after[arm])]
        result["arms"][arm] = {
            "before_update": {k: sum(r["before_update"] == k for r in rows) for k in ("new", "old", "neither")},
            "after_update": {k: sum(r["after_update"] == k for r in rows) for k in ("new", "old", "neither")},
            # the share of facts answered new / old after the update, 0-100 with 95% bootstrap intervals
            "after_update_share": {k: share([r["after_update"] == k for r in rows], cfg.compare) for k in ("new", "old")},
            # did retrieval bring the revised document into the prompt (rows that name their doc_id)?
            "revised_document_retrieved": sum(u.doc_id in a.retrieved for u, a in zip(updates, after[arm]) if u.doc_id)
            if arm in RETRIEVAL_MODES else None,
            "questions": rows}
    return result
