"""``benchmarks/gpu/run.sh --tiny``: the one-call GPU measurement runs end to end on the CPU.

No GPU is lent to the test machines, so the GPU script is exercised with tiny shapes here (plain,
DeepSpeed ZeRO-3 one rank, LoRA via peft): every row measures, the SW time appears only in OPT-OUT
rows, and the markdown table and JSON are written.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_gpu_benchmark_runs_tiny_on_cpu(tmp_path):
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "OUT": str(tmp_path / "out"),
        "DS_ACCELERATOR": "cpu",
        "OMP_NUM_THREADS": "1",
    }
    subprocess.run(
        [str(REPO / "benchmarks/gpu/run.sh"), "--tiny"],
        check=True,
        env=env,
        cwd=tmp_path,
        timeout=600,
    )
    rows = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [(r["engine"], r["method"]) for r in rows] == [
        (engine, method) for engine in ("plain", "zero3", "lora") for method in ("npo_rt", "optout")
    ]
    for r in rows:
        assert r["step_s"] > 0 and r["peak_gib"] > 0, r
        if r["method"] == "optout":
            assert 0 < r["sw_s"] < r["step_s"] and 0 < r["sw_share"] < 1, r
        else:
            assert r["sw_s"] == 0.0, r
    table = (tmp_path / "out" / "results.md").read_text()
    assert "| tiny | " in table and "| zero3 | optout |" in table
