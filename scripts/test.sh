#!/usr/bin/env bash
# The tests, on a fresh machine: a virtual environment with the test extras, then pytest.
# torch is the CPU build on purpose, from PyTorch's CPU index: PyPI's Linux wheels are multi-GB CUDA builds.
# Where that index is out of reach, the registries at hand give 2.13.0 (here, a CPU wheel beside them).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q --retries 1 torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu 2>/dev/null \
  || python -m pip install -q torch==2.13.0
python -m pip install -q -e ".[test]"
# The GPT-2 BPE files for tiktoken's offline cache, if the shared data sits beside the repo.
if [ -d ../shared/data/tiktoken ]; then export TIKTOKEN_CACHE_DIR="${TIKTOKEN_CACHE_DIR:-$(cd ../shared/data/tiktoken && pwd)}"; fi
python -m pytest "$@"
