"""Pareto front and sweep report on hand-made tables."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from otu.report.pareto import pareto_front, pareto_mask


def test_pareto_mask_max_min():
    # objective 1 maximised, objective 2 minimised
    values = np.array([[0.9, 0.10], [0.8, 0.05], [0.7, 0.20], [0.9, 0.10], [0.95, 0.30]])
    mask = pareto_mask(values, ["max", "min"])
    assert mask.tolist() == [True, True, False, True, True]


def test_pareto_front_ignores_failed_and_incomplete_rows():
    table = pd.DataFrame(
        {
            "trial_id": ["a", "b", "c", "d"],
            "status": ["TERMINATED", "TERMINATED", "ERROR", "TERMINATED"],
            "acc": [0.9, 0.8, 1.0, np.nan],
            "fs": [0.2, 0.1, 0.0, 0.0],
        }
    )
    front = pareto_front(table, ["acc", "fs"], ["max", "min"])
    assert sorted(front["trial_id"]) == ["a", "b"]


def test_brute_force_agreement_on_random_points():
    rng = np.random.default_rng(0)
    values = rng.random((60, 3))
    modes = ["max", "min", "max"]
    mask = pareto_mask(values, modes)
    signed = values * np.array([1, -1, 1])
    for i in range(len(values)):
        dominated = any(np.all(signed[j] >= signed[i]) and np.any(signed[j] > signed[i]) for j in range(len(values)))
        assert mask[i] == (not dominated)


def test_compare_sweeps_lists_each_front(tmp_path):
    from otu.cli import main
    from otu.spec import dump_yaml, load_sweep
    from otu.tracking.results import TrialsTable

    repo = Path(__file__).resolve().parents[1]
    fronts = {}
    for method, accs, fss in [("dlfd", [0.9, 0.8, 0.7], [0.2, 0.1, 0.15]), ("finetune", [0.95, 0.85], [0.3, 0.2])]:
        sweep = load_sweep(repo / "sweeps/quickstart.yaml", [f"name=sweep-{method}"])
        d = tmp_path / method
        d.mkdir()
        dump_yaml(sweep, d / "sweep.yaml")
        for i, (acc, fs) in enumerate(zip(accs, fss, strict=True)):
            TrialsTable(d / "trials.parquet").upsert(
                {"trial_id": f"{method}-{i}", "status": "TERMINATED", "test_acc": acc, "forgetting_score": fs}
            )
        fronts[method] = d
    out = tmp_path / "cmp"
    assert main(["report", str(fronts["dlfd"]), str(fronts["finetune"]), "--out", str(out)]) == 0
    text = (out / "compare.md").read_text()
    assert "dlfd-0" in text and "dlfd-1" in text and "dlfd-2" not in text  # 0.7/0.15 is dominated by 0.8/0.1
    assert "finetune-0" in text and "finetune-1" in text
    assert (out / "compare.png").stat().st_size > 0
    assert (fronts["dlfd"] / "summary.md").is_file()


def test_trials_table_keeps_one_row_per_trial_and_mixed_knob_types(tmp_path):
    from otu.tracking.results import TrialsTable

    table = TrialsTable(tmp_path / "trials.parquet")
    table.upsert({"trial_id": "a", "status": "ERROR", "config/method.x": 1.5, "error": "boom"})
    table.upsert({"trial_id": "b", "status": "TERMINATED", "config/method.x": "auto", "test_acc": 0.9})
    table.upsert({"trial_id": "a", "status": "TERMINATED", "config/method.x": 1.5, "test_acc": 0.8})
    rows = table.read().set_index("trial_id")
    assert sorted(rows.index) == ["a", "b"] and table.finished_ids() == {"a", "b"}
    assert rows.loc["a", "config/method.x"] == "1.5" and rows.loc["b", "config/method.x"] == "auto"
    assert rows.loc["a", "test_acc"] == 0.8


def test_a_one_knob_sweep_plots_its_objectives_against_the_knob_with_each_values_oracle(tmp_path):
    """MUSE's scalability figure as one sweep: ``axis.png`` over the swept fold, in natural order, the
    unlearned mean per value and that value's own oracle (each fold's oracle differs)."""
    import json

    from otu.report.axis_plot import _ordered, _reference, plot_axis
    from otu.tracking.results import TrialsTable

    folds = ["forget_10", "forget_2", "forget_1"]
    for i, fold in enumerate(folds):
        TrialsTable(tmp_path / "trials.parquet").upsert(
            {"trial_id": f"t{i}", "status": "TERMINATED", "config/task.data.muse.forget": fold, "knowmem_f": 0.1 * i}
        )
        trial = tmp_path / "trials" / f"t{i}"
        trial.mkdir(parents=True)
        rows = {
            "original": {"knowmem_f": 0.9},
            "retrained": {"knowmem_f": 0.2 + i},
            "unlearned": {"knowmem_f": 0.1 * i},
        }
        (trial / "metrics.json").write_text(json.dumps(rows))
    table = TrialsTable(tmp_path / "trials.parquet").read()
    assert _ordered(folds) == ["forget_1", "forget_2", "forget_10"] and _ordered([3, 1.5, 2]) == [1.5, 2, 3]
    assert _reference(tmp_path, table[table["trial_id"] == "t1"]["trial_id"], "retrained", "knowmem_f") == 1.2
    path = plot_axis(tmp_path, table, "config/task.data.muse.forget", ["knowmem_f"], tmp_path / "axis.png")
    assert path is not None and path.stat().st_size > 1000
    assert (
        plot_axis(tmp_path, table.iloc[0:0], "config/task.data.muse.forget", ["knowmem_f"], tmp_path / "x.png") is None
    )
