#!/usr/bin/env bash
# One call, one GPU machine, no network, no Ray: OPT-OUT vs NPO+RT step time and peak memory on a
# random ~1B Llama (bf16; plain and DeepSpeed ZeRO-3 one rank), the SW share, and OPT-OUT + LoRA
# (r = 16) on an 8B-shaped Llama. Writes $OUT/results.md and $OUT/results.json (OUT defaults to
# ./gpu-results). Needs python with torch + transformers; wheels placed in benchmarks/gpu/wheels/
# (e.g. deepspeed, peft, transformers, tokenizers, safetensors, accelerate) are installed offline
# into a scratch directory first (with a bitsandbytes wheel, compare_bitsandbytes.py writes
# $OUT/bitsandbytes.md first: otu's quantizer against its CUDA kernels). Extra arguments go to bench_gpu.py (e.g. --tiny for a CPU check).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="${PYTHON:-python3}"
if compgen -G "$here/wheels/*.whl" > /dev/null; then
    site="$(mktemp -d)"
    "$python" -m pip install --quiet --no-index --no-deps --target "$site" "$here"/wheels/*.whl
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$here/../../platform${PYTHONPATH:+:$PYTHONPATH}"
if "$python" -c "import bitsandbytes" 2> /dev/null; then  # otu's quantizer vs bitsandbytes' kernels here
    timeout 120 "$python" "$here/compare_bitsandbytes.py" --out "${OUT:-gpu-results}/bitsandbytes.md" \
        || echo "compare_bitsandbytes.py failed (exit $?); the benchmark goes on"
fi
exec timeout "${TIMEOUT:-470}" "$python" "$here/bench_gpu.py" --out "${OUT:-gpu-results}" "$@"
