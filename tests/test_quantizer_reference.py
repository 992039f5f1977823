"""otu's weight quantizer (``eval.robustness`` quantize) reproduces bitsandbytes' quantize → dequantize
round trip bit for bit: tests/data/bnb_reference.npz holds seeded weights and bitsandbytes 0.50.2's
dequantised weights on its CPU backend, written by
``benchmarks/gpu/compare_bitsandbytes.py --write-reference`` (bitsandbytes itself is not a dependency).

The references follow bitsandbytes' backends/default/ops.py: 4-bit ``quantize_4bit`` (scaled =
clamp(A · (1 / absmax), −1, 1) per block of ``blocksize``, the last shorter block divided by its own
absmax; code index = ``torch.bucketize`` against the sorted code's midpoints) and
``_dequantize_4bit_compute`` (code · absmax); 8-bit ``int8_vectorwise_quant`` (round(A · 127 / row
absmax)) and _ops.py ``int8_vectorwise_dequant`` (q · stats · 7.874015718698502e-3).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from otu.llm.attacks import CODES, quantize_blocks, quantize_rows

REFERENCE = Path(__file__).parent / "data" / "bnb_reference.npz"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def cases() -> list[tuple[str, str, str, str]]:
    with np.load(REFERENCE) as ref:
        keys = [k.split("/") for k in ref.files if not k.endswith("/weights")]
    return [(shape, dtype, code, block) for shape, dtype, code, block in keys]


@pytest.mark.parametrize(("shape", "dtype", "code", "block"), cases())
def test_quantizer_equals_bitsandbytes_round_trip(shape, dtype, code, block):
    with np.load(REFERENCE) as ref:
        w = torch.from_numpy(ref[f"{shape}/{dtype}/weights"]).to(DTYPES[dtype])
        expected = torch.from_numpy(ref[f"{shape}/{dtype}/{code}/{block}"])
    ours = quantize_rows(w) if block == "row" else quantize_blocks(w, int(block), code)
    assert ours.dtype == w.dtype
    assert torch.equal(ours.float(), expected)


def test_reference_covers_ties_the_nearest_value_rule_would_break_otherwise():
    """In bf16 some scaled weights lie on, or within float32 rounding of, a midpoint of FP4's code.
    bitsandbytes decides by comparing with the midpoints (bucketize: a tie goes to the lower value);
    rounding to the nearest value by argmin over |x − c| (otu's earlier quantizer) decided some of them
    the other way. The reference must hold such weights for the test above to pin the rule."""
    code = torch.tensor(CODES["fp4"]).sort().values
    with np.load(REFERENCE) as ref:
        w = torch.from_numpy(ref["32x128/bf16/weights"]).reshape(-1, 64)
        expected = torch.from_numpy(ref["32x128/bf16/fp4/64"]).reshape(-1, 64)
    absmax = w.abs().amax(dim=1, keepdim=True)
    nearest = code[((w * (1.0 / absmax)).unsqueeze(-1) - code).abs().argmin(-1)] * absmax
    assert (nearest.to(torch.bfloat16).float() != expected).any()
