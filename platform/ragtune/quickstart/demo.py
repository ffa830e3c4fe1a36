"""`ragtune quickstart` (what `make demo` runs): the whole cycle, each stage through the same
functions as its own command — ingest (`ragtune ingest`), prepare + fine-tune (`ragtune train`),
compare with the freshness experiment (`ragtune compare`), serve (`ragtune serve`) and ask the four
modes through the HTTP API (`ragtune ask`) — then a summary of where everything is.

Completed stages are reused on a re-run (the collection's ingest manifest, the dequantized model,
an adapter trained on the same data with the same settings, a report of the same comparison); an
interrupted training resumes from its newest checkpoint. What the demo started (the Serve
application, the local Ray cluster, the milvus-lite server) is stopped on exit and on Ctrl-C; the
data it wrote stays.
"""

from __future__ import annotations

import json
import shutil
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from ragtune.config import RagtuneConfig, load_config, ragtune_home
from ragtune.quickstart import KB_DIR

QUICKSTART_DIR = KB_DIR.parent
DEFAULT_CONFIG = QUICKSTART_DIR / "quickstart.yaml"
STAGES = ("ingest", "train", "compare", "serve")


@dataclass(frozen=True)
class QuickstartData:
    """The demo's inputs: documents, Q/A pairs (None: written from the documents by `ragtune synth`),
    and optionally a knowledge-base update (revised documents + the questions whose answers they change)."""

    docs: Path = KB_DIR
    qa: Path | None = QUICKSTART_DIR / "qa.jsonl"
    update_docs: Path | None = QUICKSTART_DIR / "kb_updates"
    updates: Path | None = QUICKSTART_DIR / "updates.jsonl"


def state_dir() -> Path:
    """Where the demo keeps its report, synthesized Q/A pairs and stage timings ($RAGTUNE_HOME/quickstart)."""
    return ragtune_home() / "quickstart"


def stages(synthesize: bool) -> tuple[str, ...]:
    """The demo's stages: with no Q/A pairs given, `ragtune synth` writes them after the ingest."""
    return (STAGES[0], "synth", *STAGES[1:]) if synthesize else STAGES


def quickstart_config(path: Path | None, overrides: list[str], data: QuickstartData) -> RagtuneConfig:
    """The demo's configuration: ``path`` (default: the bundled quickstart.yaml) with the data's paths
    and the comparison's wiring (prepare's held-out questions, the adapter train writes) filled in.

    Raises:
        ConfigError: the file or an override is invalid, or an input path does not exist.
    """
    from ragtune.config import ConfigError
    from ragtune.data import output_dir as dataset_dir
    from ragtune.train.driver import output_dir as adapter_dir

    for what, given in (("--docs", data.docs), ("--qa", data.qa), ("--update-docs", data.update_docs),
                        ("--updates", data.updates)):
        if given is not None and not Path(given).exists():
            raise ConfigError(f"{what} {given} does not exist")
    if (data.update_docs is None) != (data.updates is None):
        raise ConfigError("the knowledge-base update needs both --update-docs and --updates (or neither)")
    wiring = [f"ingest.sources=[{json.dumps(str(data.docs))}]", f"compare.output_dir={json.dumps(str(state_dir() / 'report'))}"]
    synthesized = state_dir() / "synth"
    if data.qa is None:  # train on synthesized pairs; compare on their held-out and unseen-document questions
        wiring += [f"synth.output_dir={json.dumps(str(synthesized))}", "prepare.eval_holdout=0",
                   f"prepare.inputs=[{json.dumps(str(synthesized / 'train.jsonl'))}]"]
    else:
        wiring.append(f"prepare.inputs=[{json.dumps(str(data.qa))}]")
    if data.updates is not None:
        wiring += [f"compare.freshness_documents={json.dumps(str(data.update_docs))}",
                   f"compare.freshness_questions={json.dumps(str(data.updates))}"]
    cfg = load_config(path or DEFAULT_CONFIG, [*wiring, *overrides])
    questions = synthesized if data.qa is None else dataset_dir(cfg)
    wired = [f"compare.questions={json.dumps(str(questions / 'eval.jsonl'))}",
             f"compare.adapter={json.dumps(str(adapter_dir(cfg)))}"]
    return load_config(path or DEFAULT_CONFIG, [*wiring, *wired, *overrides])


class Quickstart:
    """The demo's stages on one configuration; ``run`` drives them and cleans up."""

    def __init__(self, cfg: RagtuneConfig, console: Console, serve_config: Path, keep_serving: bool = False,
                 synthesize: bool = False):
        self.cfg = cfg
        self.stages = stages(synthesize)
        self.ingested = None  # the ingest stage's summary
        self.console = console
        self.serve_config = serve_config
        self.keep_serving = keep_serving
        self.timings: dict[str, float] = {}
        self.url: str | None = None
        self.base: str | None = None  # the served base model's id

    # ------------------------------------------------------------------ driver
    def run(self, fresh: bool = False) -> None:
        """Every stage in order; their wall times go to stages.json."""
        from ragtune.store.local import local_server_running

        state_dir().mkdir(parents=True, exist_ok=True)
        started_milvus = self.cfg.milvus.uri is None and not local_server_running(self.cfg.milvus.local_port)
        stage = "start"
        with ExitStack() as cleanup:
            cleanup.callback(self._stop_everything, started_milvus)
            try:
                if fresh:
                    self._forget()
                for number, stage in enumerate(self.stages, 1):
                    self.console.rule(f"[bold]{number}/{len(self.stages)} {_TITLES[stage]}")
                    work = getattr(self, stage)
                    began = time.perf_counter()
                    work()
                    self.timings[stage] = round(time.perf_counter() - began, 1)
                    self.console.print(f"[green]✓[/] {stage} done in {self.timings[stage]:.0f} s")
                self.timings["total"] = round(sum(self.timings.values()), 1)
                (state_dir() / "stages.json").write_text(json.dumps(self.timings, indent=2))
                self.summary()
                if self.keep_serving:
                    self.console.print(f"serving at {self.url} until Ctrl-C")
                    while True:
                        time.sleep(3600)
            except KeyboardInterrupt:
                self.console.print(f"\n[yellow]interrupted during {stage}[/]: stopping what the demo started; "
                                   "the data stays. `ragtune quickstart` again continues"
                                   + (" (training resumes from its newest checkpoint)" if stage == "train" else ""))
                raise

    def _stop_everything(self, started_milvus: bool) -> None:
        import ray

        from ragtune.serve.runner import stop_serve

        if self.url is not None:
            stop_serve(self.serve_config)
        if started_milvus:  # first: a Ray shutdown that crashes (seen once after Ctrl-C) leaves no server behind
            from ragtune.store.local import stop_local_server

            stop_local_server()
        ray.shutdown()

    def _forget(self) -> None:
        """--fresh: drop the collection and delete the synthesized pairs, the dataset, the training run,
        the adapter and the report (model caches stay: they are the models, not the demo's results)."""
        from ragtune.store import VectorStore

        store = VectorStore(self.cfg.milvus)
        if store.exists():
            store.drop()
        store.close()
        for path in (*self._training_paths(), state_dir() / "report", state_dir() / "synth"):
            shutil.rmtree(path, ignore_errors=True)
        self.console.print("--fresh: dropped the collection, deleted the synthesized pairs, dataset, training run, "
                           "adapter and report")

    def _training_paths(self) -> tuple[Path, Path, Path]:
        """The prepared dataset, the Ray Train run (checkpoints) and the exported adapter."""
        from ragtune.data import output_dir as dataset_dir
        from ragtune.train.driver import output_dir as adapter_dir
        from ragtune.train.resume import run_location

        return dataset_dir(self.cfg), Path(run_location(self.cfg)), adapter_dir(self.cfg)

    # ------------------------------------------------------------------ stages
    def ingest(self) -> None:
        from ragtune.ingest import run_ingest

        s = self.ingested = run_ingest(self.cfg)
        self.console.print(f"{s.documents} documents ({s.new} new, {s.changed} changed, {s.unchanged} unchanged, "
                           f"{s.pruned} pruned) → {s.chunks_written} chunks written into collection "
                           f"{s.collection!r}, {s.rejected} rejected")

    def synth(self) -> None:
        from ragtune.data.synth import STATS_FILE, run_synth

        out = Path(self.cfg.synth.output_dir)
        try:
            recorded = json.loads((out / STATS_FILE).read_text())
            same = recorded["config"] == self.cfg.synth.model_dump(mode="json") and recorded["generator"] == {
                "model": self.cfg.generator.model, "backend": self.cfg.generator.backend}
        except (OSError, ValueError, KeyError):
            same = False
        changed = self.ingested.new + self.ingested.changed + self.ingested.pruned
        if same and not changed:
            self.console.print(f"reused the Q/A pairs in {out} (the documents and synth settings are unchanged)")
            s = recorded
        else:
            s = run_synth(self.cfg, progress=self.console.print).stats
        dropped = ", ".join(f"{reason} {n}" for reason, n in s["dropped"].items() if n) or "none"
        self.console.print(f"{s['generated']} questions written, {s['kept']} kept (dropped: {dropped}) → "
                           f"{s['questions']['train']} to train, {s['questions']['eval_seen']} held out on trained "
                           f"documents, {s['questions']['eval_unseen']} on {s['documents']['eval_unseen']} documents "
                           f"that do not train; in {out}")
        t = self.cfg.train
        needed = t.num_workers * t.micro_batch_size * t.gradient_accumulation_steps
        evaluated = s["questions"]["eval_seen"] + s["questions"]["eval_unseen"]
        # prepare holds prepare.validation_fraction of them out of training (by hash: about that share)
        if s["questions"]["train"] * (1 - self.cfg.prepare.validation_fraction) < needed or not evaluated:
            from ragtune.config import ConfigError

            raise ConfigError(
                f"synth kept {s['kept']} of {s['generated']} questions ({s['questions']['train']} to train, {evaluated} "
                f"to compare): too few to fine-tune ({needed} training rows make one optimizer step, after "
                f"prepare.validation_fraction={self.cfg.prepare.validation_fraction}) and compare. "
                f"{self.cfg.generator.model} keeps few of the questions it writes (BENCHMARKS.md, \"Questions "
                "synthesized from SQuAD\"): give your own pairs (--qa FILE), more answers per chunk "
                "(--set synth.questions_per_chunk=4), more chunks (--set synth.max_chunks=null), smaller steps "
                "(--set train.micro_batch_size=4), or a larger generator "
                f"(--set generator.model=...). What it wrote and why each was dropped: {out / 'generated.jsonl'}")

    def train(self) -> None:
        from ragtune.data.pipeline import fingerprint
        from ragtune.train import run_train
        from ragtune.train.resume import resume_conflict

        conflict = resume_conflict(self.cfg, fingerprint(self.cfg))
        if conflict:  # the demo's own run: it starts over where `ragtune train` refuses
            shutil.rmtree(self._training_paths()[1], ignore_errors=True)
            self.console.print("the Q/A data or the prepare/train settings changed: training starts over")
        result = run_train(self.cfg)
        r = result.report
        if result.reused:
            self.console.print(f"reused the adapter {result.output_dir} (already trained on this data with these "
                               "settings; --fresh trains again)")
        val = r["validation"][-1]["loss"] if r["validation"] else None
        self.console.print(f"{r['steps']} steps, {r['dataset']['rows']['train']} training rows, loss "
                           f"{r['first_loss']:.3f} → {r['final_loss']:.3f}"
                           + (f", validation loss {val:.3f}" if val is not None else "")
                           + (f"; attempts: {len(r['attempts'])} (the last resumed from step "
                              f"{r['attempts'][-1]['resumed_from_step']})" if len(r["attempts"]) > 1 else "")
                           + f" → {result.output_dir}")

    def compare(self) -> None:
        from ragtune.eval.compare import ingest_revised_documents, run_compare
        from ragtune.train.report import REPORT_FILE

        c = self.cfg.compare
        report = Path(c.output_dir)
        self.console.print(f"answers from the {self.cfg.generator.backend} backend (generator.backend)")
        if self._report_is_current(report / "report.json", Path(c.adapter) / REPORT_FILE):
            self.console.print(f"reused the report {report} (same comparison, adapter unchanged)")
            if c.freshness_documents:  # leave the collection as the comparison did: updated
                s = ingest_revised_documents(self.cfg)
                self.console.print(f"applied the knowledge-base update again: {s.new + s.changed} documents revised")
        else:
            run_compare(self.cfg)
        md = (report / "report.md").read_text()
        self.console.print(_sections(md, ("## Recommendation", "## Answer quality", "## Judge", "## Freshness")), markup=False,
                           highlight=False)
        self.console.print(f"report: {report / 'report.md'} (plots: metrics.png, quality_vs_cost.png)")

    def _report_is_current(self, report: Path, training_report: Path) -> bool:
        try:
            recorded = json.loads(report.read_text())
            return (recorded["config"] == self.cfg.compare.model_dump() and recorded["generator"] == self.cfg.generator.model_dump()
                    and report.stat().st_mtime > training_report.stat().st_mtime)
        except (OSError, ValueError, KeyError):
            return False

    def serve(self) -> None:
        from ragtune.serve.client import ServeClient, model_id
        from ragtune.serve.runner import run_serve

        m = self.cfg.milvus
        http = run_serve(self.serve_config, [
            f"generator={json.dumps(self.cfg.generator.model_dump(mode='json'))}",  # the comparison's model and backend
            f"embedding.model={json.dumps(self.cfg.embedding.model)}",
            f"milvus={json.dumps(m.model_dump(mode='json'))}", f"serve.adapters={json.dumps(str(Path(self.cfg.compare.adapter).parent))}"])
        host = "127.0.0.1" if http["host"] in ("0.0.0.0", "::") else http["host"]
        self.url = f"http://{host}:{http['port']}"
        client = ServeClient(self.url)
        self.base = base = client.models()[0]
        adapter = Path(self.cfg.compare.adapter).name
        question, facts = self._question()
        self.console.print(f"{self.url} is up ({base}; adapter {adapter}). Asking: [bold]{question}[/] ({facts})",
                           highlight=False)
        table = Table(show_lines=True)
        for col in ("mode", "answer", "passages (doc ids)", "s"):
            table.add_column(col, overflow="fold")
        for mode in ("base", "rag", "ft", "hybrid"):
            began = time.perf_counter()
            reply = client.chat(question, model_id(base, adapter if mode in ("ft", "hybrid") else None), 48,
                                {"mode": mode}, retries=2)
            table.add_row(mode, reply["choices"][0]["message"]["content"].strip(),
                          ", ".join(c["doc_id"] for c in reply.get("citations", [])) or "–",
                          f"{time.perf_counter() - began:.1f}")
        self.console.print(table)

    def _question(self) -> tuple[str, str]:
        """What to ask the four modes, and a note on the expected facts: a fact the update changed —
        the first one the comparison saw rag state anew after the update, else the first one — or,
        without an update, the first held-out question."""
        from ragtune.eval.answers import load_fact_updates, load_questions

        c = self.cfg.compare
        if not c.freshness_questions:
            q = load_questions(c.questions, c.format, None, c.seed)[0]
            return q.question, f"gold answer: {q.answers[0]}"
        updates = load_fact_updates(c.freshness_questions)
        try:
            rag = json.loads((Path(c.output_dir) / "report.json").read_text())["freshness"]["arms"]["rag"]["questions"]
            picked = next(u for u, row in zip(updates, rag) if row["after_update"] == "new")
        except (OSError, ValueError, KeyError, StopIteration):
            picked = updates[0]
        return picked.question, f"before the update: {picked.before[0]} · after it: {picked.after[0]}"

    # ------------------------------------------------------------------ summary
    def summary(self) -> None:
        c = self.cfg.compare
        adapter = Path(c.adapter).name
        collection = self.cfg.milvus.collection
        t = self.timings
        self.console.rule("[bold]done")
        self.console.print(
            "stages: " + ", ".join(f"{s} {t[s]:.0f} s" for s in self.stages) + f" (total {t['total']:.0f} s)\n"
            f"report:   {c.output_dir}/report.md (report.json, questions.csv, answers.jsonl, metrics.png, "
            f"quality_vs_cost.png)\n"
            f"adapter:  {c.adapter}\n"
            f"endpoint: {self.url}/v1 — " + ("up until Ctrl-C" if self.keep_serving else
                                             "stopped now (`ragtune quickstart --keep-serving` keeps it up)") + "\n\n"
            "next:\n"
            f"  ragtune serve --set milvus.collection={collection}        # the same graph, in the foreground\n"
            f"  ragtune ask \"{self._question()[0]}\" --mode rag\n"
            f"  ragtune ask \"...\" --adapter {adapter} --mode ft      # or hybrid\n"
            f"  python -c \"from openai import OpenAI; c = OpenAI(base_url='{self.url}/v1', api_key='-'); "
            f"print(c.chat.completions.create(model='{self.base}:{adapter}', messages=[{{'role': "
            f"'user', 'content': 'Is support open on Sunday?'}}], extra_body={{'ragtune': {{'mode': 'hybrid'}}}})"
            ".choices[0].message.content)\"\n"
            "  ray start --head && ray job submit --working-dir . -- python jobs/train.py jobs/configs/train_cpu.yaml"
            "   # README: As a Ray job\n"
            "  ragtune quickstart --docs DIR [--qa FILE]    # your own documents (and Q/A pairs, else synthesized)",
            highlight=False, soft_wrap=True)


_TITLES = {
    "ingest": "ingest the knowledge base (Ray Data: parse → chunk → embed → Milvus)",
    "synth": "write Q/A pairs from the documents (Ray Data + the generator), split by document and question",
    "train": "prepare the Q/A pairs and fine-tune a LoRA adapter (Ray Train + DeepSpeed ZeRO-2, CPU)",
    "compare": "compare base, rag, ft and hybrid on held-out questions, then update the knowledge base",
    "serve": "serve the retriever + generator graph (Ray Serve) and ask one question in all four modes",
}


def _sections(markdown: str, headings: tuple[str, ...]) -> str:
    """The sections of ``markdown`` that start with one of ``headings`` (up to the next heading)."""
    kept, keep = [], False
    for line in markdown.splitlines():
        if line.startswith("## "):
            keep = line.startswith(headings)
        if keep and not line.startswith("!["):  # images: the report's, not a terminal's
            kept.append(line)
    return "\n".join(kept)
