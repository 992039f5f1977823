"""Relearning attacks under the unlearning's launchers (``eval.robustness`` relearn on large models).

Where the unlearning runs under DeepSpeed (``compute.zero_stage > 0``) or on several ranks, each
relearn attack is one run of the loop (:mod:`otu.llm.objectives.relearn`) through the same launcher —
Ray Train workers, a torchrun group, DeepSpeed in one process — from the attacked model's
checkpoint; the driver loads and scores what it saved. These tests pin that it equals the in-process
attack (:func:`otu.llm.attacks.relearn`) on the same model, shows up as a launcher run, leaves every
evaluated model and the clean rows alone, and refuses what it cannot run before any work.

Tolerance: the loop's global batch is the in-process one (the same seeded stream, ``min(b, n)·g``
items split ``(m·world + r)``), and per-sequence token means make the loss split-invariant, so the two
differ only by fp32 rounding (padding to other lengths, gradient all-reduce order). Adam turns the
rounding noise of near-zero gradients into moves of up to ±lr per step, so a few weights differ by
up to 2·lr·steps (as in tests/test_llm_distributed.py); the metrics agree to 1e-4 (probabilities,
truth ratios) and ROUGE exactly (greedy generations of nearly equal models).

Slow (``pytest -m slow tests/test_relearn_launchers.py``): a whole ``run_experiment`` on 2 Ray Train
workers (the unlearning and three relearn runs, ~3 minutes on 2 cores), and ``torchrun -m
otu.runtime.launch`` with 2 ranks (rank 0 sends each relearn run to rank 1; ~40 s).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from test_llm import tiny_spec

from otu.errors import SpecError
from otu.family import StepCallback
from otu.llm import attacks
from otu.llm.family import FAMILY
from otu.runtime.launch import AttackRun, RayTrain
from otu.spec import parse_experiment

STEPS, LR = 4, 1e-3
COMPARED = ("forget_prob", "forget_truth_ratio", "retain_prob", "world_prob", "forget_rouge", "retain_rouge")


def spec(cache: Path, name: str, compute: dict, **attack) -> dict:
    """GA for 2 steps, then relearning half of the forget items (batch 2 × grad-accum 2)."""
    raw = tiny_spec(cache)
    raw["method"] = {"name": "ga", "lr": LR, "steps": 2, "batch_size": 8, "nll_reduction": "sequence_mean"}
    relearn = {"attack": "relearn", "name": name, "steps": STEPS, "lr": LR, "batch_size": 2, "grad_accum": 2}
    raw["eval"]["robustness"] = [relearn | attack]
    raw["compute"] = compute
    return raw


def digest(directory: Path) -> str:
    """One hash of every file under ``directory`` (names and bytes)."""
    h = hashlib.sha256()
    for path in sorted(p for p in Path(directory).rglob("*") if p.is_file()):
        h.update(str(path.relative_to(directory)).encode() + path.read_bytes())
    return h.hexdigest()


def assert_same_rows(got: dict, want: dict) -> None:
    for key in COMPARED:
        tol = 0.0 if key.endswith("rouge") else 1e-4
        assert got[key] == pytest.approx(want[key], abs=tol), key


def test_relearn_on_two_ray_train_workers_zero2_equals_the_one_process_attack(ray_local, llm_cache, tmp_path):
    exp = parse_experiment(spec(llm_cache, "rl", {"workers": 2, "zero_stage": 2}))
    job = exp.job()
    prepared = FAMILY.prepare(job, exp.context())
    original = prepared.model("original")
    before = digest(prepared.target_path)
    assert FAMILY.launched_attacks(job, exp.compute) == ["rl"]

    steps: list[tuple[int, dict]] = []
    out = tmp_path / "attacks" / "original@rl"
    ctx = exp.context(StepCallback(lambda s, m: steps.append((s, dict(m)))), out)
    relearned = RayTrain().attack(FAMILY, exp, prepared, ctx, AttackRun("rl", "original"))

    # a run of the launcher: its own Ray Train run, every step reported, a 2-shard checkpoint
    assert [s for s, _ in steps] == list(range(STEPS))
    assert all(m["lr"] == LR and m["total_steps"] == STEPS for _, m in steps)
    assert len(list(out.glob("model-*.safetensors"))) == 2
    assert list((tmp_path / "attacks" / "ray-train").glob("attack-*"))
    # the same rows as the one-process attack on the same model
    launched = FAMILY.attacked(job, prepared, original, exp.seed, {"rl": relearned})["rl"]
    in_process = FAMILY.attacked(job, prepared, original, exp.seed)["rl"]
    assert_same_rows(launched[0], in_process[0])
    assert launched[1] == in_process[1]  # the clean model on the same items
    assert launched[0]["forget_prob"] > 0.9 and launched[0]["n_forget"] == in_process[0]["n_forget"]
    # and nearly the same weights (Adam's ±lr on rounding noise, see the module docstring)
    attack = job.eval.robustness[0]
    records, _ = attacks.relearn_split(prepared.splits, attack, exp.seed)
    reference = attacks.relearn(original, prepared.encoder(), records, attack, exp.seed)
    for (name, p), q in zip(relearned.named_parameters(), reference.parameters(), strict=True):
        diff = (p - q).abs()
        assert diff.max() <= 2 * LR * STEPS and (diff > 1e-5).float().mean() < 0.25, name
    assert digest(prepared.target_path) == before  # the attacked model on disk is as it was


def test_a_zero1_run_relearns_every_model_through_the_loop_and_leaves_models_and_clean_rows(llm_cache, tmp_path):
    """DeepSpeed in one process (``zero_stage: 1``): the three relearn attacks are loop runs (their
    steps in ``attack-steps.jsonl``), scored as the in-process attack scores the same models; the
    reference and unlearned checkpoints on disk and the clean rows are untouched."""
    from otu.runtime.experiment import run_experiment

    exp = parse_experiment(spec(llm_cache, "rl1", {"workers": 1, "zero_stage": 1}))
    job = exp.job()
    prepared = FAMILY.prepare(job, exp.context())
    disks = {"original": prepared.target_path, "retrained": prepared.oracle_path}
    before = {name: digest(path) for name, path in disks.items()}
    clean = {name: FAMILY.evaluate(job, prepared, prepared.model(name)) for name in disks}

    out = tmp_path / "run"
    metrics = run_experiment(exp, out).metrics
    unlearned_disk = digest(out / "checkpoint")

    log = [json.loads(line) for line in (out / "attack-steps.jsonl").read_text().splitlines()]
    assert [(r["model"], r["step"]) for r in log] == [
        (m, s) for m in ("original", "retrained", "unlearned") for s in range(STEPS)
    ]
    assert all(r["attack"] == "rl1" and r["lr"] == LR for r in log)
    assert not (out / "attacks").exists()  # the relearned checkpoints are deleted once scored
    for name in disks:
        assert digest(disks[name]) == before[name]
        assert {k: metrics[name][k] for k in clean[name]} == pytest.approx(clean[name], abs=1e-12, nan_ok=True)
    unlearned = FAMILY.load_unlearned(job, prepared, out / "checkpoint")
    models = {**{name: prepared.model(name) for name in disks}, "unlearned": unlearned}
    for name, model in models.items():
        want = FAMILY.attacked(job, prepared, model, exp.seed)["rl1"][0]  # the in-process attack
        assert_same_rows(metrics[f"{name}@rl1"], want)
    assert digest(out / "checkpoint") == unlearned_disk


def test_a_lora_relearn_through_the_loop_is_merged_into_the_model_it_started_from(llm_cache, tmp_path):
    """``lora`` on the attack: only adapters train in the loop (DeepSpeed in one process), the saved
    adapter is merged into the attacked model (here the oracle), not into the target. Its numbers are
    not the in-process attack's: the adapters' random initialisation draws differ between the paths."""
    from otu.runtime.launch import InProcess

    lora = {"r": 4, "alpha": 8, "dropout": 0.0}
    exp = parse_experiment(spec(llm_cache, "rlora", {"workers": 1, "zero_stage": 1}, lora=lora))
    prepared = FAMILY.prepare(exp.job(), exp.context())
    losses: list[float] = []
    ctx = exp.context(StepCallback(lambda s, m: losses.append(m["forget_loss"])), tmp_path / "relearned")
    relearned = InProcess().attack(FAMILY, exp, prepared, ctx, AttackRun("rlora", "retrained"))
    assert (tmp_path / "relearned" / "adapter_config.json").is_file()
    assert len(losses) == STEPS and losses[-1] < losses[0]
    oracle = dict(prepared.model("retrained").named_parameters())
    moved = [n for n, p in relearned.named_parameters() if not torch.equal(p, oracle[n])]
    assert moved and all("proj" in n for n in moved)  # the adapted layers only, merged into the oracle


def test_bad_input_is_named_before_any_work(llm_cache):
    lora = spec(llm_cache, "rl", {"workers": 2})
    lora["method"]["lora"] = {"r": 4}
    with pytest.raises(SpecError, match=r"^method\.lora\.save_merged: eval\.robustness \(rl\) relearns"):
        parse_experiment(lora)
    lora["method"]["lora"]["save_merged"] = True
    parse_experiment(lora)  # the merged copy is a full checkpoint to start from
    lora["compute"] = {"workers": 1}
    lora["method"]["lora"]["save_merged"] = False
    parse_experiment(lora)  # in one plain process the attack relearns the loaded model itself

    odd = spec(llm_cache, "rl", {"workers": 2}, batch_size=3)
    with pytest.raises(SpecError, match=r"^eval\.robustness \(rl\)\.batch_size: 3 items .* compute\.workers = 2"):
        parse_experiment(odd)


@pytest.mark.slow
def test_otu_run_on_two_ray_train_workers_relearns_all_three_models_as_launcher_runs(ray_local, llm_cache, tmp_path):
    """The whole run: unlearning and the three relearn attacks on 2 Ray Train workers (ZeRO-2), rows
    as the in-process attack gives on the same models, the original row and models on disk untouched."""
    from otu.runtime.experiment import run_experiment

    exp = parse_experiment(spec(llm_cache, "rl2", {"workers": 2, "zero_stage": 2}))
    job = exp.job()
    prepared = FAMILY.prepare(job, exp.context())
    before = digest(prepared.target_path)
    clean = FAMILY.evaluate(job, prepared, prepared.model("original"))
    out = tmp_path / "run"
    result = run_experiment(exp, out)
    metrics = result.metrics
    log = [json.loads(line) for line in (out / "attack-steps.jsonl").read_text().splitlines()]
    assert len(log) == 3 * STEPS and not (out / "attacks").exists()
    assert digest(prepared.target_path) == before
    assert {k: metrics["original"][k] for k in clean} == pytest.approx(clean, abs=1e-12, nan_ok=True)
    unlearned = FAMILY.load_unlearned(job, prepared, out / "checkpoint")
    models = {"original": prepared.model("original"), "retrained": prepared.model("retrained"), "unlearned": unlearned}
    for name, model in models.items():
        assert_same_rows(metrics[f"{name}@rl2"], FAMILY.attacked(job, prepared, model, exp.seed)["rl2"][0])
    print(json.dumps({k: round(v, 1) for k, v in result.timings.items()}))


@pytest.mark.slow
def test_relearn_under_torchrun_runs_on_the_process_group(llm_cache, tmp_path):
    """``torchrun -m otu.runtime.launch`` (2 ranks, ZeRO-2, no Ray): rank 0 sends each relearn run to
    rank 1 and both train it; the rows equal the in-process attack's on the same models."""
    import os
    import subprocess
    import sys

    import yaml

    raw = spec(llm_cache, "rl3", {"workers": 2, "zero_stage": 2})
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(raw))
    torchrun = Path(sys.executable).parent / "torchrun"
    out = tmp_path / "out"
    cmd = [str(torchrun), "--nproc_per_node", "2", "--standalone", "-m", "otu.runtime.launch"]
    cmd += [str(tmp_path / "spec.yaml"), "--out", str(out)]
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    subprocess.run(cmd, check=True, env=env, timeout=600)
    log = [json.loads(line) for line in (out / "attack-steps.jsonl").read_text().splitlines()]
    assert [(r["model"], r["step"]) for r in log] == [
        (m, s) for m in ("original", "retrained", "unlearned") for s in range(STEPS)
    ]
    metrics = json.loads((out / "metrics.json").read_text())
    exp = parse_experiment(raw)
    prepared = FAMILY.prepare(exp.job(), exp.context())
    unlearned = FAMILY.load_unlearned(exp.job(), prepared, out / "checkpoint")
    models = {"original": prepared.model("original"), "retrained": prepared.model("retrained"), "unlearned": unlearned}
    for name, model in models.items():
        assert_same_rows(metrics[f"{name}@rl3"], FAMILY.attacked(exp.job(), prepared, model, exp.seed)["rl3"][0])
