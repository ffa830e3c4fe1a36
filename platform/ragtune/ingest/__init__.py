"""Ray Data ingestion: files → validated documents → chunks → embeddings → Milvus."""

from ragtune.ingest.pipeline import IngestSummary, run_ingest
from ragtune.ingest.sources import SourceError

__all__ = ["IngestSummary", "SourceError", "run_ingest"]
