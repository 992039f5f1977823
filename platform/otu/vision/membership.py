r"""The vision family's shadow models for per-example membership inference (``eval.membership``):
U-LiRA (:mod:`otu.classifiers.ulira`) and the NeurIPS 2023 unlearning challenge score
(:mod:`otu.classifiers.challenge`). Plain PyTorch; the platform fans the shadows out
(:mod:`otu.runtime.shadows`).

**U-LiRA** shadows: originals trained on random halves D_k of the training set D (here in
complementary pairs drawn within F and within R, so every example is in exactly half of the shadows
and each shadow unlearns as many images), each unlearned with the audited method and hyperparameters
on the forget examples it holds, F ∩ D_k. For a forget example x the shadows that held it give φ
"unlearned" samples, the others φ "retrained" (never saw it) samples. The attack is scored as a ROC
of the claim "M saw x and unlearned it" (M's scores on the forget set) against "never saw x" (each
retrained shadow's score on the same x, its Gaussian refitted without it): AUC, and TPR at 1 % and
0.1 % FPR. An oracle that never saw F lands near 0.5, a model that kept F above it.

**Challenge** shadows: N unlearned and N retrained models from the same original (and N more retrained
models for the oracle's own row).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from otu.cache import cached_dir, content_hash
from otu.classifiers.challenge import challenge_metrics
from otu.classifiers.models import build_model
from otu.classifiers.train import predict_logits, train_classifier
from otu.classifiers.ulira import fit_gaussians, likelihood_ratio, logit_confidence, retrained_scores, roc_summary
from otu.family import RunContext
from otu.vision.data import Splits
from otu.vision.prepare import Prepared
from otu.vision.spec import METHODS, VisionJob


def shadow_tasks(job: VisionJob) -> list[dict[str, Any]]:
    """The shadows ``job.eval.membership`` needs: ``ulira`` — complementary pairs of halves, each
    trained and unlearned with ``job.method``; ``challenge`` — N runs of the method on the original, N
    retrained models (the reference) and N more (the oracle's own row)."""
    spec = job.eval.membership
    n, seed = spec.shadow_models, spec.seed
    method = job.method.model_dump(mode="json")
    if spec.attack == "ulira":
        pairs = [(j, side) for j in range(n // 2) for side in (0, 1)]
        return [{"kind": "half", "pair": j, "side": side, "seed": seed, "method": method} for j, side in pairs]
    if spec.attack == "challenge":
        unlearn = [{"kind": "unlearn", "index": i, "seed": seed, "method": method} for i in range(n)]
        sets = [(name, i) for name in ("reference", "control") for i in range(n)]
        retrain = [{"kind": "retrain", "set": name, "index": i, "seed": seed} for name, i in sets]
        return unlearn + retrain
    return []


def task_seed(task: dict[str, Any]) -> int:
    """A training seed drawn from the task's identity (not its method)."""
    return int(content_hash({k: v for k, v in task.items() if k != "method"}), 16) % 2**31


def half_mask(size: int, pair: int, side: int, seed: int, stream: int = 0) -> np.ndarray:
    """Membership of each of ``size`` examples in shadow (pair, side): a seeded random half for side 0,
    its complement for side 1 (every example in exactly one of the two); ``stream`` draws
    independent halves of different sets."""
    order = np.random.default_rng([seed, pair, stream]).permutation(size)
    held = np.zeros(size, dtype=bool)
    held[order[: size // 2]] = True
    return held if side == 0 else ~held


def _seeded_model(job: VisionJob, splits: Splits, seed: int) -> Callable[[], nn.Module]:
    _, channels, height, _ = splits.images.shape

    def new_model() -> nn.Module:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            return build_model(job.model.arch, splits.num_classes, channels, height, job.model.width)

    return new_model


def _train(
    job: VisionJob, new_model: Callable[[], nn.Module], splits: Splits, idx: torch.Tensor, seed: int
) -> nn.Module:
    spec = job.model
    return train_classifier(
        new_model(), splits.images[idx], splits.labels[idx],
        epochs=spec.epochs, lr=spec.lr, batch_size=spec.batch_size, weight_decay=spec.weight_decay, seed=seed,
    )  # fmt: skip


def _unlearn(job: VisionJob, prepared: Prepared, ctx: RunContext, seed: int) -> nn.Module:
    run_ctx = RunContext(seed=seed, compute=ctx.compute, cache_dir=ctx.cache_dir)
    return METHODS[job.method.name].load()(job, replace(prepared, seed=seed), run_ctx).eval()


def _shadow_original(job: VisionJob, prepared: Prepared, task: dict[str, Any], ctx: RunContext) -> Prepared:
    """The task with shadow (pair, side)'s half as its training set: the shadow original (trained on the
    half, cached beside the prepared models' folder: ``vision-<hash>-shadow-<hash>``) and F ∩ half /
    R ∩ half as its forget / retain sets. The halves are drawn within F and within R, so every shadow
    unlearns ⌊|F|/2⌋ or ⌈|F|/2⌉ images."""
    splits, seed = prepared.splits, task_seed(task)
    pair, side, half_seed = task["pair"], task["side"], task["seed"]
    forget = splits.forget[torch.from_numpy(half_mask(len(splits.forget), pair, side, half_seed, 0))]
    retain = splits.retain[torch.from_numpy(half_mask(len(splits.retain), pair, side, half_seed, 1))]
    train = torch.cat([forget, retain])
    new_model = _seeded_model(job, splits, seed)
    prepared_dir = Path(prepared.cache_path)  # beside it: a folder inside would fail its digest check
    name = f"{prepared_dir.name}-shadow-{content_hash({k: v for k, v in task.items() if k != 'method'})}"
    path = cached_dir(
        prepared_dir.parent / name,
        lambda tmp: torch.save(_train(job, new_model, splits, train, seed).state_dict(), tmp / "original.pt"),
    )
    original = new_model()
    original.load_state_dict(torch.load(path / "original.pt", weights_only=True))
    shadow_splits = replace(splits, forget=forget, retain=retain)
    return replace(prepared, splits=shadow_splits, original=original.eval(), new_model=new_model, seed=seed)


def forget_confidence(model: nn.Module, splits: Splits) -> np.ndarray:
    """φ of every forget image under ``model``, in ``splits.forget`` order."""
    images, labels = splits.part("forget")
    return logit_confidence(predict_logits(model, images), labels)


def _accuracy(model: nn.Module, splits: Splits, part: str) -> float:
    images, labels = splits.part(part)
    return float((predict_logits(model, images).argmax(dim=1) == labels).float().mean())


def train_shadow(job: VisionJob, prepared: Prepared, task: dict[str, Any], ctx: RunContext) -> dict[str, np.ndarray]:
    """One shadow of :func:`shadow_tasks`: its φ on the (real) forget images, and per kind ``held``
    (ulira: which forget images its half held) or ``retain_acc``/``test_acc`` (challenge)."""
    splits, seed = prepared.splits, task_seed(task)
    if task["kind"] == "half":
        shadow = _shadow_original(job, prepared, task, ctx)
        model = _unlearn(job, shadow, ctx, seed)
        held = np.isin(splits.forget.numpy(), shadow.splits.forget.numpy())
        return {"phi": forget_confidence(model, splits), "held": held}
    if task["kind"] == "unlearn":
        model = _unlearn(job, prepared, ctx, seed)
    else:
        model = _train(job, _seeded_model(job, splits, seed), splits, splits.retain, seed)
    return {
        "phi": forget_confidence(model, splits),
        "retain_acc": np.array(_accuracy(model, splits, "retain")),
        "test_acc": np.array(_accuracy(model, splits, "test")),
    }


# ---------------------------------------------------------------- the audits


def ulira(
    models: Mapping[str, nn.Module], splits: Splits, shadows: list[dict[str, np.ndarray]]
) -> tuple[dict[str, dict[str, float]], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """U-LiRA rows per model (:func:`roc_summary`), the per-forget-image table (Gaussian fits, each
    model's φ and score) and the ROC inputs (each model's scores and, as ``negatives``, the
    never-saw-it shadows')."""
    phi = np.stack([s["phi"] for s in shadows])
    held = np.stack([s["held"] for s in shadows])
    fits = fit_gaussians(phi, held)
    negatives = retrained_scores(phi, held, fits)
    table: dict[str, np.ndarray] = {
        "index": splits.forget.numpy(),
        "label": splits.labels[splits.forget].numpy(),
        "mu_unlearned": fits.mu_unlearned,
        "sigma_unlearned": fits.sigma_unlearned,
        "mu_retrained": fits.mu_retrained,
        "sigma_retrained": fits.sigma_retrained,
    }
    rows, scores = {}, {"negatives": negatives}
    for name, model in models.items():
        phi_m = forget_confidence(model, splits)
        scores[name] = likelihood_ratio(phi_m, fits)
        rows[name] = roc_summary(scores[name], negatives)
        table[f"phi_{name}"], table[f"score_{name}"] = phi_m, scores[name]
    return rows, table, scores


def challenge(
    models: Mapping[str, nn.Module], splits: Splits, tasks: list[dict[str, Any]], shadows: list[dict[str, np.ndarray]]
) -> tuple[dict[str, dict[str, float]], dict[str, np.ndarray]]:
    """Challenge rows per model and the per-forget-image ε table. The retrained reference is the
    ``reference`` set; ``unlearned`` is scored by the method's N runs on the original, ``retrained`` by
    the ``control`` set (retraining as the method), any other model by N copies of itself (a
    deterministic "method": the scorer's peaky-distribution rule gives it the ε cap)."""
    groups: dict[str, list[dict[str, np.ndarray]]] = {}
    for task, result in zip(tasks, shadows, strict=True):
        groups.setdefault("unlearned" if task["kind"] == "unlearn" else task["set"], []).append(result)
    groups["retrained"] = groups.pop("control")
    reference = groups.pop("reference")

    def summary(results: list[dict[str, np.ndarray]]) -> tuple[np.ndarray, tuple[float, float]]:
        accs = (float(np.mean([r["retain_acc"] for r in results])), float(np.mean([r["test_acc"] for r in results])))
        return np.stack([r["phi"] for r in results]), accs

    ref_phi, ref_accs = summary(reference)
    rows, table = {}, {"index": splits.forget.numpy(), "label": splits.labels[splits.forget].numpy()}
    for name, model in models.items():
        if name in groups:
            phi, accs = summary(groups[name])
        else:
            phi = np.tile(forget_confidence(model, splits), (len(reference), 1))
            accs = (_accuracy(model, splits, "retain"), _accuracy(model, splits, "test"))
        rows[name], table[f"epsilon_{name}"] = challenge_metrics(
            phi, ref_phi, {"unlearned": accs, "retrained": ref_accs}
        )
    return rows, table
