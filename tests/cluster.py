"""A Ray cluster on one machine whose worker nodes share only what a real cluster's nodes share.

The head is a ``ray start --head`` process in the test's own filesystem view (it is the driver's
node: ``ray job submit`` runs entrypoints there). Every worker node is a ``ray start`` in its own
mount namespace (``unshare --mount``) in which the driver's ``$RAGTUNE_HOME``, the model caches
(Hugging Face, DeepSpeed's extensions), pytest's temp root and the head's Ray temp dir are replaced
by that node's own empty directories, and ``TMPDIR`` and Ray's temp dir are its own. Shared, as on
a real cluster: the installed environment and the checkout (the image), the job's ``working_dir``
(through Ray), and whatever the test reaches by URI (the moto S3 endpoint, a Milvus by
``MILVUS_URI``). Ray's token authentication is on, with one token handed to every node and client.

Losing a node is killing its process group; a replacement joins the same way. Each process is
stopped by its own handle (never ``ray stop``). Used by tests/integration/test_isolated_nodes.py
and the ``cluster`` tier; benchmarks can import it too.
"""

from __future__ import annotations

import getpass
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import RAY, REPO, free_port

_NODE_PORTS = ("--node-manager-port", "--object-manager-port", "--metrics-export-port",
               "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port", "--runtime-env-agent-port")


def _token() -> str:
    """The cluster's auth token: the user's (``ray get-auth-token --generate`` writes it once)."""
    path = Path.home() / ".ray" / "auth_token"
    if not path.exists():
        subprocess.run([RAY, "get-auth-token", "--generate"], env={**os.environ, "RAY_AUTH_MODE": "token"},
                       check=True, capture_output=True)
    return path.read_text().strip()


def hidden_from_nodes() -> list[Path]:
    """What this process has that another node would not: its state, caches and temp dirs."""
    candidates = [os.environ.get("RAGTUNE_HOME", Path.home() / ".ragtune"),
                  os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"),
                  os.environ.get("TORCH_EXTENSIONS_DIR", Path.home() / ".cache" / "torch_extensions"),
                  Path(tempfile.gettempdir()) / f"pytest-of-{getpass.getuser()}"]
    return [Path(p).expanduser().resolve() for p in candidates if Path(p).expanduser().is_dir()]


@dataclass
class Node:
    name: str
    proc: subprocess.Popen
    root: Path  # this node's own directories: home/ (its $RAGTUNE_HOME), tmp/, ray/, and one per hidden path
    log: Path

    def own(self, hidden: Path) -> Path:
        """The directory this node sees at ``hidden`` (the driver's path of the same name)."""
        return self.root / "hidden" / hidden.as_posix().strip("/").replace("/", "_")

    def own_home(self) -> Path:
        """This node's $RAGTUNE_HOME (the driver's path, its own contents)."""
        return self.own(Path(os.environ.get("RAGTUNE_HOME", Path.home() / ".ragtune")).expanduser().resolve())


class HeadNotReady(RuntimeError):
    """The simulated head's job API did not answer in time (the message has its logs)."""


@dataclass
class SimulatedCluster:
    root: Path  # short: Ray's socket paths must stay under 107 bytes
    env: dict[str, str] = field(default_factory=dict)
    nodes: dict[str, Node] = field(default_factory=dict)
    head: subprocess.Popen | None = None
    gcs: str = ""
    dashboard: str = ""

    @classmethod
    def start(cls, head_cpus: float = 1, head_resources: dict | None = None) -> "SimulatedCluster":
        """A head whose job API answers. A head whose job agent never came up is started once more, on
        new ports (once in a fresh-clone run a head's agent stayed down for 180 s; each port is picked
        free but bound later, so another process can take it in between); a second failure raises."""
        try:
            return cls._start(head_cpus, head_resources)
        except HeadNotReady as first:
            print(f"the simulated head did not accept jobs; starting another once: {first}"[:4000], file=sys.stderr)
            return cls._start(head_cpus, head_resources)

    @classmethod
    def _start(cls, head_cpus: float, head_resources: dict | None) -> "SimulatedCluster":
        root = Path(tempfile.mkdtemp(prefix="rt-sim-", dir="/tmp"))
        env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": _token(),
               "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
        env.pop("RAY_ADDRESS", None)
        cluster = cls(root, env)
        gcs, dashboard = free_port(), free_port()
        (root / "head").mkdir()
        log = root / "head.log"
        with open(log, "wb") as out:
            cluster.head = subprocess.Popen(
                [RAY, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs}",
                 f"--num-cpus={head_cpus}", f"--resources={json.dumps(head_resources or {})}",
                 *(f"{flag}={free_port()}" for flag in _NODE_PORTS),
                 "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
                 f"--temp-dir={root / 'head'}", "--disable-usage-stats"],
                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=REPO)
        cluster.gcs, cluster.dashboard = f"127.0.0.1:{gcs}", f"http://127.0.0.1:{dashboard}"
        try:
            cluster._wait_for_jobs(log)
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def _wait_for_jobs(self, log: Path, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        probe = [RAY, "job", "submit", "--address", self.dashboard, "--", "python", "-c", "pass"]
        while (tried := subprocess.run(probe, env=self.env, capture_output=True, text=True)).returncode:  # until the job agent is up
            if self.head.poll() is not None or time.monotonic() > deadline:
                agent = sorted(self.root.glob("head/session_*/logs/dashboard_agent.log"))
                raise HeadNotReady(f"{log}:\n{log.read_text()[-1500:]}\nthe probe said: {tried.stderr[-1500:]}"
                                   + (f"\n{agent[-1]}:\n{agent[-1].read_text()[-1500:]}" if agent else ""))
            time.sleep(2)

    def add_node(self, name: str, num_cpus: float = 2, resources: dict | None = None, timeout: float = 120) -> Node:
        """A worker node in its own mount namespace; returns once the head sees it alive."""
        node_root = self.root / name
        for sub in ("home", "tmp", "ray"):
            (node_root / sub).mkdir(parents=True, exist_ok=True)
        node = Node(name, None, node_root, self.root / f"{name}.log")  # type: ignore[arg-type]
        hidden = [*hidden_from_nodes(), self.root / "head"]
        mounts = []
        for path in hidden:
            own = node.own(path)
            own.mkdir(parents=True, exist_ok=True)
            mounts.append(f"mount --bind {own} {path}")
        ray_start = [RAY, "start", "--block", f"--address={self.gcs}", "--node-ip-address=127.0.0.1",
                     f"--num-cpus={num_cpus}", f"--resources={json.dumps(resources or {})}",
                     *(f"{flag}={free_port()}" for flag in _NODE_PORTS),
                     f"--temp-dir={node_root / 'ray'}", "--disable-usage-stats"]
        script = " && ".join([*mounts, "exec " + " ".join(f"'{a}'" for a in ray_start)])
        before = self.alive_nodes()
        with open(node.log, "wb") as out:
            node.proc = subprocess.Popen(
                ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                env={**self.env, "TMPDIR": str(node_root / "tmp")}, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, cwd=REPO)
        self.nodes[name] = node
        deadline = time.monotonic() + timeout
        while self.alive_nodes() <= before:
            if node.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"node {name} did not join; {node.log}:\n{node.log.read_text()[-3000:]}")
            time.sleep(1)
        return node

    def alive_nodes(self) -> int:
        out = subprocess.run([RAY, "list", "nodes", "--address", self.dashboard, "--format", "json",
                              "--filter", "state=ALIVE"], env=self.env, capture_output=True, text=True)
        return len(json.loads(out.stdout)) if out.returncode == 0 and out.stdout.strip() else 0

    def kill_node(self, name: str) -> None:
        """Lose a node: its whole process group (raylet, workers) dies at once."""
        node = self.nodes.pop(name)
        _kill_group(node.proc)

    def submit(self, *entrypoint: str, env_vars: dict | None = None, timeout: float = 900,
               flags: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
        """``ray job submit`` with the checkout as working_dir, as a user runs it."""
        runtime_env = {"env_vars": {"HF_HUB_OFFLINE": "1", **(env_vars or {})}}
        return subprocess.run(
            [RAY, "job", "submit", "--address", self.dashboard, "--working-dir", str(REPO), *flags,
             "--runtime-env-json", json.dumps(runtime_env), "--", *entrypoint],
            env=self.env, capture_output=True, text=True, timeout=timeout, cwd=REPO)

    def stop(self) -> None:
        for node in list(self.nodes.values()):
            _kill_group(node.proc)
        self.nodes.clear()
        if self.head is not None:
            _kill_group(self.head)
        shutil.rmtree(self.root, ignore_errors=True)


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the process group (``ray start --block`` takes ~30 s to act on SIGTERM); all test-only."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)
