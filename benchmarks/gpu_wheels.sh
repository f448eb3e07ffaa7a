#!/usr/bin/env bash
# Wheels that benchmarks/gpu_check.py needs beyond a CUDA machine's torch image (which has torch,
# torchvision, transformers, peft, pandas, pyyaml, pillow, safetensors, numpy): the versions this
# project's venv runs, for CPython 3.12 on x86-64 Linux, into .whl/ (ignored by git).
#
#   bash benchmarks/gpu_wheels.sh            # here, with PyPI reachable
#   # there, before the check:
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
#   python3 benchmarks/gpu_check.py --profile "$OUT"
set -euo pipefail
cd "$(dirname "$0")/.."
VENV_PY=${VENV_PY:-.venv/bin/python}
version() { "$VENV_PY" -c "import importlib.metadata as m; print(m.version('$1'))"; }
rm -rf .whl && mkdir -p .whl
for name in pydantic pydantic-core pydantic-settings python-dotenv annotated-types typing-inspection \
            minio argon2-cffi argon2-cffi-bindings cffi pycparser pycryptodome; do
  python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_26_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    -d .whl "$name==$(version "$name")"
done
ls .whl
