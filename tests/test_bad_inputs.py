"""Bad inputs across the four families, sweep files, CLI flags and data files. Each one must give:
the documented exit code, exactly one line on stderr naming the field or flag, no traceback, no
output directory and no MLflow run left behind. The CLI runs in-process (fast); a few as processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from otu.cli import main

REPO = Path(__file__).resolve().parents[1]
EXP = REPO / "sweeps/experiments"
VISION, LLM = EXP / "dlfd_digits.yaml", EXP / "optout_tiny.yaml"
TABULAR, GENERATIVE = EXP / "barycenter_tabular.yaml", EXP / "uot_digits.yaml"
QUICKSTART = REPO / "sweeps/quickstart.yaml"
DIABETES = REPO / "platform/otu/tabular/data/diabetes.csv"


def write(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def tabular_csv(tmp: Path, cell: str) -> Path:
    """The diabetes table with one cell of column ``bmi`` replaced; its spec points at the copy."""
    lines = DIABETES.read_text().splitlines()
    header = lines[0].split(",")
    row = lines[5].split(",")
    row[header.index("bmi")] = cell
    lines[5] = ",".join(row)
    csv = write(tmp / "table.csv", "\n".join(lines) + "\n")
    spec = yaml.safe_load(TABULAR.read_text())
    spec["task"]["data"]["path"] = str(csv)
    return write(tmp / "tabular.yaml", yaml.safe_dump(spec))


def vision_npz(tmp: Path) -> Path:
    """A 40-image file source (two identities) with one NaN pixel; its spec forgets one identity."""
    rng = np.random.default_rng(0)
    images = rng.random((40, 8, 8)).astype(np.float32)
    images[7, 3, 3] = np.nan
    np.savez(tmp / "faces.npz", image=images, label=np.arange(40) % 2, identity=np.arange(40) % 4)
    spec = yaml.safe_load(VISION.read_text())
    spec["task"]["data"] = {"source": "file", "path": str(tmp / "faces.npz"), "forget_identities": [1]}
    return write(tmp / "vision.yaml", yaml.safe_dump(spec))


def sweep_file(tmp: Path, space: str, extra: str = "") -> Path:
    return write(
        tmp / "sweep.yaml",
        f"""\
name: s
experiment: {VISION}
space:
  {space}
objectives: [{{metric: test_acc, mode: max}}]
{extra}""",
    )


BOMB = (
    "a: &a [x, x, x, x, x, x, x, x, x]\n"
    + "".join(f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]\n" for i in range(8))
    + "name: *i\n"
)

# (id, argv builder given a scratch folder, exit code, text the one line must contain)
Case = tuple[str, Callable[[Path], list[str]], int, str]


def run(spec: Path | str, *sets: str) -> Callable[[Path], list[str]]:
    return lambda tmp: ["run", str(spec), *[a for s in sets for a in ("--set", s)]]


def sweep(spec: Path | str, *sets: str) -> Callable[[Path], list[str]]:
    return lambda tmp: ["sweep", str(spec), *[a for s in sets for a in ("--set", s)]]


CASES: list[Case] = [
    # ---- vision
    ("vision-alpha-inf", run(VISION, "method.alpha=.inf"), 2, "method.alpha"),
    ("vision-lambda-nan", run(VISION, "method.lambda_end=.nan"), 2, "method.lambda_end"),
    ("vision-seed-negative", run(VISION, "seed=-1"), 2, "seed"),
    ("vision-seed-huge", run(VISION, "seed=4294967296"), 2, "seed"),
    ("vision-batch-huge", run(VISION, "task.model.batch_size=100000000000000000000000"), 2, "task.model.batch_size"),
    ("vision-device-cuda", run(VISION, "compute.device=cuda"), 2, "compute.device"),
    ("vision-markup-name", run(VISION, "name=[/x]"), 2, "name"),
    ("vision-markup-text", run(VISION, "name='[/x]'"), 2, "name"),
    ("vision-fraction", run(VISION, "task.data.forget_fraction=1.5"), 2, "task.data.forget_fraction"),
    ("vision-unknown-key", run(VISION, "method.alpah=0.1"), 2, "method.alpah"),
    (
        "vision-nan-pixel",
        lambda tmp: ["run", str(vision_npz(tmp)), "--set", "task.model.epochs=1"],
        2,
        "task.data.image_column",
    ),
    # ---- llm
    ("llm-beta-inf", run(LLM, "method.beta=.inf"), 2, "method.beta"),
    ("llm-weight-nan", run(LLM, "method.reg_weight=.nan"), 2, "method.reg_weight"),
    ("llm-vocab-small", run(LLM, "task.model.tiny.vocab=10"), 2, "task.model.tiny.vocab"),
    ("llm-zero-stage", run(LLM, "compute.zero_stage=4"), 2, "compute.zero_stage"),
    ("llm-threads-huge", run(LLM, "compute.threads=1e30"), 2, "compute.threads"),
    # ---- tabular
    ("tabular-t-range", run(TABULAR, "method.t=2"), 2, "method.t"),
    ("tabular-cov-reg-inf", run(TABULAR, "method.cov_reg=.inf"), 2, "method.cov_reg"),
    ("tabular-cell-inf", lambda tmp: ["run", str(tabular_csv(tmp, "inf"))], 2, "'bmi'"),
    ("tabular-cell-huge", lambda tmp: ["run", str(tabular_csv(tmp, "1e308"))], 2, "'bmi'"),
    ("tabular-cell-text", lambda tmp: ["run", str(tabular_csv(tmp, "fat"))], 2, "'bmi'"),
    ("tabular-device-cuda", run(TABULAR, "compute.device=cuda"), 2, "compute.device"),
    # ---- generative
    ("generative-tau-inf", run(GENERATIVE, "method.tau=.inf"), 2, "method.tau"),
    ("generative-tau-zero", run(GENERATIVE, "method.tau=0"), 2, "method.tau"),
    ("generative-class", run(GENERATIVE, "task.data.forget_class=42"), 2, "forget_class"),
    ("generative-steps-float", run(GENERATIVE, "method.steps=2.5"), 2, "method.steps"),
    # ---- sweep files
    (
        "sweep-int-uniform",
        lambda tmp: ["sweep", str(sweep_file(tmp, "method.perturb_steps: {uniform: [1, 4]}"))],
        2,
        "space.method.perturb_steps",
    ),
    (
        "sweep-int-loguniform",
        lambda tmp: ["sweep", str(sweep_file(tmp, "method.epochs: {loguniform: [1, 8]}"))],
        2,
        "space.method.epochs",
    ),
    (
        "sweep-bound-inf",
        lambda tmp: ["sweep", str(sweep_file(tmp, "method.alpha: {uniform: [0.1, .inf]}"))],
        2,
        "space.method.alpha",
    ),
    (
        "sweep-bound-nan",
        lambda tmp: ["sweep", str(sweep_file(tmp, "method.alpha: {uniform: [.nan, 1]}"))],
        2,
        "space.method.alpha",
    ),
    (
        "sweep-choice-inf",
        lambda tmp: ["sweep", str(sweep_file(tmp, "method.alpha: {choice: [0.1, .inf]}"))],
        2,
        "space.method.alpha",
    ),
    (
        "sweep-duplicate-key",
        lambda tmp: ["sweep", str(sweep_file(tmp, "method.alpha: {choice: [0.1]}", "name: again\n"))],
        2,
        "duplicate key 'name'",
    ),
    ("sweep-seeds-overflow", sweep(QUICKSTART, "experiment.seed=4294967295", "search.seeds=2"), 2, "search.seeds"),
    ("sweep-grid-uniform", sweep(QUICKSTART, "search.algorithm=grid"), 2, "search.algorithm"),
    ("sweep-metric", sweep(QUICKSTART, "objectives.0.metric=acc"), 2, "objectives.0.metric"),
    ("sweep-samples-huge", sweep(QUICKSTART, "search.num_samples=1e30"), 2, "search.num_samples"),
    # ---- spec files
    ("spec-not-utf8", lambda tmp: ["run", str(write(tmp / "s.yaml", b"name: \xff\xfe\n"))], 2, "not UTF-8"),
    ("spec-directory", lambda tmp: ["run", str(tmp)], 2, "is a directory"),
    ("spec-missing", lambda tmp: ["run", str(tmp / "nope.yaml")], 2, "not found"),
    (
        "spec-duplicate-key",
        lambda tmp: ["validate", str(write(tmp / "d.yaml", VISION.read_text() + "seed: 3\n"))],
        2,
        "duplicate key 'seed'",
    ),
    ("spec-alias-bomb", lambda tmp: ["run", str(write(tmp / "b.yaml", BOMB))], 2, "expands to more than"),
    ("spec-alias-cycle", lambda tmp: ["run", str(write(tmp / "c.yaml", "a: &a [*a]\n"))], 2, "refers to itself"),
    ("spec-is-sweep", run(QUICKSTART), 2, "otu sweep"),
    # ---- CLI flags
    ("flag-set-no-equals", run(VISION, "method.alpha"), 2, "--set"),
    ("flag-set-bad-yaml", run(VISION, "method.alpha=[1"), 2, "--set method.alpha"),
    ("flag-out-file", lambda tmp: ["run", str(VISION), "--out", str(write(tmp / "f", "x"))], 2, "--out"),
    ("flag-out-under-file", lambda tmp: ["run", str(VISION), "--out", str(write(tmp / "f", "x") / "o")], 2, "--out"),
    (
        "flag-cache-under-file",
        lambda tmp: ["run", str(VISION), "--set", f"tracking.cache_dir={write(tmp / 'f', 'x') / 'c'}"],
        2,
        "tracking.cache_dir",
    ),
    (
        "flag-uri-unreachable",
        lambda tmp: ["run", str(VISION), "--tracking-uri", "http://127.0.0.1:9"],
        2,
        "http://127.0.0.1:9",
    ),
    ("flag-uri-unknown", lambda tmp: ["run", str(VISION), "--tracking-uri", "foo://bar"], 2, "foo://bar"),
    (
        "flag-uri-unwritable",
        lambda tmp: ["run", str(VISION), "--tracking-uri", f"sqlite:///{write(tmp / 'f', 'x')}/m.db"],
        2,
        "tracking URI",
    ),
    ("flag-entities-out-file", lambda tmp: ["data", "entities", "--out", str(write(tmp / "f", "x"))], 2, "--out"),
    ("flag-entities-seed", lambda tmp: ["data", "entities", "--out", str(tmp / "e"), "--seed", "-1"], 2, "--seed"),
    ("flag-unknown", lambda tmp: ["run", str(VISION), "--sett", "x=1"], 2, "--sett"),
    ("flag-resume-not-sweep", lambda tmp: ["sweep", "--resume", str(tmp)], 2, "--resume"),
    (
        "flag-resume-corrupt",
        lambda tmp: ["sweep", "--resume", str(resumable(tmp, b"PAR1 not really"))],
        2,
        "trials.parquet",
    ),
    ("flag-resume-empty", lambda tmp: ["sweep", "--resume", str(resumable(tmp, b""))], 2, "trials.parquet"),
]


def resumable(tmp: Path, trials: bytes) -> Path:
    """A sweep folder (a valid sweep.yaml) whose trials.parquet holds ``trials``."""
    folder = tmp / "old-sweep"
    folder.mkdir()
    raw = yaml.safe_load(QUICKSTART.read_text())
    raw["experiment"] = yaml.safe_load(VISION.read_text())
    write(folder / "sweep.yaml", yaml.safe_dump(raw))
    write(folder / "trials.parquet", trials)
    return folder


def one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{err[:3000]}"
    assert "Traceback" not in err
    return lines[0]


def no_runs(db: Path) -> bool:
    if not db.exists():
        return True
    client = MlflowClient(f"sqlite:///{db}")
    ids = [e.experiment_id for e in client.search_experiments()]
    return not client.search_runs(ids) if ids else True


def test_the_table_holds_forty_bad_inputs_over_every_family():
    assert len(CASES) >= 40
    ids = [c[0] for c in CASES]
    assert len(set(ids)) == len(ids)
    for prefix in ("vision", "llm", "tabular", "generative", "sweep", "spec", "flag"):
        assert any(i.startswith(prefix) for i in ids), prefix


@pytest.mark.parametrize(("argv", "code", "names"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_leaves_nothing(argv, code, names, tmp_path, capsys, monkeypatch):
    if "compute.device=cuda" in str(argv) and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(REPO)  # specs name repo-relative data files
    out, db, cache = tmp_path / "out", tmp_path / "mlflow.db", tmp_path / "cache"
    args = argv(work)
    if args[0] in ("run", "sweep") and "--resume" not in args:
        args += [] if "--out" in args else ["--out", str(out)]
        args += [] if "--tracking-uri" in args else ["--tracking-uri", f"sqlite:///{db}"]
        prefix = "experiment." if args[0] == "sweep" else ""
        if not any("cache_dir" in a for a in args):
            args += ["--set", f"{prefix}tracking.cache_dir={cache}"]
    try:
        got = main(args)
    except SystemExit as exit_:  # argparse
        got = exit_.code
    err = capsys.readouterr().err
    line = one_line(err)
    assert got == code
    assert line.startswith("otu: error:")
    assert names in line
    assert len(line) < 600
    assert not out.exists()
    assert no_runs(db)


def test_the_error_printer_shows_markup_as_text(tmp_path, capsys):
    bad = write(tmp_path / "s.yaml", "name: '[bold]x[/]'\ntask: {family: '[/x]'}\n")
    assert main(["validate", str(bad)]) == 2
    line = one_line(capsys.readouterr().err)
    assert "'[/x]'" in line


def test_an_unexpected_failure_is_one_line_and_debug_shows_the_traceback(tmp_path, capsys, monkeypatch):
    import otu.cli

    def boom(args):
        raise ZeroDivisionError("division by zero in a handler")

    monkeypatch.setattr(otu.cli, "cmd_validate", boom)
    assert main(["validate", str(VISION)]) == 1
    line = one_line(capsys.readouterr().err)
    assert line.startswith("otu: run failed: ZeroDivisionError: division by zero") and "--debug" in line
    assert main(["validate", str(VISION), "--debug"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("otu: run failed:")


def test_requests_larger_than_the_cluster_fail_before_any_trial(tmp_path, capsys, ray_local):
    out, db = tmp_path / "out", tmp_path / "mlflow.db"
    common = ["--out", str(out), "--tracking-uri", f"sqlite:///{db}"]
    have = f"{ray_local.cluster_resources()['CPU']:g} CPUs"
    cases = [
        (["sweep", str(QUICKSTART), *common, "--set", "resources.cpus=64"], "resources.cpus"),
        (["sweep", str(QUICKSTART), *common, "--set", "resources.gpus=1"], "resources.gpus"),
        (
            ["run", str(LLM), *common, "--set", "compute.workers=4", "--set", f"tracking.cache_dir={tmp_path}"],
            "compute.workers",
        ),
    ]
    for argv, field in cases:
        start = time.perf_counter()
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err
        (line,) = [line for line in err.splitlines() if line.startswith("otu:")]  # after the sweep's banner
        assert field in line and have in line, line
        assert time.perf_counter() - start < 60
        assert not out.exists() and no_runs(db)


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO / "platform")}
    return subprocess.run(
        [sys.executable, "-m", "otu.cli", *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO
    )


def test_as_processes_an_alias_bomb_and_an_unreachable_server_fail_in_seconds(tmp_path):
    start = time.perf_counter()
    proc = cli("validate", str(write(tmp_path / "b.yaml", BOMB)))
    assert proc.returncode == 2 and "expands to more than" in one_line(proc.stderr)
    assert time.perf_counter() - start < 30

    start = time.perf_counter()
    proc = cli("run", str(VISION), "--out", str(tmp_path / "out"), "--tracking-uri", "http://127.0.0.1:9")
    assert proc.returncode == 2 and "http://127.0.0.1:9" in one_line(proc.stderr)
    assert time.perf_counter() - start < 30 and not (tmp_path / "out").exists()

    proc = cli("run", str(VISION), "--set", "name='[/x]'", "--out", str(tmp_path / "out"))
    assert proc.returncode == 2 and "'[/x]'" in one_line(proc.stderr)
