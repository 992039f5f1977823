"""LLM family across ranks: DeepSpeed ZeRO-3 with 2 workers equals one process.

* the SW regulariser shared over 2 gloo ranks (each computes its own tensors from the fp32 masters,
  ZeRO-1 and ZeRO-3) gives the single-process closed-form value and gradients, and 0 at θ₀;
* OPT-OUT's first steps under Ray Train (2 workers, ZeRO-3, ``unlearn_distributed``) report the same
  losses as the single-process loop, end in the same weights, and the checkpoint every rank wrote
  loads and evaluates.

Slow (``pytest -m slow tests/test_llm_distributed.py``, a few minutes): ``torchrun -m otu.runtime.launch``
with 2 ranks, and ``otu run`` of the shipped ``sweeps/experiments/optout_tiny.yaml`` (2 Ray Train
workers, ZeRO-3, CPU), which must forget.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import yaml
from test_llm import REPO, tiny_spec, unlearn

from otu.family import StepCallback
from otu.llm.family import FAMILY
from otu.llm.regulariser import projection_seed
from otu.ot import as_rows, random_projections, sw_regulariser
from otu.process_group import init_rank, rendezvous_file
from otu.spec import parse_experiment

LAMBDA = 0.5
TORCH_LINEAR = torch.nn.functional.linear
# DeepSpeed keeps tensors below 1e5 elements whole by default; partition every tensor of the tiny models
PARTITION_ALL = {
    "param_persistence_threshold": 0,
    "max_live_parameters": 100_000,
    "prefetch_bucket_size": 100_000,
}


def noise(shape: torch.Size, index: int) -> torch.Tensor:
    """The deterministic move θ − θ₀ of tensor ``index``."""
    return 0.05 * torch.randn(shape, generator=torch.Generator().manual_seed(100 + index))


def sharded_regulariser_worker(
    rank: int,
    world: int,
    rendezvous: str,
    model_dir: str,
    cache: str,
    out: str,
    stage: int,
    precision: str,
) -> None:
    os.environ.update(
        {
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(world),
            "DS_ACCELERATOR": "cpu",
        }
    )
    torch.set_num_threads(1)
    init_rank("gloo", rendezvous, rank, world)
    from deepspeed.utils import (
        safe_get_full_fp32_param,
        safe_get_full_grad,
        safe_set_full_fp32_param,
        safe_set_full_grad,
    )

    from otu.llm.engine import DeepSpeedEngine, EngineSettings
    from otu.llm.objectives.optout import OptOutObjective

    raw = tiny_spec(Path(cache), reg_weight=LAMBDA)
    raw["compute"] = {"workers": world, "zero_stage": stage, "precision": precision}
    if stage == 3:
        raw["compute"]["zero3"] = PARTITION_ALL
    exp = parse_experiment(raw)
    engine = DeepSpeedEngine(
        EngineSettings(exp.job(), exp.compute, Path(model_dir), torch.device("cpu"), needs_ref=True, total_steps=1)
    )
    params = list(engine.model.module.parameters())
    if stage == 3:
        assert all(hasattr(p, "ds_id") and p.numel() == 0 for p in params)  # partitioned
    ids = torch.arange(12).reshape(2, 6)
    engine.backward(0.0 * engine.model(input_ids=ids, labels=ids).loss)  # zero gradients
    reg = OptOutObjective(exp.method).regulariser(engine, exp.seed)  # θ₀ = the fp32 masters now
    at_start = reg.apply(step=0)
    for i, p in enumerate(params):  # move the fp32 masters (every rank sets its own part)
        safe_set_full_fp32_param(p, safe_get_full_fp32_param(p) + noise(_full_shape(p), i))
    for p in params:  # zero the gradients again (step 0 added λ·∇ = 0, but keep it exact)
        safe_set_full_grad(p, torch.zeros_like(safe_get_full_grad(p)))
    value = reg.apply(step=0)
    grads = [safe_get_full_grad(p).float().clone() for p in params]
    torch.save(
        {"value": value, "at_start": at_start, "grads": grads, "mine": reg.mine()},
        Path(out) / f"rank{rank}.pt",
    )
    torch.distributed.destroy_process_group()


def _full_shape(p) -> torch.Size:
    return getattr(p, "ds_shape", p.shape)


@pytest.mark.parametrize(
    ("stage", "precision"),
    [
        pytest.param(1, "fp32", marks=pytest.mark.slow),
        (3, "fp32"),
        pytest.param(1, "bf16", marks=pytest.mark.slow),
        pytest.param(3, "bf16", marks=pytest.mark.slow),
    ],
)
def test_two_workers_share_the_sw_work_and_equal_single_process(tmp_path, stage, precision):
    """Each rank computes its own tensors; summed value and gradients equal one process's closed
    form; θ₀ is the fp32 master at construction, so SW = 0 there (also under bf16)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=50,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=32,
    )
    LlamaForCausalLM(config).save_pretrained(tmp_path / "theta0")
    mp.start_processes(
        sharded_regulariser_worker,
        args=(
            2,
            rendezvous_file(tmp_path),
            str(tmp_path / "theta0"),
            str(tmp_path / "cache"),
            str(tmp_path),
            stage,
            precision,
        ),
        nprocs=2,
        start_method="spawn",
    )
    got = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]

    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    theta0 = LlamaForCausalLM.from_pretrained(tmp_path / "theta0", dtype=dtype)
    params0 = [p.detach().float() for p in theta0.parameters()]
    # bf16 engines store gradients in bf16: λ·∇ is rounded to 8 significant bits there
    tol = {"rtol": 2**-8, "atol": 1e-7} if precision == "bf16" else {"rtol": 1e-5, "atol": 1e-7}
    mine = [set(g["mine"]) for g in got]
    assert mine[0] and mine[1] and not mine[0] & mine[1]  # each rank its own share
    assert mine[0] | mine[1] == set(range(len(params0)))
    total = 0.0
    for i, w0 in enumerate(params0):
        u = random_projections(as_rows(w0).shape[1], 100, projection_seed(0, 0, i))
        value, grad = sw_regulariser(w0 + noise(w0.shape, i), w0, u)
        total += value.item()
        for rank in range(2):
            torch.testing.assert_close(got[rank]["grads"][i], LAMBDA * grad, **tol)
    assert got[0]["at_start"] == got[1]["at_start"] == 0.0
    assert total > 0
    assert got[0]["value"] == got[1]["value"] == pytest.approx(total, rel=1e-6)


def test_ray_train_zero3_first_steps_equal_single_process(ray_local, llm_cache, tmp_path):
    from otu.runtime.train import unlearn_distributed

    # per-sequence means are split-invariant; OPT-OUT's default batch_mean is per micro-batch
    single = parse_experiment(tiny_spec(llm_cache, steps=3, reduction="sequence_mean"))
    raw = tiny_spec(llm_cache, steps=3, reduction="sequence_mean")
    raw["compute"] = {"workers": 2, "zero_stage": 3, "zero3": PARTITION_ALL}
    distributed = parse_experiment(raw)
    prepared = FAMILY.prepare(single.job(), single.context())

    ref_steps: list[dict] = []
    ref_model = unlearn(single, prepared, lambda s, m: ref_steps.append(dict(m)), tmp_path / "single")
    steps: list[tuple[int, dict]] = []
    model = unlearn_distributed(
        distributed,
        FAMILY,
        prepared,
        distributed.context(StepCallback(lambda s, m: steps.append((s, dict(m)))), tmp_path / "run" / "checkpoint"),
    )

    assert [s for s, _ in steps] == [0, 1, 2]
    for (step, got), want in zip(steps, ref_steps, strict=True):
        # step 0's forget loss is at θ₀ itself; every later loss follows an Adam update (the steps
        # alternate forget and retain updates), which turns the ranks' summation order (~1e-7 in a
        # gradient near zero) into ±lr moves of a few weights (below): ~1e-5 of a loss
        for key in ("forget_loss", "retain_loss", "loss", "lr"):
            rel = 1e-6 if (step, key) == (0, "forget_loss") else 1e-4
            assert got[key] == pytest.approx(want[key], rel=rel, abs=1e-8), (step, key)
        # SW of θ − θ₀ ≈ 1e-3·θ: fp32 rounding of θ (~1e-7) is ~1e-4 of the difference
        assert got["reg"] == pytest.approx(want["reg"], rel=1e-3)
    # Adam turns rounding noise in near-zero gradients into ±lr moves, so a few weights differ by up
    # to 2·lr per update; all others agree closely.
    bound = 2 * single.method.lr * 6  # 3 steps × 2 alternating updates
    for (name, p), q in zip(model.named_parameters(), ref_model.parameters(), strict=True):
        diff = (p - q).abs()
        # embedding rows of tokens in no batch get only the regulariser's near-zero gradient: most
        # of them move by ±lr on rounding noise (with prompts that insert no space, ~19 % here)
        share = 0.25 if name.endswith("embed_tokens.weight") else 0.02
        assert diff.max() <= bound and (diff > 1e-5).float().mean() < share, name
    shards = sorted(p.name for p in (tmp_path / "run" / "checkpoint").glob("*.safetensors"))
    assert shards == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    metrics = FAMILY.evaluate(distributed.job(), prepared, model)
    assert 0.0 <= metrics["forget_rouge"] <= 1.0 and metrics["retain_prob"] > 0.5


def test_multi_worker_checkpoints_are_evaluated_on_actors(ray_local, llm_cache, tmp_path):
    """Checkpoint evaluation of a 2-worker ZeRO-3 run: every rank writes its part of a checkpoint per
    step, Ray Train stores the merged checkpoint, the evaluation actors score it while training goes
    on, and the curve matches the plain single-process run's (live-model snapshots) step by step, as
    does a one-process ZeRO-3 run's (checkpoints saved beside its final one)."""
    from otu.runtime.evaluation import CheckpointEvaluator, start_pool
    from otu.runtime.experiment import read_steps, run_experiment

    def run(name: str, compute: dict, **dynamics) -> list[dict]:
        raw = tiny_spec(llm_cache, steps=3, reduction="sequence_mean")
        raw |= {"compute": compute, "dynamics": {"every": 1, "pool_size": 1, **dynamics}}
        exp = parse_experiment(raw)
        evaluator = CheckpointEvaluator(exp, start_pool(f"dyn-{name}", 1))
        run_experiment(exp, tmp_path / name, evaluator=evaluator)
        return read_steps(tmp_path / name, "dynamics")

    single = run("single", {"workers": 1})
    zero3 = run("zero3", {"workers": 1, "zero_stage": 3, "zero3": PARTITION_ALL})
    # ZeRO-3 swapped F.linear for its memory-efficient version while training; the engine put it back
    assert torch.nn.functional.linear is TORCH_LINEAR
    # select the step-0 checkpoint (the most forget-set probability): it becomes the saved model
    distributed = run(
        "distributed", {"workers": 2, "zero_stage": 3, "zero3": PARTITION_ALL}, select="forget_prob", mode="max"
    )

    assert [r["step"] for r in distributed] == [0, 1, 2] == [r["step"] for r in single]
    # evaluated checkpoints are deleted (retention), the selected one is moved to DIR/checkpoint
    assert not list((tmp_path / "distributed" / "ray-train").glob("*/checkpoint-*"))
    assert not list((tmp_path / "distributed").glob("checkpoint-*"))  # ranks' local copies are gone
    assert not list((tmp_path / "zero3").glob("checkpoint-*"))
    chosen = json.loads((tmp_path / "distributed" / "metrics.json").read_text())["unlearned"]
    assert chosen["checkpoint_step"] == 0
    exp = parse_experiment(tiny_spec(llm_cache, steps=3, reduction="sequence_mean"))
    prepared = FAMILY.prepare(exp.job(), exp.context())
    saved = FAMILY.evaluate(
        exp.job(), prepared, FAMILY.load_unlearned(exp.job(), prepared, tmp_path / "distributed" / "checkpoint")
    )
    assert saved["forget_prob"] == pytest.approx(distributed[0]["forget_prob"], rel=1e-3)
    for got_zero3, got, want in zip(zero3, distributed, single, strict=True):
        for key in ("forget_prob", "retain_prob", "world_prob"):
            assert got[key] == pytest.approx(want[key], rel=1e-3), (got["step"], key)
            assert got_zero3[key] == pytest.approx(want[key], rel=1e-3), (got["step"], key)
    assert distributed[-1]["forget_prob"] < distributed[0]["forget_prob"]


@pytest.mark.slow
def test_otu_run_optout_two_ray_workers_zero3_forgets(tmp_path):
    """The must-hold: forget ROUGE falls from ~1 to near the retain-only model's, retain ROUGE stays."""
    from otu.cli import main

    out = tmp_path / "run"
    argv = [
        "run",
        str(REPO / "sweeps/experiments/optout_tiny.yaml"),
        "--out",
        str(out),
        "--tracking-uri",
        f"sqlite:///{tmp_path / 'mlflow.db'}",
        "--set",
        f"tracking.cache_dir={tmp_path / 'cache'}",
    ]
    assert main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    original, oracle, unlearned = metrics["original"], metrics["retrained"], metrics["unlearned"]
    assert original["forget_rouge"] >= 0.9
    assert unlearned["forget_rouge"] <= oracle["forget_rouge"] + 0.15
    assert unlearned["forget_rouge"] <= original["forget_rouge"] - 0.5
    assert unlearned["retain_rouge"] >= original["retain_rouge"] - 0.05
    assert len((out / "steps.jsonl").read_text().splitlines()) == 30


@pytest.mark.slow
def test_deepspeed_only_launch_under_torchrun(llm_cache, tmp_path):
    """``torchrun -m otu.runtime.launch`` (no Ray): 2 ranks, ZeRO-3; rank 0 writes steps and metrics."""
    import subprocess
    import sys

    spec = tmp_path / "spec.yaml"
    raw = tiny_spec(llm_cache, steps=3, reduction="sequence_mean")
    raw["compute"] = {"workers": 2, "zero_stage": 3, "zero3": PARTITION_ALL}
    spec.write_text(yaml.safe_dump(raw))
    torchrun = Path(sys.executable).parent / "torchrun"
    cmd = [
        str(torchrun),
        "--nproc_per_node",
        "2",
        "--standalone",  # torchrun binds its own rendezvous store (port 0, kept open)
        "-m",
        "otu.runtime.launch",
        str(spec),
        "--out",
        str(tmp_path / "out"),
    ]
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    subprocess.run(cmd, check=True, env=env, timeout=600)
    steps = [json.loads(line) for line in (tmp_path / "out" / "steps.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == [0, 1, 2]
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert set(metrics) == {"original", "retrained", "unlearned"}
    assert len(list((tmp_path / "out" / "checkpoint").glob("model-*.safetensors"))) == 2
