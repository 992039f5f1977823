r"""Shadow models of the per-example membership attacks (``eval.membership``) for a family whose models
are classifiers of indexed examples (vision; tabular data-point unlearning): U-LiRA
(:mod:`otu.classifiers.ulira`) and the NeurIPS 2023 unlearning challenge score
(:mod:`otu.classifiers.challenge`). Plain PyTorch; the family says how its models are built, trained
and unlearned (a :class:`ShadowKit`), the platform fans the shadows out (:mod:`otu.runtime.shadows`).

**U-LiRA** shadows (Hayes et al. 2024, arXiv 2403.01218, §4 "U-LiRA"): originals trained on random
halves D_k of the training set D (here in complementary pairs drawn within F and within R, so every
example is in exactly half of the shadows and each shadow unlearns as many examples), each unlearned
with the audited method and hyperparameters on the forget examples it holds, F ∩ D_k. For a forget
example x the shadows that held it give φ "unlearned" samples, the others φ "retrained" (never saw it)
samples. The attack is scored as a ROC of the claim "M saw x and unlearned it" (M's scores on the
forget set) against "never saw x" (each retrained shadow's score on the same x, its Gaussian refitted
without it): AUC, and TPR at 1 % and 0.1 % FPR. An oracle that never saw F lands near 0.5, a model
that kept F above it.

**Challenge** shadows: N unlearned and N retrained models from the same original (and N more retrained
models for the oracle's own row).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from pydantic import BaseModel
from torch import nn

from otu.cache import cached_dir, content_hash
from otu.classifiers.challenge import challenge_metrics
from otu.classifiers.membership_plots import epsilon_histogram, ulira_roc
from otu.classifiers.train import predict_logits, train_classifier
from otu.classifiers.ulira import fit_gaussians, likelihood_ratio, logit_confidence, retrained_scores, roc_summary
from otu.sections import MembershipAttack

Result = dict[str, np.ndarray]


class Examples(Protocol):
    """Images and labels of all examples, and the index sets into them the audits read."""

    @property
    def images(self) -> torch.Tensor: ...
    @property
    def labels(self) -> torch.Tensor: ...
    @property
    def forget(self) -> torch.Tensor: ...
    @property
    def retain(self) -> torch.Tensor: ...
    @property
    def test(self) -> torch.Tensor: ...


@dataclass(frozen=True)
class ShadowKit:
    """What a family's shadows are made of: its examples and original, and its recipes as callables."""

    examples: Examples
    original: nn.Module
    new_model: Callable[[int], nn.Module]
    """A fresh model of the spec's architecture, initialised from a seed."""
    fit: Callable[[nn.Module, torch.Tensor, int], nn.Module]
    """The spec's training recipe on the examples at the given indices, shuffled from a seed."""
    unlearn: Callable[[nn.Module, torch.Tensor, torch.Tensor, int], nn.Module]
    """The audited method with its hyperparameters: (original, forget indices, retain indices, seed) →
    the unlearned model (eval mode; the original left as it was)."""
    entry: Path
    """The prepared models' cache folder: shadow originals are cached beside it, ``<entry>-shadow-<hash>``
    (a folder inside could fail the entry's digest check)."""


class Recipe(Protocol):
    """A model section's training recipe (``train_classifier``'s settings)."""

    @property
    def epochs(self) -> int: ...
    @property
    def lr(self) -> float: ...
    @property
    def batch_size(self) -> int: ...
    @property
    def weight_decay(self) -> float: ...


def seeded(build: Callable[[], nn.Module]) -> Callable[[int], nn.Module]:
    """:attr:`ShadowKit.new_model` from a builder: ``build()`` under a torch RNG seeded with the given seed
    (the caller's RNG left as it was)."""

    def new_model(seed: int) -> nn.Module:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            return build()

    return new_model


def recipe_fit(data: Examples, spec: Recipe) -> Callable[[nn.Module, torch.Tensor, int], nn.Module]:
    """:attr:`ShadowKit.fit` for ``spec``'s recipe: :func:`~otu.classifiers.train.train_classifier` on the
    examples at the given indices."""

    def fit(model: nn.Module, rows: torch.Tensor, seed: int) -> nn.Module:
        return train_classifier(
            model, data.images[rows], data.labels[rows],
            epochs=spec.epochs, lr=spec.lr, batch_size=spec.batch_size, weight_decay=spec.weight_decay, seed=seed,
        )  # fmt: skip

    return fit


def shadow_tasks(spec: MembershipAttack, method: BaseModel) -> list[dict[str, Any]]:
    """The shadows ``spec`` needs: ``ulira`` — complementary pairs of halves, each trained and unlearned
    with ``method``; ``challenge`` — N runs of the method on the original, N retrained models (the
    reference) and N more (the oracle's own row); ``population`` — none."""
    n, seed, dumped = spec.shadow_models, spec.seed, method.model_dump(mode="json")
    if spec.attack == "ulira":
        pairs = [(j, side) for j in range(n // 2) for side in (0, 1)]
        return [{"kind": "half", "pair": j, "side": side, "seed": seed, "method": dumped} for j, side in pairs]
    if spec.attack == "challenge":
        unlearn = [{"kind": "unlearn", "index": i, "seed": seed, "method": dumped} for i in range(n)]
        sets = [(name, i) for name in ("reference", "control") for i in range(n)]
        retrain = [{"kind": "retrain", "set": name, "index": i, "seed": seed} for name, i in sets]
        return unlearn + retrain
    return []


def _identity(task: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in task.items() if k != "method"}


def task_seed(task: dict[str, Any]) -> int:
    """A training seed drawn from the task's identity (not its method)."""
    return int(content_hash(_identity(task)), 16) % 2**31


def half_mask(size: int, pair: int, side: int, seed: int, stream: int = 0) -> np.ndarray:
    """Membership of each of ``size`` examples in shadow (pair, side): a seeded random half for side 0,
    its complement for side 1 (every example in exactly one of the two); ``stream`` draws
    independent halves of different sets."""
    order = np.random.default_rng([seed, pair, stream]).permutation(size)
    held = np.zeros(size, dtype=bool)
    held[order[: size // 2]] = True
    return held if side == 0 else ~held


def shadow_original(kit: ShadowKit, task: dict[str, Any]) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """Shadow (pair, side)'s original, trained on its half of the training set (cached beside the
    prepared models' folder), and its forget / retain sets F ∩ half, R ∩ half. The halves are drawn
    within F and within R, so every shadow unlearns ⌊|F|/2⌋ or ⌈|F|/2⌉ examples."""
    data, seed = kit.examples, task_seed(task)
    pair, side, half_seed = task["pair"], task["side"], task["seed"]
    forget = data.forget[torch.from_numpy(half_mask(len(data.forget), pair, side, half_seed, 0))]
    retain = data.retain[torch.from_numpy(half_mask(len(data.retain), pair, side, half_seed, 1))]
    train = torch.cat([forget, retain])
    path = cached_dir(
        kit.entry.parent / f"{kit.entry.name}-shadow-{content_hash(_identity(task))}",
        lambda tmp: torch.save(kit.fit(kit.new_model(seed), train, seed).state_dict(), tmp / "original.pt"),
    )
    original = kit.new_model(seed)
    original.load_state_dict(torch.load(path / "original.pt", weights_only=True))
    return original.eval(), forget, retain


def forget_confidence(model: nn.Module, data: Examples) -> np.ndarray:
    """φ of every forget example under ``model``, in ``data.forget`` order."""
    return logit_confidence(predict_logits(model, data.images[data.forget]), data.labels[data.forget])


def accuracy(model: nn.Module, data: Examples, rows: torch.Tensor) -> float:
    return float((predict_logits(model, data.images[rows]).argmax(dim=1) == data.labels[rows]).float().mean())


def train_shadow(kit: ShadowKit, task: dict[str, Any]) -> Result:
    """One shadow of :func:`shadow_tasks`: its φ on the (real) forget examples, and per kind ``held``
    (ulira: which forget examples its half held) or ``retain_acc``/``test_acc`` (challenge)."""
    data, seed = kit.examples, task_seed(task)
    if task["kind"] == "half":
        original, forget, retain = shadow_original(kit, task)
        model = kit.unlearn(original, forget, retain, seed)
        return {"phi": forget_confidence(model, data), "held": np.isin(data.forget.numpy(), forget.numpy())}
    if task["kind"] == "unlearn":
        model = kit.unlearn(kit.original, data.forget, data.retain, seed)
    else:
        model = kit.fit(kit.new_model(seed), data.retain, seed)
    return {
        "phi": forget_confidence(model, data),
        "retain_acc": np.array(accuracy(model, data, data.retain)),
        "test_acc": np.array(accuracy(model, data, data.test)),
    }


# ---------------------------------------------------------------- the audits


def ulira(
    models: Mapping[str, nn.Module], data: Examples, shadows: list[Result]
) -> tuple[dict[str, dict[str, float]], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """U-LiRA rows per model (:func:`roc_summary`), the per-forget-example table (Gaussian fits, each
    model's φ and score) and the ROC inputs (each model's scores and, as ``negatives``, the
    never-saw-it shadows')."""
    phi = np.stack([s["phi"] for s in shadows])
    held = np.stack([s["held"] for s in shadows])
    fits = fit_gaussians(phi, held)
    negatives = retrained_scores(phi, held, fits)
    table: dict[str, np.ndarray] = {
        "index": data.forget.numpy(),
        "label": data.labels[data.forget].numpy(),
        "mu_unlearned": fits.mu_unlearned,
        "sigma_unlearned": fits.sigma_unlearned,
        "mu_retrained": fits.mu_retrained,
        "sigma_retrained": fits.sigma_retrained,
    }
    rows, scores = {}, {"negatives": negatives}
    for name, model in models.items():
        phi_m = forget_confidence(model, data)
        scores[name] = likelihood_ratio(phi_m, fits)
        rows[name] = roc_summary(scores[name], negatives)
        table[f"phi_{name}"], table[f"score_{name}"] = phi_m, scores[name]
    return rows, table, scores


def challenge(
    models: Mapping[str, nn.Module], data: Examples, tasks: list[dict[str, Any]], shadows: list[Result]
) -> tuple[dict[str, dict[str, float]], dict[str, np.ndarray]]:
    """Challenge rows per model and the per-forget-example ε table. The retrained reference is the
    ``reference`` set; ``unlearned`` is scored by the method's N runs on the original, ``retrained`` by
    the ``control`` set (retraining as the method), any other model by N copies of itself (a
    deterministic "method": the scorer's peaky-distribution rule gives it the ε cap)."""
    groups: dict[str, list[Result]] = {}
    for task, result in zip(tasks, shadows, strict=True):
        groups.setdefault("unlearned" if task["kind"] == "unlearn" else task["set"], []).append(result)
    groups["retrained"] = groups.pop("control")
    reference = groups.pop("reference")

    def summary(results: list[Result]) -> tuple[np.ndarray, tuple[float, float]]:
        accs = (float(np.mean([r["retain_acc"] for r in results])), float(np.mean([r["test_acc"] for r in results])))
        return np.stack([r["phi"] for r in results]), accs

    ref_phi, ref_accs = summary(reference)
    rows, table = {}, {"index": data.forget.numpy(), "label": data.labels[data.forget].numpy()}
    for name, model in models.items():
        if name in groups:
            phi, accs = summary(groups[name])
        else:
            phi = np.tile(forget_confidence(model, data), (len(reference), 1))
            accs = (accuracy(model, data, data.retain), accuracy(model, data, data.test))
        rows[name], table[f"epsilon_{name}"] = challenge_metrics(
            phi, ref_phi, {"unlearned": accs, "retrained": ref_accs}
        )
    return rows, table


def audit(
    spec: MembershipAttack,
    method: BaseModel,
    models: Mapping[str, nn.Module],
    data: Examples,
    shadows: list[Result],
    out_dir: Path,
    plots: bool,
) -> dict[str, dict[str, float]]:
    """``spec``'s attack rows per model (what :meth:`otu.family.Membership.membership` returns), from
    the shadows of :func:`shadow_tasks` ``(spec, method)``; writes ``membership-<attack>.parquet``
    (one row per forget example) and, with ``plots``, ``plots/ulira_roc.png`` or
    ``plots/epsilon_histogram.png``."""
    figure: Callable[[Path], Path]
    if spec.attack == "ulira":
        rows, table, scores = ulira(models, data, shadows)
        name, figure = "ulira_roc.png", lambda path: ulira_roc(scores, path)
    else:
        rows, table = challenge(models, data, shadow_tasks(spec, method), shadows)
        eps = {k.removeprefix("epsilon_"): v for k, v in table.items() if k.startswith("epsilon_")}
        name, figure = "epsilon_histogram.png", lambda path: epsilon_histogram(eps, path)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(table), Path(out_dir) / f"membership-{spec.attack}.parquet")
    if plots:
        figure(Path(out_dir) / "plots" / name)
    return rows
