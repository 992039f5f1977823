#!/usr/bin/env bash
# One call, one GPU machine, no network, no Ray: OPT-OUT vs NPO+RT step time and peak memory on a
# random ~1B Llama (bf16; plain and DeepSpeed ZeRO-3 one rank), the SW share, and OPT-OUT + LoRA
# (r = 16) on an 8B-shaped Llama. Writes $OUT/results.md and $OUT/results.json (OUT defaults to
# ./gpu-results). Needs python with torch + transformers; wheels placed in benchmarks/gpu/wheels/
# (e.g. deepspeed, peft, transformers, tokenizers, safetensors, accelerate) are installed offline
# into a scratch directory first. Extra arguments go to bench_gpu.py (e.g. --tiny for a CPU check).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="${PYTHON:-python3}"
if compgen -G "$here/wheels/*.whl" > /dev/null; then
    site="$(mktemp -d)"
    "$python" -m pip install --quiet --no-index --no-deps --target "$site" "$here"/wheels/*.whl
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$here/../../platform${PYTHONPATH:+:$PYTHONPATH}"
exec timeout "${TIMEOUT:-470}" "$python" "$here/bench_gpu.py" --out "${OUT:-gpu-results}" "$@"
