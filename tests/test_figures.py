"""Figures checked for what a reader needs in them, not only for a file: reference points where
they belong, error bars with seeds, labels whose text boxes never overlap, one diagnostic figure per
run, and a report page that carries its images inline."""

from __future__ import annotations

import base64
import itertools
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.collections import LineCollection, PathCollection

from otu.classifiers.models import build_model
from otu.cli import main
from otu.figures import label_boxes, place_labels, plt
from otu.llm.evaluation import ModelStats
from otu.llm.plots import splits_figure
from otu.report.front_plot import front_figure
from otu.report.pareto import pareto_front
from otu.report.summary import reference_metrics, write_report
from otu.spec import dump_yaml, load_sweep
from otu.tabular.plots import frontier_figure
from otu.tracking.results import TRIALS_FILE, TrialsTable
from otu.vision.metrics import MIAProbe
from otu.vision.plots import loss_histogram_figure

REPO = Path(__file__).resolve().parents[1]
METRICS = ["test_acc", "forgetting_score"]


def no_overlaps(ax) -> bool:
    boxes = label_boxes(ax)
    return not any(a.overlaps(b) for a, b in itertools.combinations(boxes, 2))


def scatter_points(ax, label: str) -> np.ndarray:
    found = [c for c in ax.collections if isinstance(c, PathCollection) and c.get_label() == label]
    assert found, f"no scatter labelled {label!r}"
    return np.asarray(found[0].get_offsets())


def synthetic_sweep(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    alpha = rng.uniform(0.01, 1, n)
    return pd.DataFrame(
        {
            "trial_id": [f"t{i:03d}" for i in range(n)],
            "status": "TERMINATED",
            "config/method.alpha": alpha,
            "config/method.ot_weight": rng.choice([0.5, 1.0, 3.0], n),
            "test_acc": 0.95 - 0.2 * alpha + rng.normal(0, 0.01, n),
            "test_acc_std": 0.01,
            "forgetting_score": 0.3 * np.exp(-3 * alpha) + rng.normal(0, 0.01, n),
            "forgetting_score_std": 0.008,
        }
    )


@pytest.mark.parametrize("trials", [6, 150])
def test_pareto_plot_has_references_error_bars_and_labels_that_do_not_overlap(trials):
    table = synthetic_sweep(trials)
    front = pareto_front(table, METRICS, ["max", "min"])
    refs = {
        "original": {"test_acc": (0.97, 0.0), "forgetting_score": (0.3, 0.01)},
        "retrained": {"test_acc": (0.955, 0.004), "forgetting_score": (0.02, 0.005)},
    }
    fig = front_figure(
        table, front, METRICS, ["max", "min"], ["config/method.alpha", "config/method.ot_weight"], "synthetic", refs
    )
    ax = fig.axes[0]
    assert scatter_points(ax, "original model").tolist() == [[0.97, 0.3]]
    assert scatter_points(ax, "retrained oracle").tolist() == [[0.955, 0.02]]
    assert len(scatter_points(ax, f"trials (n={trials})")) == trials
    assert any(isinstance(c, LineCollection) for c in ax.collections)  # seed error bars
    labels = [t.get_text() for t in ax.texts if t.get_gid() == "otu-label"]
    assert {"original", "retrained"} <= set(labels)
    assert sorted(int(x) for x in labels if x.isdigit()) == list(range(1, len(front) + 1))
    assert no_overlaps(ax)
    cells = fig.axes[1].tables[0].get_celld()
    assert cells[(0, 0)].get_text().get_text() == "#" and max(r for r, _ in cells) == len(front)
    plt.close(fig)


def test_labels_on_coinciding_points_are_dropped_rather_than_overlapping():
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    fig.canvas.draw()
    placed = place_labels(ax, [0.5] * 60, [0.5] * 60, [f"label {i}" for i in range(60)])
    assert 0 < len(placed) < 60 and no_overlaps(ax)
    plt.close(fig)


def test_vision_panel_shows_every_model_on_the_same_bins():
    torch.manual_seed(0)
    images, labels = torch.rand(40, 1, 8, 8), torch.arange(40) % 4
    probe = MIAProbe(
        (images[:20], labels[:20]), (images[20:], labels[20:]), n_splits=2, test_size=0.5, feature="loss", seed=0
    )
    models = {name: build_model("cnn", 4, width=4) for name in ("original", "retrained", "unlearned")}
    fig = loss_histogram_figure(models, probe)
    assert [ax.get_title() for ax in fig.axes] == ["original", "retrained", "unlearned"]
    edges = [[p.get_x() for p in ax.patches] for ax in fig.axes]
    assert all(len(e) == 2 * 39 and e == edges[0] for e in edges)  # forget + unseen, shared bins
    plt.close(fig)


def test_llm_panel_has_the_oracle_beside_the_original_and_unlearned():
    rng = np.random.default_rng(0)
    splits = ("forget", "retain", "world")

    def stats(level: float) -> ModelStats:
        return ModelStats(
            prob={s: np.full(5, level) for s in splits},
            rouge={s: np.full(5, level / 2) for s in splits},
            truth_ratio={"forget": rng.uniform(0.2, 2, 5)},
            exact_memorization={},
            extraction_strength={},
            mia={},
            generations={},
        )

    fig = splits_figure({"original": stats(0.9), "retrained": stats(0.3), "unlearned": stats(0.2)})
    prob = fig.axes[0]
    assert [t.get_text() for t in prob.get_legend().get_texts()] == ["original", "retrained", "unlearned"]
    heights = [p.get_height() for p in prob.patches]
    assert heights == pytest.approx([0.9] * 3 + [0.3] * 3 + [0.2] * 3)
    assert len(fig.axes) == 3 and fig.axes[2].patches  # truth-ratio histogram in the same figure
    plt.close(fig)


def test_tabular_frontier_draws_both_variants_and_marks_the_original():
    def curve(gain: float):
        return [{"t": t, "leakage_auc": 0.8 - 0.3 * t, "utility_auc": 0.75 + gain * t} for t in np.linspace(0, 1, 11)]

    fig = frontier_figure({"gaussian": curve(0.01), "empirical": curve(0.02)}, "gaussian", 0.5)
    ax = fig.axes[0]
    assert {line.get_label() for line in ax.lines} >= {"gaussian barycenter", "empirical barycenter"}
    assert scatter_points(ax, "original (t = 0)").tolist() == [[0.8, 0.75]]
    labels = [t.get_text() for t in ax.texts if t.get_gid() == "otu-label"]
    assert len(labels) == 11 and no_overlaps(ax)
    plt.close(fig)


def _run(tmp_path: Path, out: Path, t: float) -> None:
    spec = REPO / "sweeps/experiments/barycenter_tabular.yaml"
    sets = [
        f"task.data.path={REPO / 'platform/otu/tabular/data/diabetes.csv'}",
        "eval.frontier_points=3",
        "eval.classifiers=[logistic]",
        f"method.t={t}",
        f"tracking.cache_dir={tmp_path / 'cache'}",
    ]
    code = main(
        [
            "run",
            str(spec),
            "--out",
            str(out),
            "--tracking-uri",
            f"sqlite:///{tmp_path / 'mlflow.db'}",
            *(arg for s in sets for arg in ("--set", s)),
        ]
    )
    assert code == 0


def test_tiny_runs_give_one_diagnostic_each_and_a_self_contained_report(tmp_path):
    sweep = load_sweep(REPO / "sweeps/barycenter_tabular.yaml")
    sweep_dir = tmp_path / "sweep"
    sweep_dir.mkdir()
    dump_yaml(sweep, sweep_dir / "sweep.yaml")
    for trial_id, t in (("a", 0.3), ("b", 1.0)):
        run_dir = sweep_dir / "trials" / trial_id
        _run(tmp_path, run_dir, t)
        assert [p.name for p in (run_dir / "plots").iterdir()] == ["frontier.png"]
        metrics = json.loads((run_dir / "metrics.json").read_text())["unlearned"]
        TrialsTable(sweep_dir / TRIALS_FILE).upsert(
            {"trial_id": trial_id, "status": "TERMINATED", "config/method.t": t, **metrics}
        )

    refs = reference_metrics(sweep_dir)
    assert set(refs) == {"original"} and refs["original"]["utility_auc"][1] == 0.0
    files = write_report(sweep_dir, sweep)
    assert [f.name for f in files] == ["summary.md", "pareto.png", "axis.png", "report.html"]  # one knob: axis.png
    assert "## Reference models" in (sweep_dir / "summary.md").read_text()
    page = (sweep_dir / "report.html").read_text()
    sources = re.findall(r'src="([^"]*)"', page)
    assert len(sources) >= 2 and all(s.startswith("data:image/png;base64,") for s in sources)  # Pareto, axis
    assert base64.b64decode(sources[0].split(",", 1)[1])[:4] == b"\x89PNG"
    assert "Reference models" in page and "<table" in page

    assert main(["report", str(sweep_dir / "trials" / "a")]) == 0
    run_page = (sweep_dir / "trials" / "a" / "report.html").read_text()
    assert len(re.findall(r'src="data:image/png;base64,', run_page)) == 1 and "utility_auc" in run_page
