"""Every command README.md (and docs/usage.md) shows, run literally from the repository root.

The commands run in fresh subprocesses, in a copy of the tracked tree (so nothing is left in the
checkout), with the copy's ``otu-runs/cache`` shared across the session. Where a command would take
minutes or needs a cluster, TRIMS says what the test appends and why; a new command in the docs that
this file cannot run (an unknown placeholder) fails the test, as does a command that exits non-zero.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", ROOT / "docs" / "usage.md"]

TRIMS = {
    # trials cut from 8 to 2 to keep the default suite short; the spec and command are the README's
    "make quickstart": ' ARGS="--set search.num_samples=2"',
    "otu sweep sweeps/quickstart.yaml --set search.num_samples=4": " --set search.num_samples=2",
    # fewer unlearning steps (30 → 6); preparation and both launch paths run as written
    "otu run sweeps/experiments/optout_tiny.yaml": " --set method.steps=6",
    # no cluster here: the job is validated and described, not sent (test_cluster sends real jobs)
    "otu submit sweeps/quickstart.yaml --address http://HEAD:8265 --out s3://BUCKET/otu/quickstart "
    "--tracking-uri http://MLFLOW:5000 --wait": " --dry-run",
}
SKIP = {
    # the command running this very test (CI's .ci/run runs it; test_ci_runs_the_readme_test_command)
    "make test",
}


def shown_commands(path: Path) -> list[str]:
    """Command lines of the ```bash blocks in ``path``, comments stripped."""
    blocks = re.findall(r"```bash\n(.*?)```", path.read_text(), flags=re.S)
    lines = [re.sub(r"\s+#.*$", "", line).strip() for block in blocks for line in block.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


@pytest.fixture(scope="module")
def checkout(tmp_path_factory) -> Path:
    """The tracked files of this checkout, copied with their times, and the project's .venv linked."""
    copy = tmp_path_factory.mktemp("clone") / "otu"
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, text=True, capture_output=True, check=True
    ).stdout.split()
    for name in files:
        if (ROOT / name).is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, copy / name)
    (copy / ".venv").symlink_to(Path(sys.executable).parent.parent)
    (copy / "otu-runs").mkdir()
    (copy / "otu-runs" / "cache").symlink_to(tmp_path_factory.mktemp("cache"))
    return copy


def run_shown(command: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    return subprocess.run(["bash", "-c", command], cwd=cwd, env=env, text=True, capture_output=True, timeout=900)


def concrete(command: str, cwd: Path) -> str:
    """Placeholders filled from what earlier commands wrote; an unknown one fails the test."""
    sweeps = sorted((cwd / "otu-runs").glob("quickstart-*"))
    if "otu-runs/optout-tiny-<time>" in command:  # the run of an earlier command (finished: nothing redone)
        (run,) = sorted((cwd / "otu-runs").glob("optout-tiny-*"))
        command = command.replace("otu-runs/optout-tiny-<time>", run.relative_to(cwd).as_posix())
    if "<time>" in command:
        assert sweeps, f"{command!r} needs a quickstart sweep from an earlier command"
        command = command.replace("otu-runs/quickstart-<time>", sweeps[0].relative_to(cwd).as_posix())
    if "[another-sweep-dir ...]" in command:
        command = command.replace("[another-sweep-dir ...]", sweeps[-1].relative_to(cwd).as_posix())
    leftover = re.findall(r"<[a-z-]+>|\[[^\]]*\]", command)
    assert not leftover, f"README command {command!r}: test_readme cannot fill {leftover}"
    return command


def test_readme_commands_run_as_shown(checkout: Path):
    commands = [c for doc in DOCS for c in shown_commands(doc)]
    assert "make quickstart" in commands and "make test" in commands
    assert "otu run sweeps/experiments/optout_tiny.yaml" in commands
    ran = []
    for shown in commands:
        if shown in SKIP:
            continue
        if shown.startswith((". ", "source ")):  # activation: the test puts .venv/bin on PATH
            assert (checkout / shown.split()[1]).exists(), shown
            continue
        command = concrete(shown, checkout) + TRIMS.get(shown, "")
        result = run_shown(command, checkout)
        assert result.returncode == 0, f"{command}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        ran.append(command)
    assert set(TRIMS) <= set(commands), f"TRIMS names commands the docs no longer show: {set(TRIMS) - set(commands)}"

    runs = checkout / "otu-runs"
    optout = [d for d in runs.glob("optout-tiny-*") if (d / "metrics.json").is_file()]
    assert optout, "otu run sweeps/experiments/optout_tiny.yaml wrote no metrics.json"
    quick = sorted(runs.glob("quickstart-*"))
    assert len(quick) >= 2 and all((d / "trials.parquet").is_file() for d in quick)
    assert (runs / "mlflow.db").is_file()
    assert (checkout / "data" / "entities").is_dir()
    assert len(ran) >= 8


def test_ci_runs_the_readme_test_command():
    """README's test command is what CI runs from a clean clone."""
    assert "make test" in shown_commands(ROOT / "README.md")
    assert re.search(r"^make test$", (ROOT / ".ci" / "run").read_text(), flags=re.M)
