#!/usr/bin/env bash
# Packs benchmarks/gpu_check.py for a GPU machine that has CUDA, torch, transformers, peft and
# accelerate but no network and no Ray: the ragtune package source, and wheels of DeepSpeed (built
# here from its sdist: pure Python, its ops compile on first use) and of ragtune's light
# dependencies, for CPython 3.10-3.13 — the versions used here, about 20 MB in all.
#   benchmarks/gpu_bundle.sh /tmp/gpu-bundle          (from the repository root, after `make test`)
#   then on the GPU machine:  sh /tmp/gpu-bundle/run.sh      (results in $OUT, or ./results)
set -euo pipefail
out=${1:?usage: benchmarks/gpu_bundle.sh DIR}
py=.venv/bin/python
pin() { "$py" -c "import importlib.metadata as m; print('$1==' + m.version('$1'))"; }
rm -rf "$out" && mkdir -p "$out/wheels" "$out/benchmarks" "$out/platform"
"$py" -m pip wheel -q --no-deps --no-build-isolation -w "$out/wheels" "$(pin deepspeed)"
pure=(hjson py-cpuinfo einops pydantic annotated-types typing-inspection typing-extensions)
binary=(ninja msgpack pydantic-core pyyaml psutil)
"$py" -m pip download -q --no-deps --only-binary=:all: -d "$out/wheels" $(for p in "${pure[@]}"; do pin "$p"; done)
for version in 3.10 3.11 3.12 3.13; do
  "$py" -m pip download -q --no-deps --only-binary=:all: -d "$out/wheels" --python-version "$version" \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
    $(for p in "${binary[@]}"; do pin "$p"; done)
done
cp -r platform/ragtune "$out/platform/" && rm -rf "$out/platform/ragtune/quickstart/kb"*
find "$out/platform" -name __pycache__ -prune -exec rm -rf {} +
cp benchmarks/gpu_check.py "$out/benchmarks/"
cat > "$out/run.sh" <<'RUN'
#!/bin/sh
# The GPU check without network: install the bundled wheels beside the machine's torch/transformers/peft.
set -e
cd "$(dirname "$0")"
python -m pip install -q --no-index --no-deps --find-links wheels --target deps \
  deepspeed hjson py-cpuinfo einops pydantic annotated-types typing-inspection typing-extensions \
  ninja msgpack pydantic-core pyyaml psutil
export PYTHONPATH="$PWD/deps" TORCH_EXTENSIONS_DIR="$PWD/torch_extensions"
exec python benchmarks/gpu_check.py --out "${OUT:-results}" "$@"
RUN
du -sh "$out"
