"""`ragtune quickstart`: ingest the sample knowledge base and answer a few searches.

Later stages (fine-tuning, serving, comparison) join this demo as they land.
"""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from ragtune.config import RagtuneConfig
from ragtune.embedding import TextEncoder
from ragtune.ingest import run_ingest
from ragtune.quickstart import KB_DIR
from ragtune.store import VectorStore
from ragtune.store.local import local_server_running, stop_local_server

DEMO_QUESTIONS = [
    "How many days do I have to return headphones?",
    "Is support open on Sunday?",
    "how do I reset my earbuds",
]


def run_demo(config: RagtuneConfig, console: Console) -> None:
    """Ingest the bundled knowledge base into ``quickstart`` and show hybrid search results."""
    config = config.model_copy(update={
        "milvus": config.milvus.model_copy(update={"collection": "quickstart"}),
        "ingest": config.ingest.model_copy(update={"sources": [str(KB_DIR)], "prune": True}),
    })
    server_was_running = local_server_running(config.milvus.local_port)
    try:
        console.rule("1/2 ingest the Brightwave knowledge base (Ray Data → Milvus)")
        summary = run_ingest(config)
        console.print(f"{summary.documents} documents ({summary.new} new, {summary.changed} changed, "
                      f"{summary.unchanged} unchanged), {summary.chunks_written} chunks written, "
                      f"{summary.rejected} rejected, {summary.wall_s:.1f} s")
        console.rule("2/2 hybrid search (dense + BM25, fused with RRF)")
        encoder = TextEncoder(config.embedding)
        store = VectorStore(config.milvus)
        hits = store.search(encoder.encode(DEMO_QUESTIONS), DEMO_QUESTIONS, config.search, k=3)
        for question, found in zip(DEMO_QUESTIONS, hits):
            table = Table(title=question, title_justify="left")
            for col in ("score", "document", "text"):
                table.add_column(col, overflow="fold")
            for hit in found:
                table.add_row(f"{hit.score:.4f}", hit.doc_id, " ".join(hit.text.split())[:140])
            console.print(table)
        store.close()
        console.print("next: ragtune search \"your question\" --collection quickstart --mode hybrid")
    finally:
        if not server_was_running and config.milvus.uri is None:
            stop_local_server()  # leave the machine as we found it; the data stays
