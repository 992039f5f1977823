"""A restarted unlearning loop is the same run: loop checkpoints (:mod:`otu.llm.resume`) hold model,
optimizer, scheduler, data streams and RNGs, and the platform's recorder keeps every step once.

In process, plain PyTorch and DeepSpeed (ZeRO-1 and ZeRO-3 on a one-rank group): a loop stopped by a
failure after a checkpoint and started again on the same directory ends in the weights of an
uninterrupted run, bit for bit, and reports the steps after the checkpoint again with the same
losses. The kills of real processes (a Ray Train worker, ``otu run``) are in tests/test_faults.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_faults import FAST, TABULAR
from test_llm import tiny_spec

from otu.family import StepCallback
from otu.llm.family import FAMILY
from otu.llm.resume import LATEST, interval
from otu.llm.sampling import StepSampler
from otu.runtime.experiment import _StepRecorder
from otu.sections import Dynamics
from otu.spec import parse_experiment

STEPS, EVERY, CRASH_AT = 8, 3, 6
PARTITION_ALL = {"param_persistence_threshold": 0, "max_live_parameters": 100_000, "prefetch_bucket_size": 100_000}


class Crash(RuntimeError):
    """Stands for a killed worker."""


def experiment(cache: Path, compute: dict, **method):
    raw = tiny_spec(cache, steps=STEPS, reduction="sequence_mean", **method)
    raw["compute"] = {"checkpoint_every": EVERY, **compute}
    return parse_experiment(raw)


def run(exp, prepared, out: Path, crash_at: int | None = None):
    """Unlearn with loop checkpoints in ``out/resume``; the steps reported, and the model (None on a crash)."""
    steps: list[tuple[int, dict]] = []

    def on_step(step: int, metrics) -> None:
        if step == crash_at:
            raise Crash(step)
        steps.append((step, dict(metrics)))

    ctx = exp.context(StepCallback(on_step), out / "checkpoint", out / "resume")
    try:
        return steps, FAMILY.unlearn(exp.job(), prepared, ctx)
    except Crash:
        return steps, None


@pytest.mark.parametrize(
    "compute",
    [{}, {"zero_stage": 1}, {"zero_stage": 3, "zero3": PARTITION_ALL}],
    ids=["plain", "zero1", "zero3"],
)
def test_a_loop_restarted_after_a_failure_ends_as_the_uninterrupted_run(llm_cache, tmp_path, compute):
    exp = experiment(llm_cache, compute)
    prepared = FAMILY.prepare(exp.job(), exp.context())
    want_steps, want = run(exp, prepared, tmp_path / "uninterrupted")

    crashed_steps, none = run(exp, prepared, tmp_path / "run", crash_at=CRASH_AT)
    assert none is None and [s for s, _ in crashed_steps] == list(range(CRASH_AT))
    assert (tmp_path / "run/resume" / LATEST).read_text() == f"step-{EVERY * 2 - 1:08d}"  # after step 5
    resumed_steps, got = run(exp, prepared, tmp_path / "run")

    # steps 0–5 are reported again as they were (from the checkpoint), 6 and 7 are run
    assert [s for s, _ in resumed_steps] == list(range(STEPS))
    assert resumed_steps[: EVERY * 2] == crashed_steps
    for (step, metrics), (_, expected) in zip(resumed_steps, want_steps, strict=True):
        for key in ("forget_loss", "retain_loss", "reg", "lr"):
            assert metrics[key] == expected[key], (step, key)
    for (name, p), q in zip(got.named_parameters(), want.parameters(), strict=True):
        assert torch.equal(p, q), name


@pytest.mark.parametrize("compute", [{}, {"zero_stage": 1}], ids=["plain", "zero1"])
def test_lora_resume_restores_the_adapters_and_keeps_the_base(llm_cache, tmp_path, compute):
    exp = experiment(llm_cache, compute, lora={"r": 4, "alpha": 8})
    prepared = FAMILY.prepare(exp.job(), exp.context())
    _, want = run(exp, prepared, tmp_path / "uninterrupted")
    run(exp, prepared, tmp_path / "run", crash_at=CRASH_AT)
    if not compute:
        saved = torch.load(next((tmp_path / "run/resume").glob("step-*/engine.pt")), weights_only=True)
        assert saved["weights"] and all("lora_" in name for name in saved["weights"])  # adapters only
    _, got = run(exp, prepared, tmp_path / "run")
    for (name, p), q in zip(got.named_parameters(), want.parameters(), strict=True):
        assert torch.equal(p, q), name


def test_the_sampler_continues_from_its_state():
    a = StepSampler({"forget": 5, "retain": 7, "world": 3}, "stream", seed=3)
    b = StepSampler({"forget": 5, "retain": 7, "world": 3}, "stream", seed=3)
    for _ in range(4):
        a.take(4)
    b.load(a.state())
    assert [a.take(4) for _ in range(6)] == [b.take(4) for _ in range(6)]


def test_default_interval_is_a_tenth_of_the_run():
    assert interval(None, 300) == 30 and interval(None, 7) == 1 and interval(5, 300) == 5 and interval(0, 9) == 0


def test_the_recorder_keeps_every_step_once_when_a_loop_reports_steps_again(tmp_path):
    reported = []
    recorder = _StepRecorder(tmp_path, lambda step, m: reported.append(step), None, None, Dynamics(), None)
    # restarted from the checkpoint after step 2: steps 0–2 reported again as they were, 3 and 4
    # run again (other timings), then 5
    for step, loss in [(0, 0), (1, 1), (2, 2), (3, 3), (4, 4), (0, 0), (1, 1), (2, 2), (3, 3.5), (4, 4.5), (5, 5)]:
        recorder.on_step(step, {"loss": float(loss)})
    rows = [json.loads(line) for line in (tmp_path / "steps.jsonl").read_text().splitlines()]
    assert [(r["step"], r["loss"]) for r in rows] == [(0, 0), (1, 1), (2, 2), (3, 3.5), (4, 4.5), (5, 5)]
    assert reported == [0, 1, 2, 3, 4, 3, 4, 5]  # MLflow gets the steps run again, not the replayed ones
    resumed = _StepRecorder(tmp_path, None, None, None, Dynamics(), None, resume=True)
    resumed.on_step(4, {"loss": 4.0})  # otu run --resume: the loop continues after step 3
    rows = [json.loads(line) for line in (tmp_path / "steps.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2, 3, 4]
    _StepRecorder(tmp_path, None, None, None, Dynamics(), None)  # a fresh run starts empty
    assert not (tmp_path / "steps.jsonl").exists()


# ---------------------------------------------------------------- otu run --resume (the CLI)


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["run"], "give an experiment spec, or --resume DIR"),
        (["run", "--resume", "no/such/run"], "--resume: no/such/run/spec.yaml not found"),
        (["run", str(TABULAR), "--resume", "."], "--resume DIR takes no spec"),
        (["run", "--resume", ".", "--set", "seed=1"], "--resume DIR takes no spec, --set or --out"),
    ],
)
def test_bad_resume_requests_name_the_flag(argv, says, capsys, tmp_path, monkeypatch):
    from otu.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert says in capsys.readouterr().err
    assert not (tmp_path / "otu-runs").exists()


def test_a_killed_run_of_another_family_runs_again_and_a_finished_one_is_left(tmp_path, ray_local, capsys):
    from otu.cli import main

    out, uri = tmp_path / "run", f"sqlite:///{tmp_path / 'mlflow.db'}"
    overrides = [a for item in [*FAST, f"tracking.cache_dir={tmp_path / 'cache'}"] for a in ("--set", item)]
    assert main(["run", str(TABULAR), "--out", str(out), "--tracking-uri", uri, "--quiet", *overrides]) == 0
    want = json.loads((out / "metrics.json").read_text())
    (out / "metrics.json").unlink()  # as if killed while evaluating
    assert main(["run", "--resume", str(out), "--quiet"]) == 0
    assert json.loads((out / "metrics.json").read_text()) == want
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.info.status == "FINISHED"  # the same MLflow run, closed again
    mtime = (out / "metrics.json").stat().st_mtime_ns
    capsys.readouterr()
    assert main(["run", "--resume", str(out)]) == 0
    said = capsys.readouterr()
    assert "finished already: nothing to resume" in " ".join((said.out + said.err).split())
    assert (out / "metrics.json").stat().st_mtime_ns == mtime
