"""Entry points of the vision family (see :class:`otu.registry.FamilyAPI`)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from otu.registry import Reporter
from otu.spec import Experiment
from otu.vision.methods import method
from otu.vision.metrics import MIAProbe, classifier_metrics
from otu.vision.plots import loss_histograms
from otu.vision.prepare import Prepared
from otu.vision.prepare import prepare as prepare_cached
from otu.vision.spec import VisionEval


def prepare(exp: Experiment, cache_dir: Path) -> Prepared:
    """Splits, original and retain-only oracle (cached under ``cache_dir/vision-<hash>``)."""
    return prepare_cached(exp, cache_dir)


def reference_models(prepared: Prepared) -> dict[str, nn.Module]:
    return {"original": prepared.original, "retrained": prepared.retrained}


def unlearn(
    exp: Experiment, prepared: Prepared, report: Reporter, checkpoint_dir: Path
) -> nn.Module:
    """Run ``exp.method``; the unlearned weights are saved as ``checkpoint_dir/unlearned.pt``."""
    model = method(exp.method.name)(exp, prepared, report)  # type: ignore[attr-defined]
    checkpoint_dir = Path(checkpoint_dir)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), checkpoint_dir / "unlearned.pt")
    return model


def evaluate(exp: Experiment, prepared: Prepared, model: nn.Module) -> dict[str, float]:
    """``test_acc``, ``top2_acc``, ``mia_acc``, ``forgetting_score``, ``nomus``."""
    return classifier_metrics(model, prepared.splits.part("test"), _probe(exp, prepared))


def plots(
    exp: Experiment, prepared: Prepared, models: dict[str, nn.Module], out_dir: Path
) -> list[Path]:
    """``loss_histograms.png``: a panel per model (nothing when ``eval.plots`` is false)."""
    ev: VisionEval = exp.eval  # type: ignore[assignment]
    if not ev.plots:
        return []
    out_dir = Path(out_dir)
    probe = _probe(exp, prepared)
    return [loss_histograms(models, probe, out_dir / "loss_histograms.png")]


def _probe(exp: Experiment, prepared: Prepared) -> MIAProbe:
    ev: VisionEval = exp.eval  # type: ignore[assignment]
    return MIAProbe(
        prepared.splits.part("forget"),
        prepared.splits.part("test"),
        n_splits=ev.mia_splits,
        test_size=ev.mia_test_size,
        feature=ev.mia_feature,
        seed=exp.seed,
    )
