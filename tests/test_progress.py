"""What a user sees while otu works: the run's phases and the loop's step bar, per-trial lines."""

from __future__ import annotations

import io
import json
from pathlib import Path

from rich.console import Console

from otu.progress import RunProgress
from otu.runtime.experiment import run_experiment
from otu.runtime.trial_lines import TrialLines
from otu.spec import load_experiment

REPO = Path(__file__).resolve().parents[1]


def recording_console() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, width=160, force_terminal=False, color_system=None), out


def test_run_progress_shows_phases_steps_of_total_and_losses():
    console, out = recording_console()
    with RunProgress(console) as progress:
        progress.phase("preparing data")
        progress.phase("unlearning with dlfd")
        for step in range(5):
            progress.step({"loss_ce": 1.0 / (step + 1), "lambda": 0.5}, 5)
        progress.phase("evaluating")
    text = out.getvalue()
    assert "preparing data" in text and "evaluating" in text
    assert "5/5" in text and "loss_ce=0.2" in text and "lambda" not in text


def test_quiet_shows_nothing():
    console, out = recording_console()
    with RunProgress(console, quiet=True) as progress:
        progress.phase("unlearning")
        progress.step({"loss": 1.0}, 3)
    assert out.getvalue() == ""


def test_loop_announces_its_total_and_the_record_stays_clean(tmp_path):
    exp = load_experiment(
        REPO / "sweeps/experiments/marginal_digits.yaml",
        [
            "method.epochs=2",
            "task.model.epochs=1",
            f"tracking.cache_dir={tmp_path / 'cache'}",
        ],
    )
    seen: list[tuple[dict, int | None]] = []
    run_experiment(exp, tmp_path / "run", progress=lambda m, total: seen.append((dict(m), total)))
    assert [total for _, total in seen] == [2, 2] and all("total_steps" not in m for m, _ in seen)
    rows = [json.loads(line) for line in (tmp_path / "run/steps.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all("total_steps" not in row for row in rows)


def test_trial_lines_name_knobs_objectives_and_the_last_error_line():
    lines = TrialLines(["test_acc", "forgetting_score"], total=4)
    ok = lines.line("a1", {"method.alpha": 0.125}, {"test_acc": 0.91234, "forgetting_score": 0.05, "x": 1})
    assert "(1/4" in ok and "alpha=0.125" in ok and "test_acc=0.9123" in ok and "forgetting_score=0.05" in ok
    bad = lines.line("b2", {"method.alpha": 0.5}, {}, error="Traceback\n  File x\nValueError: [boom]")
    assert "(2/4" in bad and "1 failed" in bad and "ValueError: \\[boom]" in bad and "Traceback" not in bad


def test_trial_lines_say_what_runs_what_failed_and_when_the_sweep_ends():
    lines = TrialLines(["test_acc"], total=4)
    lines.first, lines.started = 100.0, {"c3": 100.0, "d4": 105.0}
    lines.finished, lines.failed = 2, 1
    assert lines.status(110.0) == "2/4 · 2 running · 1 failed · ETA 0:00:10"  # 5 s a trial so far, 2 left
    lines.started, lines.finished = {}, 4
    assert lines.status(120.0) == "4/4 · 1 failed"


class _Trial:
    def __init__(self, trial_id: str, result: dict | None = None):
        self.trial_id, self.config, self.last_result = trial_id, {"method.alpha": 0.5}, result


def test_on_a_terminal_one_bar_over_the_trials_stays_below_the_lines(monkeypatch, capsys):
    import pickle

    monkeypatch.setenv("FORCE_COLOR", "1")  # rich: stderr is a terminal
    monkeypatch.setenv("TERM", "xterm")
    lines = TrialLines(["test_acc"], total=3)
    lines.setup()
    assert lines._bar is not None
    for trial_id in ("a", "b"):
        lines.on_trial_start(0, [], _Trial(trial_id))
    lines.on_trial_complete(0, [], _Trial("a", {"test_acc": 0.9}))
    (task,) = lines._bar.tasks
    assert task.completed == 1 and task.total == 3 and task.description.startswith("1/3 · 1 running")
    assert pickle.loads(pickle.dumps(lines))._bar is None  # Tune stores callbacks: the bar stays here
    lines.on_experiment_end([])
    assert lines._bar is None and "test_acc=0.9" in capsys.readouterr().err


def test_piped_there_is_no_bar(monkeypatch, capsys):
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    monkeypatch.setenv("TERM", "dumb")
    lines = TrialLines(["test_acc"], total=1)
    lines.setup()
    lines.on_trial_start(0, [], _Trial("a"))
    lines.on_trial_complete(0, [], _Trial("a", {"test_acc": 0.9}))
    lines.on_experiment_end([])
    err = capsys.readouterr().err
    assert lines._bar is None and err.count("\n") == 1 and "trial a (1/1, " in err


def test_a_worker_traceback_is_reduced_to_its_last_lines():
    from otu.errors import last_lines

    text = (
        "Training failed due to worker errors:\n[Rank 0,1 Error Snippet]:\nTraceback (most recent call last):\n"
        '  File "loop.py", line 9, in step\n    load()\nOSError: no such checkpoint: /models/x\n'
    )
    assert last_lines(RuntimeError(text), 2) == "load() | OSError: no such checkpoint: /models/x"
    assert last_lines(RuntimeError("")) == "RuntimeError"
