"""`jobs/<job>.py CONFIG --check --overlay NAME` and `ragtune k8s check`: every shipped RayJob and
RayService passes, run as its pod would (the shared volume holding the team's documents and Q/A
files, in a private mount namespace); each inconsistency the overlays once had fails, named."""

import subprocess
import sys

import pytest
import yaml

from ragtune.preflight import check_job_config, check_serve_args
from tests.conftest import QA, REPO

K8S = REPO / "k8s" / "overlays"
RAGTUNE = str(REPO / ".venv" / "bin" / "ragtune") if (REPO / ".venv" / "bin" / "ragtune").exists() else "ragtune"


def in_pod(*command: str) -> subprocess.CompletedProcess:
    """``command`` with /mnt/shared as a gpu pod sees it: the documents and Q/A files the gpu overlay's
    jobs name (a tmpfs over /mnt in this command's own mount namespace; the machine's /mnt is untouched)."""
    volume = ("mount -t tmpfs tmpfs /mnt && mkdir -p /mnt/shared/ragtune/docs /mnt/shared/ragtune/qa"
              f" && cp -r {REPO}/platform/ragtune/quickstart/kb/. /mnt/shared/ragtune/docs/ && cp {QA} /mnt/shared/ragtune/qa/")
    script = f"{volume} && exec " + " ".join(f"'{c}'" for c in command)
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                          capture_output=True, text=True, cwd=REPO, timeout=120)


def rayjobs():
    for overlay in ("dev", "gpu"):
        for manifest in sorted((K8S / overlay / "jobs").glob("*/rayjob.yaml")):
            (job,) = [d for d in yaml.safe_load_all(manifest.read_text()) if d["kind"] == "RayJob"]
            yield pytest.param(overlay, job["spec"]["entrypoint"].split(), id=f"{overlay}-{manifest.parent.name}")


@pytest.mark.parametrize("overlay, entrypoint", list(rayjobs()))
def test_every_shipped_rayjob_passes_its_check(overlay, entrypoint):
    python, script, *args = entrypoint
    assert python == "python"
    result = in_pod(sys.executable, script, *args, "--check", "--overlay", overlay)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"ok as the {script.split('/')[-1][:-3]} job of overlay {overlay}" in result.stdout


def test_every_rayservice_passes_and_k8s_check_lists_each_manifest():
    result = in_pod(RAGTUNE, "k8s", "check")
    assert result.returncode == 0, result.stdout + result.stderr
    for overlay in ("dev", "gpu"):
        assert f"{overlay} · RayService application ragtune" in result.stdout
        assert result.stdout.count(f"{overlay} · RayJob") == 4
    assert "problem" not in result.stdout


def test_a_broken_job_exits_2_listing_every_problem():
    result = subprocess.run([sys.executable, "jobs/evaluate.py", "jobs/configs/compare_quickstart.yaml", "--check",
                             "--overlay", "dev", "--set", "compare.adapter=null", "--set", "milvus.collection=docs"],
                            capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 2
    assert "compare.adapter: unset, but the ft and hybrid arms need an adapter: overlay dev's train job exports" in result.stderr
    assert "compare reads collection 'docs', but overlay dev's ingest job writes 'quickstart'" in result.stderr
    assert "2 problem(s)" in result.stdout


@pytest.mark.parametrize("job, config, overrides, overlay, named", [
    ("ingest", "ingest_quickstart.yaml", ["ingest.sources=[/nonexistent/docs]"], "dev",
     "ingest.sources: source '/nonexistent/docs' does not exist"),
    ("prepare", "train_gpu_multinode_zero3.yaml", ["prepare.inputs=[]"], "gpu",
     "prepare.inputs: no inputs: set prepare.inputs"),
    ("train", "train_cpu.yaml", ["prepare.inputs=[]", "prepare.output_dir=/nonexistent/data"], "dev",
     "prepare.output_dir: no prepared dataset in /nonexistent/data, and no prepare.inputs to prepare one from"),
    ("evaluate", "compare_gpu.yaml", ["milvus.collection=quickstart"], "gpu",
     "compare reads collection 'quickstart', but overlay gpu's ingest job writes 'ragtune'"),
    ("evaluate", "compare_quickstart.yaml", ["compare.adapter=/nonexistent/adapter"], "dev",
     "compare.adapter: /nonexistent/adapter holds no adapter (adapter_config.json), and overlay dev's train job exports"),
    ("evaluate", "compare_quickstart.yaml", ["generator.model=Qwen/Qwen2.5-7B-Instruct"], None,
     "generator.model: hub model 'Qwen/Qwen2.5-7B-Instruct' needs a pinned revision"),
    ("train", "train_cpu.yaml", ["train.lora.r=0"], None, "train.lora.r"),
], ids=["ingest-sources", "gpu-prepare-no-inputs", "train-no-data", "evaluate-collection", "evaluate-adapter",
        "unpinned-model", "invalid-config"])
def test_each_inconsistency_is_named(job, config, overrides, overlay, named):
    problems = check_job_config(job, REPO / "jobs" / "configs" / config, overrides, overlay)
    assert any(named in p for p in problems), problems


def _serve_args(source: str) -> dict:
    return yaml.safe_load((REPO / "serve_configs" / source).read_text())["applications"][0]["args"]


@pytest.mark.parametrize("source, overlay, change, named", [
    ("local.yaml", "dev", {}, "the serving graph reads collection 'ragtune', but overlay dev's ingest job writes 'quickstart'"),
    ("gpu.yaml", "gpu", {"adapters": "s3://ragtune-adapters/qwen2.5-7b"},
     "serve.adapters: the serving graph reads adapters from s3://ragtune-adapters/qwen2.5-7b, but overlay gpu's "
     "train job exports /mnt/shared/ragtune/adapters/qwen7b-lora-zero3"),
], ids=["dev-collection", "gpu-adapters-s3"])
def test_a_serving_graph_that_does_not_fit_its_overlay_is_named(source, overlay, change, named):
    """The files as they were before the overlays were fixed: local.yaml served collection ragtune
    (the dev RayService now sets quickstart), gpu.yaml read adapters from s3:// while training
    exported them to the shared volume."""
    args = _serve_args(source)
    args.setdefault("serve", {}).update(change)
    assert any(named in p for p in check_serve_args(args, overlay)), check_serve_args(args, overlay)
