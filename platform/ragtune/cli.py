"""The ``ragtune`` command line.

Exit codes: 0 success; 1 an unexpected failure; 2 bad input (config, sources, model, collection);
3 ingest finished but rejected more inputs than ``validation.max_reject_fraction`` allows.
"""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from ragtune.config import ConfigError, RagtuneConfig, load_config

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="RAG or fine-tuning? Ingest, retrieve, fine-tune, serve and compare — on Ray.")
eval_app = typer.Typer(no_args_is_help=True, help="Measure retrieval and answer quality.")
milvus_app = typer.Typer(no_args_is_help=True, help="The local milvus-lite server.")
k8s_app = typer.Typer(no_args_is_help=True, help="Kubernetes manifests (KubeRay) in k8s/.")
app.add_typer(eval_app, name="eval")
app.add_typer(milvus_app, name="milvus")
app.add_typer(k8s_app, name="k8s")
out = Console()
err = Console(stderr=True)

EXIT_BAD_INPUT = 2
EXIT_TOO_MANY_REJECTS = 3

ConfigOpt = Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML config file.")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="Override: key.sub=value (repeatable).")]
CollectionOpt = Annotated[Optional[str], typer.Option("--collection", help="Milvus collection (milvus.collection).")]


_diverted = None  # this command's CommandLog, once its output goes to a log file
_verbose = False
_own_process = False  # run as the `ragtune` program (main), not called in another's (tests' CliRunner)


@app.callback()
def _options(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show Ray's, Serve's, transformers' and "
                                                   "the Milvus client's output instead of writing it to "
                                                   "$RAGTUNE_HOME/logs/.")] = False) -> None:
    global _verbose
    _verbose = verbose


def _log_to_file(command: str) -> None:
    """A long command's third-party output goes to its log file (unless --verbose); its path is
    printed once."""
    global _diverted
    if _diverted is not None or not _own_process:
        return
    from ragtune.logfile import divert, show_on_terminal

    if _verbose:
        show_on_terminal(sys.stderr)
        return
    _diverted = divert(command, (out, err))
    err.print(f"[dim]log: {_diverted.path}[/]", highlight=False, soft_wrap=True)


def _config(config: Path | None, overrides: list[str] | None, **flags: object) -> RagtuneConfig:
    extra = [f"{key}={value}" for key, value in flags.items() if value is not None]
    return load_config(config, [*extra, *(overrides or [])])


def _fail(message: str, code: int = EXIT_BAD_INPUT) -> None:
    logging.getLogger("ragtune.cli").info("error: %s", message)  # into the log file too
    where = f"\n[dim](log: {_diverted.path})[/]" if _diverted else ""
    err.print(f"[bold red]error:[/] {message}{where}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _bad_input_errors() -> tuple[type[BaseException], ...]:
    from ragtune.ingest import SourceError
    from ragtune.models import ModelError
    from ragtune.data import DataError
    from ragtune.store import CollectionMismatch, LocalMilvusError
    from ragtune.core.filters import FilterError
    from ragtune.train import LoraTargetError, TrainSetupError

    return (ConfigError, FilterError, SourceError, ModelError, CollectionMismatch, LocalMilvusError, LookupError,
            FileNotFoundError, DataError, TrainSetupError, LoraTargetError)


@app.command()
def ingest(
    sources: Annotated[list[str], typer.Argument(help="Files, directories, globs or s3:// URIs.")],
    config: ConfigOpt = None,
    set_: SetOpt = None,
    collection: CollectionOpt = None,
    prune: Annotated[bool, typer.Option("--prune", help="Delete documents no longer in the sources.")] = False,
    report_dir: Annotated[Optional[Path], typer.Option(help="Where rejected.jsonl and summary.json go.")] = None,
) -> None:
    """Ingest documents into Milvus (incremental: unchanged documents are skipped)."""
    _log_to_file("ingest")
    from ragtune.ingest import run_ingest

    try:
        cfg = _config(config, set_, **{"milvus.collection": collection})
        cfg = cfg.model_copy(update={"ingest": cfg.ingest.model_copy(update={"sources": sources, "prune": prune or cfg.ingest.prune})})
        summary = run_ingest(cfg, report_dir)
    except _bad_input_errors() as exc:
        _fail(str(exc))
    table = Table(title=f"ingest → {summary.collection}", show_header=False)
    for label, value in [
        ("files", summary.files), ("documents", f"{summary.documents} ({summary.new} new, {summary.changed} changed, "
                                                f"{summary.unchanged} unchanged)"),
        ("pruned documents", summary.pruned), ("chunks written", summary.chunks_written),
        ("chunks deleted", summary.chunks_deleted), ("chunks embedded", summary.chunks_embedded),
        ("rejected", f"{summary.rejected} {summary.reject_reasons or ''}"),
        ("wall time", f"{summary.wall_s:.1f} s"), ("throughput", f"{summary.docs_per_s:.1f} docs/s"),
        ("reports", summary.report_dir),
    ]:
        table.add_row(label, str(value))
    out.print(table)
    if not summary.ok:
        _fail(f"{summary.rejected} of {summary.rejected + summary.documents} inputs rejected "
              f"({summary.reject_fraction:.0%} > validation.max_reject_fraction="
              f"{summary.max_reject_fraction:.0%}); see {summary.report_dir}/rejected.jsonl", EXIT_TOO_MANY_REJECTS)


@app.command()
def search(
    query: Annotated[str, typer.Argument(help="The question or keywords.")],
    mode: Annotated[Optional[str], typer.Option(help="dense | bm25 | hybrid")] = None,
    k: Annotated[Optional[int], typer.Option("--k", "-k", help="Results to show.")] = None,
    filter: Annotated[str, typer.Option(help='e.g. \'doc_id like "faq/%" and metadata.year >= 2024\' '
                                              '(README: Search filters).')] = "",
    config: ConfigOpt = None,
    set_: SetOpt = None,
    collection: CollectionOpt = None,
) -> None:
    """Search the collection and print ranked chunks with scores and sources."""
    from ragtune.core.filters import to_milvus
    from ragtune.embedding import load_encoder
    from ragtune.store import VectorStore

    try:
        cfg = _config(config, set_, **{"search.mode": mode, "search.k": k, "milvus.collection": collection})
        store = VectorStore(cfg.milvus)
        encoder = load_encoder(cfg.embedding) if cfg.search.mode != "bm25" else None
        if encoder is not None:
            store.check_model(encoder.name, encoder.dim)
        elif not store.exists():
            raise LookupError(f"collection {store.name!r} does not exist; run `ragtune ingest` first")
        vectors = encoder.encode([query]) if encoder else None
        hits = store.search(vectors, [query], cfg.search, filter=to_milvus(filter))[0]
    except _bad_input_errors() as exc:
        _fail(str(exc))
    table = Table(title=f"{cfg.search.mode} search: {query}")
    for col in ("#", "score", "document", "chunk", "source", "text"):
        table.add_column(col, overflow="fold")
    for rank, hit in enumerate(hits, start=1):
        snippet = " ".join(hit.text.split())
        table.add_row(str(rank), f"{hit.score:.4f}", hit.doc_id, str(hit.chunk_index), hit.source,
                      snippet[:160] + ("…" if len(snippet) > 160 else ""))
    out.print(table)
    if not hits:
        out.print("no results")


@app.command()
def prepare(
    inputs: Annotated[Optional[list[str]], typer.Argument(help="SQuAD json or QA/Alpaca/chat jsonl files (prepare.inputs).")] = None,
    output: Annotated[Optional[Path], typer.Option(help="Output directory (prepare.output_dir).")] = None,
    with_context: Annotated[bool, typer.Option("--with-context", help="Add retrieved passages (oracle + distractors).")] = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Build a fine-tuning dataset: chat template, answer-only loss, split, leakage guard → parquet."""
    _log_to_file("prepare")
    from ragtune.data import run_prepare

    try:
        cfg = _config(config, set_, **{"prepare.output_dir": output, "prepare.with_context": with_context or None})
        if inputs:
            cfg.prepare.inputs = inputs
        stats = run_prepare(cfg)
    except _bad_input_errors() as exc:
        _fail(str(exc))
    table = Table(title=f"prepare → {stats.output_dir}", show_header=False)
    for label, value in [
        ("input rows", stats.input_rows), ("duplicates removed", stats.duplicates_removed),
        ("eval holdout (eval.jsonl)", stats.eval_holdout), ("leakage removed", stats.leakage_removed),
        ("sampled out", stats.sampled_out), ("truncated", stats.truncated), ("dropped", stats.dropped or 0),
        ("rows", stats.rows), ("tokens", stats.tokens), ("answer tokens", stats.label_tokens),
        ("wall time", f"{stats.seconds:.1f} s"),
    ]:
        table.add_row(label, str(value))
    out.print(table)


@app.command()
def synth(
    sources: Annotated[Optional[list[str]], typer.Argument(
        help="Files, directories, globs or s3:// URIs to write from, with no collection (synth.sources); "
             "none: the chunks of the collection.")] = None,
    output: Annotated[Optional[Path], typer.Option(help="Output directory (synth.output_dir).")] = None,
    collection: CollectionOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Write question/answer pairs from the chunks of a collection, or of documents given as sources (Ray Data +
    the generation backend), split into training, seen-document and unseen-document evaluation sets (QA jsonl)."""
    _log_to_file("synth")
    from ragtune.data.synth import run_synth

    try:
        cfg = _config(config, set_, **{"synth.output_dir": output, "milvus.collection": collection})
        if sources:
            cfg = cfg.model_copy(update={"synth": cfg.synth.model_copy(update={"sources": sources})})
        result = run_synth(cfg, progress=err.print)
    except _bad_input_errors() as exc:
        _fail(str(exc))
    s = result.stats
    table = Table(title=f"synth → {result.output_dir}", show_header=False)
    dropped = ", ".join(f"{reason} {n}" for reason, n in s["dropped"].items() if n) or "none"
    found = "n/a" if s["kept_answers_in_chunk"] is None else f"{s['kept_answers_in_chunk']:.0%}"
    for label, value in [
        *((("sources", f"{s['sources']['files']} files, {s['sources']['rejected']} rejected"),) if s["sources"] else ()),
        ("chunks", f"{s['chunks']['used']} used of {s['chunks']['read']} ({s['chunks']['too_short']} too short, "
                   f"{s['chunks']['no_answer']} without a name, number or date)"),
        ("generated", s["generated"]), ("dropped", dropped), ("kept", s["kept"]),
        ("kept answers found in their chunk", found),
        *((f"{split}.jsonl", f"{s['questions'][split]} questions, {s['documents'][split]} documents")
          for split in ("train", "eval_seen", "eval_unseen")),
        ("wall time", f"{s['seconds']:.1f} s"),
    ]:
        table.add_row(label, str(value))
    out.print(table)
    if not s["kept"]:
        _fail("no generated pair passed the checks: see generated.jsonl for each reply and why it was dropped", code=1)


@app.command()
def train(
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Fine-tune a LoRA adapter with Ray Train + DeepSpeed (prepares the data first when prepare.inputs is set).

    Re-running the same train.run_name resumes from its newest checkpoint."""
    _log_to_file("train")
    from ragtune.train import run_train

    try:
        result = run_train(_config(config, set_))
    except _bad_input_errors() as exc:
        _fail(str(exc))
    r = result.report
    reused = " (already trained on this dataset with these settings: reused)" if result.reused else ""
    table = Table(title=f"train {r['run_name']} → {result.output_dir}{reused}", show_header=False)
    val = r["validation"][-1] if r["validation"] else None
    for label, value in [
        ("steps", f"{r['steps']} (last attempt resumed from step {r['attempts'][-1]['resumed_from_step']})"),
        ("loss", f"{r['first_loss']:.4f} → {r['final_loss']:.4f}"),
        ("validation loss", f"{val['loss']:.4f} (perplexity {val['perplexity']:.2f})" if val else "n/a"),
        ("tokens/s", r["tokens_per_second"]), ("wall time", f"{r['wall_seconds']:.1f} s"),
        ("restarts", len(r["attempts"]) - 1), ("adapter", result.output_dir),
    ]:
        table.add_row(label, str(value))
    out.print(table)


@app.command()
def merge(
    adapter: Annotated[Path, typer.Argument(help="Adapter directory written by `ragtune train`.")],
    output: Annotated[Path, typer.Argument(help="Directory for the merged model (safetensors).")],
) -> None:
    """Merge a LoRA adapter into its base model for engines that want one set of weights."""
    _log_to_file("merge")
    from ragtune.train import merge_adapter

    try:
        merged = merge_adapter(adapter, output)
    except _bad_input_errors() as exc:
        _fail(str(exc))
    out.print(f"merged model written to {merged}")


@app.command()
def compare(
    questions: Annotated[Optional[Path], typer.Option(help="SQuAD json or QA jsonl with gold answers (compare.questions).")] = None,
    adapter: Annotated[Optional[str], typer.Option(help="Adapter directory for ft and hybrid; with --endpoint, a "
                                                        "served adapter's name (compare.adapter).")] = None,
    arm: Annotated[Optional[list[str]], typer.Option(help="base | rag | ft | hybrid (repeatable; default all four).")] = None,
    sample: Annotated[Optional[int], typer.Option(help="Questions drawn from the set (compare.sample).")] = None,
    endpoint: Annotated[Optional[str], typer.Option(help="Ask this running `ragtune serve` instead of loading the "
                                                         "model (compare.endpoint; key from $RAGTUNE_API_KEY).")] = None,
    freshness: Annotated[Optional[Path], typer.Option(help="Freshness experiment: jsonl of question, answer_before, "
                                                           "answer_after (compare.freshness_questions).")] = None,
    freshness_documents: Annotated[Optional[Path], typer.Option(help="The revised documents ingested between the two "
                                                                     "passes (compare.freshness_documents).")] = None,
    output: Annotated[Optional[Path], typer.Option(help="Report directory (compare.output_dir).")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    collection: CollectionOpt = None,
) -> None:
    """The same questions through base, rag, ft and hybrid: scores with 95% intervals, latency, cost, a verdict."""
    _log_to_file("compare")
    from ragtune.eval.compare import run_compare
    from ragtune.serve.client import EndpointError

    flags = {"compare.questions": questions and str(questions), "compare.adapter": adapter,
             "compare.arms": arm, "compare.sample": sample, "compare.endpoint": endpoint,
             "compare.freshness_questions": freshness and str(freshness),
             "compare.freshness_documents": freshness_documents and str(freshness_documents),
             "compare.output_dir": output and str(output), "milvus.collection": collection}
    try:
        report = run_compare(_config(config, set_, **flags))
    except _bad_input_errors() as exc:
        _fail(str(exc))
    except EndpointError as exc:
        _fail(str(exc), code=1)
    out.print((report / "report.md").read_text().split("## Answer quality")[0], highlight=False)
    out.print(f"report: {report}/report.md (report.json, questions.csv, metrics.png, quality_vs_cost.png)")


eval_app.command("qa", help="Answer quality on a question set: `ragtune compare` (the same options).")(compare)


@eval_app.command("retrieval")
def eval_retrieval(
    beir: Annotated[Path, typer.Option(help="BEIR dataset directory (corpus.jsonl, queries.jsonl, qrels/).")],
    mode: Annotated[Optional[list[str]], typer.Option(help="dense | bm25 | hybrid (repeatable; default all).")] = None,
    split: Annotated[str, typer.Option(help="qrels split.")] = "test",
    config: ConfigOpt = None,
    set_: SetOpt = None,
    collection: CollectionOpt = None,
) -> None:
    """nDCG@10, Recall@100 and MRR@10 on a BEIR dataset (ingesting its corpus if needed)."""
    _log_to_file("eval-retrieval")
    from ragtune.eval.retrieval import evaluate_retrieval, load_beir

    modes = mode or ["dense", "bm25", "hybrid"]
    unknown = sorted(set(modes) - {"dense", "bm25", "hybrid"})
    if unknown:
        _fail(f"--mode {', '.join(unknown)}: choose from dense, bm25, hybrid")
    try:
        default_collection = "beir_" + re.sub(r"\W", "_", beir.resolve().name)
        cfg = _config(config, set_, **{"milvus.collection": collection or default_collection})
        dataset = load_beir(beir, split)
        scores = evaluate_retrieval(cfg, dataset, modes)
    except _bad_input_errors() as exc:
        _fail(str(exc))
    table = Table(title=f"{beir.name} ({split}, {len(dataset.queries)} queries)")
    for col in ("mode", "nDCG@10", "Recall@100", "MRR@10", "search s"):
        table.add_column(col)
    for s in scores:
        table.add_row(s.mode, f"{s.ndcg_at_10:.4f}", f"{s.recall_at_100:.4f}", f"{s.mrr_at_10:.4f}", f"{s.search_s:.1f}")
    out.print(table)


@milvus_app.command("status")
def milvus_status(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Start (or reuse) the local milvus-lite server and list its collections."""
    from ragtune.store import VectorStore

    try:
        store = VectorStore(_config(config, set_).milvus)
    except _bad_input_errors() as exc:
        _fail(str(exc))
    out.print(f"Milvus at {store.uri}; collections: {', '.join(store.client.list_collections()) or '(none)'}")


@milvus_app.command("stop")
def milvus_stop() -> None:
    """Stop the local milvus-lite server (its data stays in $RAGTUNE_HOME/milvus)."""
    from ragtune.store.local import stop_local_server

    out.print("stopped" if stop_local_server() else "no local milvus-lite server was running")


@app.command()
def serve(
    serve_config: Annotated[Optional[Path], typer.Argument(help="Ray Serve config (default serve_configs/local.yaml).")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override in the ragtune application's args: "
                                                      "key.sub=value, e.g. milvus.collection=quickstart (repeatable).")] = None,
) -> None:
    """Run a Serve config in the foreground: the OpenAI-compatible API over retriever + generator."""
    _log_to_file("serve")
    import time

    from ragtune.serve.runner import DEFAULT_CONFIG, run_serve, stop_serve

    path = serve_config or DEFAULT_CONFIG
    try:
        http = run_serve(path, set_)
    except _bad_input_errors() as exc:
        _fail(str(exc))
    except RuntimeError as exc:
        _fail(str(exc), code=1)
    out.print(f"serving {path} at http://{http['host']}:{http['port']} (Ctrl-C stops it)")
    try:
        while True:
            time.sleep(3600)
    finally:
        stop_serve(path)


@app.command()
def ask(
    question: Annotated[str, typer.Argument(help="The question.")],
    mode: Annotated[Optional[str], typer.Option(help="base | rag | ft | hybrid (default: hybrid with --adapter, else rag).")] = None,
    adapter: Annotated[Optional[str], typer.Option(help="Adapter name (GET /v1/models lists them).")] = None,
    top_k: Annotated[Optional[int], typer.Option(help="Passages to retrieve.")] = None,
    max_tokens: Annotated[int, typer.Option(help="Longest answer in tokens.")] = 128,
    url: Annotated[str, typer.Option(envvar="RAGTUNE_URL", help="The server.")] = "http://127.0.0.1:8000",
    api_key: Annotated[Optional[str], typer.Option(envvar="RAGTUNE_API_KEY", help="Bearer key, when the server wants one.")] = None,
) -> None:
    """Ask a running `ragtune serve` and print the answer with its citations."""
    from ragtune.serve.client import EndpointError, ServeClient, model_id

    client = ServeClient(url, api_key)
    try:
        base = client.models()[0]
        options = {k: v for k, v in {"mode": mode, "top_k": top_k}.items() if v is not None}
        answer = client.chat(question, model_id(base, adapter), max_tokens, options)
    except EndpointError as exc:
        _fail(str(exc), code=1)
    out.print(answer["choices"][0]["message"]["content"], highlight=False)
    for c in answer.get("citations", []):
        out.print(f"  [{c['index']}] {c['doc_id']} (chunk {c['chunk_index']}, score {c['score']:.3f})", highlight=False)
    u = answer["usage"]
    err.print(f"mode {answer['ragtune']['mode']} · {u['prompt_tokens']} prompt + {u['completion_tokens']} answer tokens")


@k8s_app.command("render")
def k8s_render(
    check: Annotated[bool, typer.Option(help="Write nothing; exit 1 when a manifest differs from its configs.")] = False,
) -> None:
    """Generate the RayService and RayJob manifests of each overlay from serve_configs/ and jobs/configs/."""
    from ragtune.k8s import render

    try:
        changed = render(check=check)
    except _bad_input_errors() as exc:
        _fail(str(exc))
    for path in changed:
        out.print(f"{'differs' if check else 'wrote'}: {path}", highlight=False)
    if check and changed:
        _fail("the manifests above are not what their configs render: run `ragtune k8s render`", code=1)
    if not changed:
        out.print("k8s manifests are up to date")


@k8s_app.command("check")
def k8s_check(
    overlay: Annotated[Optional[str], typer.Option(help="One overlay (dev, gpu); default: every overlay.")] = None,
) -> None:
    """Check every RayJob and the RayService of each overlay without running them (`jobs/<job>.py --check`):
    inputs exist, required fields are set, the jobs and the serving graph fit together; production's images
    are pinned by digest. Exit 2 on any problem."""
    from ragtune.k8s import REPO, SOURCES
    from ragtune.preflight import check_overlay, check_pinned_images

    overlays = [*SOURCES, "production"]
    if overlay and overlay not in overlays:
        _fail(f"unknown overlay {overlay!r}; the overlays are {', '.join(overlays)}")
    problems = 0
    for name in [overlay] if overlay else overlays:
        # production is the gpu overlay's clusters with pinned images and GCS fault tolerance
        results = {"images": check_pinned_images(REPO / "k8s" / "overlays" / name)} if name == "production" \
            else check_overlay(name)
        for what, found in results.items():
            out.print(f"{name} · {what}: {'ok' if not found else f'{len(found)} problem(s)'}", highlight=False,
                      soft_wrap=True)
            for problem in found:
                out.print(f"  - {problem}", highlight=False, soft_wrap=True)
            problems += len(found)
    if problems:
        _fail(f"{problems} problem(s) in the overlays above")


@app.command()
def quickstart(
    docs: Annotated[Optional[Path], typer.Option(help="Your documents (default: the bundled Brightwave knowledge base).")] = None,
    qa: Annotated[Optional[Path], typer.Option(help="Your Q/A pairs, jsonl of question + answer (default: the bundled "
                                                    "ones; with --docs, written from your documents by `ragtune synth`).")] = None,
    update_docs: Annotated[Optional[Path], typer.Option(help="Revised documents for the freshness experiment "
                                                             "(default: the bundled update; none with --docs).")] = None,
    updates: Annotated[Optional[Path], typer.Option(help="jsonl of question, answer_before, answer_after for the "
                                                         "revised documents (with --update-docs).")] = None,
    fresh: Annotated[bool, typer.Option("--fresh", help="Redo every stage: drop the collection, delete the dataset, "
                                                       "training run, adapter and report first.")] = False,
    keep_serving: Annotated[bool, typer.Option("--keep-serving", help="Keep the endpoint up after the summary, until Ctrl-C.")] = False,
    serve_config: Annotated[Optional[Path], typer.Option(help="Ray Serve config (default serve_configs/local.yaml).")] = None,
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML config (default: the bundled quickstart.yaml).")] = None,
    set_: SetOpt = None,
) -> None:
    """The whole cycle: ingest → (synthesize Q/A pairs) → fine-tune → compare base/rag/ft/hybrid + a knowledge-base
    update → serve and ask."""
    _log_to_file("quickstart")
    from ragtune.quickstart.demo import Quickstart, QuickstartData, quickstart_config
    from ragtune.serve.client import EndpointError
    from ragtune.serve.runner import DEFAULT_CONFIG

    bundled = QuickstartData()
    own_docs = docs is not None or qa is not None
    data = QuickstartData(docs=docs or bundled.docs, qa=qa if qa or docs else bundled.qa,
                          update_docs=update_docs or (None if own_docs else bundled.update_docs),
                          updates=updates or (None if own_docs else bundled.updates))
    try:
        cfg = quickstart_config(config, set_ or [], data)
        Quickstart(cfg, out, serve_config or DEFAULT_CONFIG, keep_serving, synthesize=data.qa is None).run(fresh)
    except _bad_input_errors() as exc:
        _fail(str(exc))
    except (EndpointError, RuntimeError) as exc:
        _fail(str(exc), code=1)


def main() -> None:
    """Console-script entry point."""
    import faulthandler

    global _own_process
    faulthandler.enable()  # a crash in native code (Ray's core worker, a kernel) prints every thread's stack
    _own_process = True
    try:
        app()
    except SystemExit as done:
        if done.code == 130:  # typer's exit for a KeyboardInterrupt
            logging.getLogger("ragtune.cli").info("interrupted")
            err.print("interrupted")
        raise
    except Exception as exc:
        if _diverted is None:
            raise
        logging.getLogger("ragtune.cli").exception("unexpected failure")
        err.print(f"[bold red]error:[/] {type(exc).__name__}: {exc}\n[dim](the traceback is in {_diverted.path})[/]",
                  highlight=False, soft_wrap=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
