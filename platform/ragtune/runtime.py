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


def driver_local(path: str | Path) -> str:
    """A path for Ray Data to read or write: a local path is on the driver's node only (on a cluster
    no other node has it), so it becomes ``local://`` and Ray Data runs those tasks on this node; a
    storage URI (``s3://…``) is read and written from every node as it is."""
    text = str(path)
    return text if "://" in text else f"local://{Path(text).expanduser().resolve()}"


def on_driver_node() -> dict:
    """Ray Data arguments that keep an operator's tasks on the driver's node (work on files that only
    it has): the label selector of Ray's node-id label, as Ray Data does for ``local://`` reads."""
    import ray

    return {"label_selector": {"ray.io/node-id": ray.get_runtime_context().get_node_id()}}


def read_parquet(path: str | Path):
    """``ray.data.read_parquet`` of a prepared split, on the driver's node when the path is local.

    Ray 2.60's DataSourceV2 parquet reader lists the files in an operator that ignores ``local://``
    (it runs on any node, which has no such directory); the V1 reader pins listing and reading to
    this node, so local paths take it."""
    import ray.data

    uri = driver_local(path)
    if not uri.startswith("local://"):
        return ray.data.read_parquet(uri)
    context = ray.data.DataContext.get_current()
    v2, context.use_datasource_v2 = context.use_datasource_v2, False
    try:
        return ray.data.read_parquet(uri)  # the dataset keeps a copy of the context it was made with
    finally:
        context.use_datasource_v2 = v2
