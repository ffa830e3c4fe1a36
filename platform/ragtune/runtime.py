"""Connecting to Ray: the cluster named by $RAY_ADDRESS (set by `ray job submit`), else a
private local cluster bound to 127.0.0.1."""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

# Ray gives a new local node's GCS and raylet 30 s each to come up. Both take about a second, even on
# a 2-core machine with one core busy (ray.init 3-4 s in all); the start-ups that ran out of time were
# stuck, not slow — a longer wait was all loss, a second start came up at once.
_START_ATTEMPTS = 2


def init_ray() -> None:
    """Join ``$RAY_ADDRESS`` or start a local cluster on loopback; once per process.

    Raises:
        RuntimeError: a local cluster could not be started (after one retry).
    """
    import ray

    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(configure_logging=True, logging_level="WARNING")
        return
    for attempt in range(1, _START_ATTEMPTS + 1):
        try:
            ray.init(address="local", _node_ip_address="127.0.0.1", include_dashboard=False,
                     configure_logging=True, logging_level="WARNING")
            return
        except Exception as exc:  # noqa: BLE001 — Ray raises a bare Exception when its GCS or raylet
            # misses its 30 s start-up window: one retry
            ray.shutdown()
            if attempt == _START_ATTEMPTS:
                raise RuntimeError(f"could not start a local Ray cluster ({exc}); the machine may be "
                                   "overloaded — retry, or set RAY_ADDRESS to use a running cluster") from exc
            log.warning("starting a local Ray cluster failed (%s); retrying once", exc)


def alive_nodes(timeout_s: float = 20, tries: int = 3) -> list[dict[str, float]]:
    """The total resources of each live node of the cluster this process has joined, asked through
    the driver's GCS client with a time limit. ``ray.nodes()`` and ``ray.cluster_resources()`` wait on
    Ray's GCS state accessor without one, and in two fresh-clone test sessions (Ray 2.60) one of them
    never returned: everything behind it hung, past what pytest-timeout can interrupt.

    Raises:
        RuntimeError: the GCS did not answer in ``tries`` attempts.
    """
    import time

    import ray
    from ray.core.generated.gcs_pb2 import GcsNodeInfo

    client = ray._private.worker.global_worker.gcs_client
    failure: Exception | None = None
    for _ in range(tries):
        try:
            nodes = client.get_all_node_info(timeout=timeout_s, state_filter=GcsNodeInfo.GcsNodeState.ALIVE)
            return [dict(node.resources_total) for node in nodes.values()]
        except Exception as exc:  # noqa: BLE001 — the binding raises its own RPC errors (timeouts, unavailable)
            failure = exc
            time.sleep(1)
    raise RuntimeError(f"Ray's GCS did not list the cluster's nodes in {tries} tries ({failure}): check the "
                       "cluster (ray status)")


def cluster_resources() -> dict[str, float]:
    """``ray.cluster_resources()``, summed from ``alive_nodes`` (with its time limit)."""
    total: dict[str, float] = {}
    for node in alive_nodes():
        for name, amount in node.items():
            total[name] = total.get(name, 0.0) + amount
    return total


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity on Linux; every CPU where the OS has no
    affinity call, e.g. macOS)."""
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity else os.cpu_count() or 1


def is_storage_uri(path: str | Path) -> bool:
    """``s3://…`` and other storage URIs are read and written from every node as they are; a local
    path is on the driver's node only (on a cluster no other node has it)."""
    return "://" in str(path)


def on_driver_node() -> dict:
    """Ray Data arguments for an operator whose tasks read files that only the driver's node has:
    pinned there by Ray's node-id label, and reserving no CPU, since that node may have none to spare
    (an actor holds it) or none at all (a KubeRay head runs with ``num-cpus: 0``). The operator's own
    concurrency bounds the work."""
    import ray

    return {"label_selector": {"ray.io/node-id": ray.get_runtime_context().get_node_id()}, "num_cpus": 0}


def read_text(path: str | Path):
    """``ray.data.read_text`` (a row ``{"text": line}`` per non-blank line); a local file is read by
    the driver, which hands the rows to the object store."""
    import ray.data

    if is_storage_uri(path):
        return ray.data.read_text(str(path))
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return ray.data.from_items([{"text": line} for line in lines if line.strip()])


def read_binary_file(path: str | Path):
    """``ray.data.read_binary_files`` of one file (one row ``{"bytes": …}``); a local file is read by
    the driver."""
    import ray.data

    if is_storage_uri(path):
        return ray.data.read_binary_files(str(path))
    return ray.data.from_items([{"bytes": Path(path).read_bytes()}])


def read_parquet(path: str | Path):
    """A prepared split as a dataset, its rows in file order.

    A storage URI is read by Ray Data on any node. A local directory is read by the driver — files in
    name order, one block per row group — and its blocks go to the object store, so that no task needs
    a CPU on the driver's node and the order is the files' order."""
    import pyarrow.parquet as pq
    import ray
    import ray.data

    if is_storage_uri(path):
        return ray.data.read_parquet(str(path))
    files = sorted(Path(path).glob("*.parquet"))
    if not files:
        raise FileNotFoundError(f"no parquet files in {path}")
    blocks = []
    for file in files:
        parquet = pq.ParquetFile(file)
        blocks += [ray.put(parquet.read_row_group(i)) for i in range(parquet.num_row_groups)]
    return ray.data.from_arrow_refs(blocks)


def write_parquet(ds, path: str | Path) -> None:
    """``Dataset.write_parquet``; to a local directory the driver writes it (``0.parquet``), streaming
    the dataset's blocks in order, since that directory is on the driver's node only."""
    import pyarrow.parquet as pq

    if is_storage_uri(path):
        ds.write_parquet(str(path))
        return
    Path(path).mkdir(parents=True, exist_ok=True)
    writer = None
    try:
        for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            writer = writer or pq.ParquetWriter(Path(path) / "0.parquet", batch.schema)
            writer.write_table(batch)
    finally:
        if writer is not None:
            writer.close()
