#!/usr/bin/env bash
# The GPU check of issue 14, one prepared command for a lent GPU (an H200), random weights,
# nothing downloaded, under 8 minutes. Prints one markdown table:
#   1. CapFilt images/s, BLIP-large, bf16, K = 3, 20 new tokens, against a naive per-batch
#      Hugging Face pipeline at the same settings (targets: >= 2x naive, >= 225 images/s);
#   2. BLIP-2 (OPT-2.7B sizes) captioning images/s with Blip2ForConditionalGeneration.generate;
#   3. BLIP-base pre-training examples/s (bf16 autocast).
# The measurements are in bench/gpu_check.py (--check); its docstring says what each
# row times and how the naive pipeline is built.
#
#   bash bench/gpu_check.sh             # GPU; refuses in one line (exit 2) without CUDA
#   bash bench/gpu_check.sh --dry-run   # CPU, tiny configs, a few images: that it works
#
# Python: $PYTHON, else the repository's .venv, else python3.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dry_run=()
for arg in "$@"; do
    case "$arg" in
    --dry-run) dry_run=(--dry-run) ;;
    -h | --help)
        sed -n '2,14p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    *)
        echo "gpu_check.sh: unknown argument $arg (usage: bash bench/gpu_check.sh [--dry-run])" >&2
        exit 2
        ;;
    esac
done

python="${PYTHON:-}"
if [[ -z "$python" ]]; then
    if [[ -x "$root/.venv/bin/python" ]]; then
        python="$root/.venv/bin/python"
    else
        python="python3"
    fi
fi

cd "$root"
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
if [[ ${#dry_run[@]} -gt 0 ]]; then
    # Two threads: tiny models on a shared CPU run slower with more.
    export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
fi
exec "$python" bench/gpu_check.py --check "${dry_run[@]}"
