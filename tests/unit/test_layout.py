"""The layout rules of DESIGN.md: platform/ is a source root, core is pure, jobs are thin."""

import ast
import subprocess
import sys

from tests.conftest import REPO

FORBIDDEN_IN_CORE = {"ray", "torch", "pymilvus", "transformers", "peft", "deepspeed", "sentence_transformers"}


def test_platform_is_a_source_root_not_a_package():
    assert not (REPO / "platform" / "__init__.py").exists()
    assert sorted(p.name for p in (REPO / "platform").iterdir() if not p.name.endswith(".egg-info")) == ["ragtune"]


def test_stdlib_platform_still_importable_next_to_ragtune():
    code = "import platform, ragtune; print(platform.python_version(), ragtune.__version__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.split()[0] == sys.version.split()[0]


def test_core_imports_no_heavy_frameworks():
    for path in (REPO / "platform" / "ragtune" / "core").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                assert name.split(".")[0] not in FORBIDDEN_IN_CORE, f"{path} imports {name}"


def test_jobs_are_thin():
    for path in (REPO / "jobs").glob("*.py"):
        code = [l for l in path.read_text().splitlines() if l.strip() and not l.strip().startswith("#")]
        assert len(code) <= 40, f"{path} has {len(code)} code lines"
