"""The vision family (see :class:`otu.family.Family`): classifier instance unlearning on images."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from otu.classifiers.membership import audit
from otu.classifiers.train import train_classifier
from otu.errors import DataError
from otu.family import Attacks, Family, Membership, RunContext, SavedModels, ShadowPlan
from otu.vision import membership as mi
from otu.vision import prepare as preparation
from otu.vision.metrics import MIAProbe, classifier_metrics
from otu.vision.plots import loss_histograms
from otu.vision.prepare import Prepared
from otu.vision.spec import METHODS, VisionJob

CHECKPOINT_FILE = "unlearned.pt"


class VisionFamily(Family, SavedModels, Attacks, Membership):
    def prepare(self, job: VisionJob, ctx: RunContext) -> Prepared:
        """Splits, original and retain-only oracle (cached under ``ctx.cache_dir/vision-<hash>``)."""
        return preparation.prepare(job, ctx)

    def reference_models(self, prepared: Prepared) -> dict[str, nn.Module]:
        return {"original": prepared.original, "retrained": prepared.retrained}

    def unlearn(self, job: VisionJob, prepared: Prepared, ctx: RunContext) -> nn.Module:
        """Run ``job.method``; the unlearned weights are saved as ``ctx.checkpoint_dir/unlearned.pt``."""
        model = METHODS[job.method.name].load()(job, prepared, ctx)
        if ctx.checkpoint_dir is not None:
            ctx.checkpoint_dir.mkdir(parents=True, exist_ok=True)
            torch.save(model.state_dict(), ctx.checkpoint_dir / CHECKPOINT_FILE)
        return model

    def load_unlearned(self, job: VisionJob, prepared: Prepared, checkpoint: Path) -> nn.Module:
        return self.load_checkpoint(job, prepared, str(checkpoint))

    def load_checkpoint(self, job: VisionJob, prepared: Prepared, path: str) -> nn.Module:
        """A run's checkpoint directory (its ``unlearned.pt``) or a state-dict file of the spec's net."""
        file = Path(path) / CHECKPOINT_FILE if Path(path).is_dir() else Path(path)
        model = prepared.new_model()
        try:
            model.load_state_dict(torch.load(file, weights_only=True, map_location="cpu"))
        except (OSError, RuntimeError, ValueError) as err:
            raise DataError(f"--model: cannot load a {job.model.arch} state dict from {file}: {err}") from None
        return model.eval()

    def attack_labels(self, job: VisionJob) -> list[str]:
        return [a.label for a in job.eval.robustness]

    def attacked(self, job: VisionJob, prepared: Prepared, model: nn.Module, seed: int) -> dict[str, tuple[dict, dict]]:
        """k-shot relearning: a copy fine-tuned on a seeded ``shots`` of the forget images; it and the
        model itself scored with the other forget images as the forget set."""
        out = {}
        for attack in job.eval.robustness:
            shots, rest = relearn_shots(prepared, attack.shots, seed)
            images, labels = prepared.splits.images[shots], prepared.splits.labels[shots]
            relearned = train_classifier(
                copy.deepcopy(model), images, labels,
                epochs=attack.epochs, lr=attack.lr, batch_size=attack.batch_size, weight_decay=0.0, seed=seed,
            )  # fmt: skip
            out[attack.label] = (self.evaluate(job, rest, relearned), self.evaluate(job, rest, model))
        return out

    def evaluate(self, job: VisionJob, prepared: Prepared, model: nn.Module) -> dict[str, float]:
        """``test_acc``, ``top2_acc``, ``mia_acc``, ``forgetting_score``, ``nomus``."""
        return classifier_metrics(model, prepared.splits.part("test"), _probe(job, prepared))

    def plots(self, job: VisionJob, prepared: Prepared, models: dict[str, nn.Module], out_dir: Path) -> list[Path]:
        """``loss_histograms.png``: a panel per model (nothing when ``eval.plots`` is false)."""
        if not job.eval.plots:
            return []
        return [loss_histograms(models, _probe(job, prepared), Path(out_dir) / "loss_histograms.png")]

    def shadow_plan(self, job: VisionJob, prepared: Prepared, seed: int) -> ShadowPlan:
        """``eval.membership``'s shadows (:func:`otu.vision.membership.shadow_tasks`)."""
        return ShadowPlan(mi.shadow_tasks(job), job.eval.membership.parallel)

    def train_shadow(
        self, job: VisionJob, prepared: Prepared, task: dict[str, Any], ctx: RunContext
    ) -> dict[str, np.ndarray]:
        return mi.train_shadow(job, prepared, task, ctx)

    def membership(
        self,
        job: VisionJob,
        prepared: Prepared,
        models: Mapping[str, nn.Module],
        shadows: list[dict[str, Any]],
        out_dir: Path,
    ) -> dict[str, dict[str, float]]:
        """U-LiRA or challenge rows per model (:func:`otu.classifiers.membership.audit`):
        ``membership-<attack>.parquet`` (one row per forget image) and, with ``eval.plots``,
        ``plots/ulira_roc.png`` or ``plots/epsilon_histogram.png``."""
        return audit(job.eval.membership, job.method, models, prepared.splits, shadows, out_dir, job.eval.plots)


def relearn_shots(prepared: Prepared, shots: int, seed: int) -> tuple[torch.Tensor, Prepared]:
    """A seeded ``shots`` of the forget images, and the task with the others as its forget set."""
    forget = prepared.splits.forget
    if shots >= len(forget):
        raise DataError(
            f"eval.robustness: relearn shots {shots} of {len(forget)} forget images leaves none to score; give fewer"
        )
    order = torch.randperm(len(forget), generator=torch.Generator().manual_seed(seed))
    rest = replace(prepared.splits, forget=forget[order[shots:]].sort().values)
    return forget[order[:shots]].sort().values, replace(prepared, splits=rest)


def _probe(job: VisionJob, prepared: Prepared) -> MIAProbe:
    ev = job.eval
    return MIAProbe(
        prepared.splits.part("forget"),
        prepared.splits.part("test"),
        n_splits=ev.mia_splits,
        test_size=ev.mia_test_size,
        feature=ev.mia_feature,
        seed=prepared.seed,
        protocol=ev.mia_protocol,
    )


FAMILY = VisionFamily()
