"""otu's weight quantizer (``eval.robustness`` quantize: :func:`otu.llm.attacks.quantize_rows` and
``quantize_blocks``) against bitsandbytes' own quantize → dequantize round trip, on the device
bitsandbytes runs on here (CUDA when there is one, else its CPU backend): for every code (int8 rows,
NF4 and FP4 blocks of 64 and 128), every dtype (fp32, bf16, fp16) and a few weight shapes, how many
weights differ and by how much. Needs ``bitsandbytes`` importable (a wheel in benchmarks/gpu/wheels/
on the GPU machine, see run.sh).

    python benchmarks/gpu/compare_bitsandbytes.py [--out results.md]
    python benchmarks/gpu/compare_bitsandbytes.py --write-reference tests/data/bnb_reference.npz

``--write-reference`` saves seeded weights and bitsandbytes' dequantised weights (CPU) for
tests/test_quantizer_reference.py, which checks otu's quantizer against them without bitsandbytes.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from otu.llm.attacks import quantize_blocks, quantize_rows

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
CODES = ("nf4", "fp4")
BLOCKS = (64, 128)
SHAPES = ((32, 128), (5, 77), (512, 1024))
"""Rows × columns: whole blocks; a last block shorter than the others (bitsandbytes scales it on its
own); a larger matrix. The reference file keeps the first two."""


def weights(shape: tuple[int, int], seed: int) -> torch.Tensor:
    """Gaussian weights with a per-row scale (rows of a trained layer differ in magnitude)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g) * (0.5 + 2.5 * torch.rand(shape[0], 1, generator=g))


def bnb_round_trip(w: torch.Tensor, code: str, block: int | None) -> torch.Tensor:
    """bitsandbytes' dequantised weights: ``int8_vectorwise_quant`` / ``_dequant`` (block None) or
    ``quantize_4bit`` / ``dequantize_4bit``, in ``w``'s dtype."""
    import bitsandbytes.functional as F

    if block is None:
        q, stats, _ = F.int8_vectorwise_quant(w)
        return F.int8_vectorwise_dequant(q, stats).to(w.dtype)
    q, state = F.quantize_4bit(w, blocksize=block, quant_type=code)
    return F.dequantize_4bit(q, state, quant_type=code)


def otu_round_trip(w: torch.Tensor, code: str, block: int | None) -> torch.Tensor:
    return quantize_rows(w) if block is None else quantize_blocks(w, block, code)


def cases() -> list[tuple[str, int | None]]:
    return [("int8", None), *((code, block) for code in CODES for block in BLOCKS)]


def compare(device: torch.device) -> list[str]:
    rows = ["| shape | dtype | code | block | weights | differ | max \\|Δ\\| |", "|---|---|---|---:|---:|---:|---:|"]
    for i, shape in enumerate(SHAPES):
        for dtype_name, dtype in DTYPES.items():
            w = weights(shape, i).to(device, dtype)
            for code, block in cases():
                ours, theirs = otu_round_trip(w, code, block).float(), bnb_round_trip(w, code, block).float()
                differ = int((ours != theirs).sum())
                delta = float((ours - theirs).abs().max())
                rows.append(
                    f"| {shape[0]}×{shape[1]} | {dtype_name} | {code} | {block or 'row'} | {w.numel()} | "
                    f"{differ} | {delta:.3g} |"
                )
    return rows


def write_reference(path: Path) -> None:
    """Seeded weights and bitsandbytes' CPU round trip of each (shape, dtype, code, block), as float32."""
    arrays: dict[str, np.ndarray] = {}
    for i, shape in enumerate(SHAPES[:2]):
        for dtype_name, dtype in DTYPES.items():
            w = weights(shape, i).to(dtype)
            key = f"{shape[0]}x{shape[1]}/{dtype_name}"
            arrays[f"{key}/weights"] = w.float().numpy()
            for code, block in cases():
                arrays[f"{key}/{code}/{block or 'row'}"] = bnb_round_trip(w, code, block).float().numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="also write the table here (Markdown)")
    parser.add_argument("--write-reference", type=Path, default=None, help="write the test's reference file")
    args = parser.parse_args(argv)
    import bitsandbytes

    if args.write_reference:
        write_reference(args.write_reference)
        print(f"wrote {args.write_reference} (bitsandbytes {bitsandbytes.__version__}, CPU)")
        return 0
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    lines = [f"otu's quantizer vs bitsandbytes {bitsandbytes.__version__} on {name} (torch {torch.__version__})", ""]
    lines += compare(device)
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
