"""The dev overlay on a live cluster (marker k8s; `pytest -m k8s`): the KubeRay operator installed,
Milvus reachable at ragtune-config's milvus-uri, the image of k8s/docker/Dockerfile.cpu pullable as
k8s/overlays/dev/image names it. Applies the overlay into the namespace ragtune, runs the ingest
RayJob, asks the RayService through a port-forward, and deletes what it applied. Skipped when
kubectl has no cluster."""

import base64
import json
import secrets
import shutil
import subprocess
import time
import urllib.request

import pytest

from tests.conftest import REPO, free_port

pytestmark = pytest.mark.k8s
NS = "ragtune"


def kubectl(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    done = subprocess.run(["kubectl", *args], capture_output=True, text=True, timeout=timeout)
    if check and done.returncode:
        raise AssertionError(f"kubectl {' '.join(args)}: {done.stderr}")
    return done


@pytest.fixture(scope="module")
def cluster():
    if not shutil.which("kubectl") or kubectl("cluster-info", check=False, timeout=30).returncode:
        pytest.skip("no Kubernetes cluster: kubectl is missing or has no reachable context")
    if kubectl("get", "crd", "rayservices.ray.io", check=False).returncode:
        pytest.skip("the KubeRay operator is not installed (README, Run on Kubernetes)")
    kubectl("create", "namespace", NS, check=False)
    for name, key in (("ragtune-ray-token", "auth_token"), ("ragtune-api-key", "api-key"), ("ragtune-admin-key", "admin-key")):
        if kubectl("get", "secret", name, "-n", NS, check=False).returncode:
            kubectl("create", "secret", "generic", name, "-n", NS, f"--from-literal={key}={secrets.token_urlsafe(24)}")
    kubectl("apply", "-k", str(REPO / "k8s/overlays/dev"))
    try:
        yield
    finally:
        kubectl("delete", "-k", str(REPO / "k8s/overlays/dev/jobs/ingest"), "--ignore-not-found", check=False)
        kubectl("delete", "-k", str(REPO / "k8s/overlays/dev"), "--ignore-not-found", check=False, timeout=600)


def test_ingest_job_then_a_rag_answer_from_the_rayservice(cluster):
    kubectl("apply", "-k", str(REPO / "k8s/overlays/dev/jobs/ingest"))
    kubectl("wait", "-n", NS, "--for=jsonpath={.status.jobStatus}=SUCCEEDED", "rayjob/ragtune-ingest",
            "--timeout=1800s", timeout=1900)
    kubectl("wait", "-n", NS, "--for=condition=Ready", "rayservice/ragtune", "--timeout=1200s", timeout=1300)
    key = base64.b64decode(json.loads(kubectl("get", "secret", "ragtune-api-key", "-n", NS, "-o", "json").stdout)
                           ["data"]["api-key"]).decode()
    port = free_port()
    forward = subprocess.Popen(["kubectl", "port-forward", "-n", NS, "svc/ragtune-serve-svc", f"{port}:8000"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(5)
        body = {"model": "smollm2-135m-instruct", "max_tokens": 24, "ragtune": {"mode": "rag"},
                "messages": [{"role": "user", "content": "How much do the Aria ANC headphones cost?"}]}
        request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"})
        with urllib.request.urlopen(request, timeout=300) as r:
            answer = json.load(r)
    finally:
        forward.terminate()
    assert answer["citations"][0]["doc_id"] == "products/aria-headphones.md"
