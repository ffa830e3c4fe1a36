"""The local Milvus: a milvus-lite gRPC server on 127.0.0.1 that ragtune starts and reuses.

An embedded milvus-lite ``.db`` can be opened by one process only, and ingest, serve and Ray
workers are different processes; so locally every process talks to one milvus-lite *server*
whose pid, port and data directory are recorded in ``$RAGTUNE_HOME/milvus/server.json``.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from ragtune.config import MilvusConfig, ragtune_home

logger = logging.getLogger(__name__)

_START_TIMEOUT_S = 60.0
_BUSY_TIMEOUT_S = 60.0


class LocalMilvusError(RuntimeError):
    """The local milvus-lite server cannot be started or reached."""


def connect_uri(cfg: MilvusConfig) -> tuple[str, str]:
    """Return ``(uri, token)``: the configured Milvus, ``$MILVUS_URI``, or the local server.

    Raises:
        LocalMilvusError: no Milvus is configured and this process is part of a Ray cluster of more
            than one node, where a local server would give each node a knowledge base of its own.
    """
    uri = cfg.uri or os.environ.get("MILVUS_URI")
    token = cfg.token or os.environ.get("MILVUS_TOKEN", "")
    if uri:
        return uri, token
    _refuse_on_a_cluster()
    return ensure_local_server(cfg.local_port), ""


def _refuse_on_a_cluster() -> None:
    """The local milvus-lite server is one node's: on a cluster of several nodes, Ray Data actors and
    Serve replicas elsewhere would each start their own, empty one. A command on a cluster
    (``$RAY_ADDRESS``, as ``ray job submit`` sets) joins it to count the nodes before any work."""
    import ray

    if not ray.is_initialized():
        if not os.environ.get("RAY_ADDRESS"):
            return  # a local command: its Ray cluster (if any) is this machine's
        from ragtune.runtime import init_ray

        init_ray()
    from ragtune.runtime import alive_nodes

    try:
        nodes = len(alive_nodes())
    except RuntimeError as exc:
        raise LocalMilvusError(f"{exc}; the local milvus-lite server is refused on a cluster of several nodes, "
                               "and this one could not be counted: set MILVUS_URI") from None
    if nodes > 1:
        raise LocalMilvusError(
            f"this Ray cluster has {nodes} nodes, and a local milvus-lite server would serve one of them: "
            "set MILVUS_URI (and MILVUS_TOKEN) on every node, or milvus.uri in the config, to the cluster's "
            "Milvus service (k8s/milvus deploys one)")


def _state_file() -> Path:
    return ragtune_home() / "milvus" / "server.json"


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"  # a zombie has exited already


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _healthy(uri: str) -> bool:
    from pymilvus import MilvusClient

    try:
        client = MilvusClient(uri=uri, timeout=5)
        client.list_collections(timeout=5)
        client.close()
        return True
    except Exception:
        return False


def ensure_local_server(port: int) -> str:
    """Reuse the recorded milvus-lite server when it is ours and healthy, else start one.

    Raises:
        LocalMilvusError: the port is taken by another program, or the server does not start.
    """
    data_dir = ragtune_home() / "milvus" / "data"
    uri = f"http://127.0.0.1:{port}"
    state = _running_server()
    if state and state["port"] == port and state["data_dir"] == str(data_dir):
        # A busy server (indexing after a large write) can take a while to answer.
        deadline = time.monotonic() + _BUSY_TIMEOUT_S
        while time.monotonic() < deadline:
            if _healthy(uri):
                return uri
            time.sleep(1)
        raise LocalMilvusError(
            f"the local milvus-lite server (pid {state['pid']}, port {port}) has not answered for "
            f"{_BUSY_TIMEOUT_S:.0f} s; "
            f"stop it with `ragtune milvus stop` (or kill {state['pid']}) and retry"
        )
    if _port_open(port):
        raise LocalMilvusError(
            f"port {port} on 127.0.0.1 is in use by another program (not ragtune's milvus-lite for "
            f"{data_dir}); set milvus.local_port to a free port, or MILVUS_URI to use that Milvus"
        )
    return _start(port, data_dir, uri)


def _running_server() -> dict | None:
    """The recorded server's state (pid, port, data_dir) if that process is a live milvus-lite."""
    try:
        state = json.loads(_state_file().read_text())
    except (OSError, ValueError):
        return None
    return state if _alive(state["pid"]) and "milvus_lite" in _cmdline(state["pid"]) else None


def _default_sigint() -> None:
    """In the child before exec: SIGINT must stop the server gracefully even when the starting
    process runs with SIGINT ignored (as background jobs of a shell do)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(port: int, data_dir: Path, uri: str) -> str:
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir.parent / "server.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "milvus_lite", "server", "--host", "127.0.0.1",
             "--port", str(port), "--data-dir", str(data_dir)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,  # outlives the command that started it; reused by the next
            preexec_fn=_default_sigint,
        )
    deadline = time.monotonic() + _START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace")[-2000:]
            raise LocalMilvusError(f"milvus-lite server exited with code {proc.returncode}; log {log_path}:\n{tail}")
        if _port_open(port) and _healthy(uri):
            _state_file().write_text(json.dumps({"pid": proc.pid, "port": port, "data_dir": str(data_dir)}))
            logger.info("started the local milvus-lite server at %s (data in %s); later commands reuse it, "
                        "`ragtune milvus stop` stops it", uri, data_dir, extra={"notice": True})
            return uri
        time.sleep(0.2)
    proc.kill()
    raise LocalMilvusError(f"milvus-lite server did not become healthy in {_START_TIMEOUT_S:.0f}s; log: {log_path}")


def local_server_running(port: int) -> bool:
    """Whether ragtune's recorded milvus-lite server is alive on ``port``."""
    state = _running_server()
    return bool(state) and state["port"] == port


def stop_local_server(timeout: float = 30.0) -> bool:
    """Stop the recorded local server (if running). Returns whether one was stopped."""
    state = _running_server()
    _state_file().unlink(missing_ok=True)
    if not state:
        return False
    # SIGINT is milvus-lite's graceful stop (drains requests, closes the database cleanly);
    # SIGTERM would end it mid-write and can leave a truncated segment file behind.
    os.kill(state["pid"], signal.SIGINT)
    deadline = time.monotonic() + timeout
    # A multi-threaded process shows as a zombie while its other threads still hold the socket:
    # wait for the port to close too, so a server started right after can bind it.
    while (_alive(state["pid"]) or _port_open(state["port"])) and time.monotonic() < deadline:
        _reap(state["pid"])
        time.sleep(0.1)
    if _alive(state["pid"]):
        os.kill(state["pid"], signal.SIGKILL)
    _reap(state["pid"])
    return True


def _reap(pid: int) -> None:
    """Collect the exit status when the server is this process's child (no zombie left)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
