"""Entry points of the generative family (see :class:`otu.registry.FamilyAPI`)."""

from __future__ import annotations

from pathlib import Path

from otu.generative.methods import method
from otu.generative.metrics import generator_metrics
from otu.generative.models import MLPGenerator, save_generator
from otu.generative.plots import class_histogram, sample_grids
from otu.generative.prepare import Prepared
from otu.generative.prepare import prepare as prepare_cached
from otu.generative.spec import GenerativeEval
from otu.registry import Reporter
from otu.spec import Experiment

CHECKPOINT_FILE = "generator.pt"


def prepare(exp: Experiment, cache_dir: Path) -> Prepared:
    """Data, original generator, evaluator and guide classifiers (cached under
    ``cache_dir/generative-<hash>``), and the fixed evaluation noise."""
    return prepare_cached(exp, cache_dir)


def reference_models(prepared: Prepared) -> dict[str, MLPGenerator]:
    """The pretrained generator; there is no retrained oracle."""
    return {"original": prepared.original}


def unlearn(
    exp: Experiment, prepared: Prepared, report: Reporter, checkpoint_dir: Path
) -> MLPGenerator:
    """Run ``exp.method``; the unlearned generator is saved as ``checkpoint_dir/generator.pt`` (the
    checkpoint format, so it can be the ``task.model.generator.checkpoint`` of another run)."""
    generator = method(exp.method.name)(exp, prepared, report)  # type: ignore[attr-defined]
    generator.requires_grad_(False)
    checkpoint_dir = Path(checkpoint_dir)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    save_generator(generator, checkpoint_dir / CHECKPOINT_FILE)
    return generator


def evaluate(exp: Experiment, prepared: Prepared, model: MLPGenerator) -> dict[str, float]:
    """``pul``, ``ufid``, ``forget_share``, ``mean_confidence``, ``class_share_<c>``."""
    return generator_metrics(model, prepared.evaluator, prepared.reference)


def plots(
    exp: Experiment, prepared: Prepared, models: dict[str, MLPGenerator], out_dir: Path
) -> list[Path]:
    """``samples.png`` (a grid per model, same noise) and ``class_histogram.png``."""
    ev: GenerativeEval = exp.eval  # type: ignore[assignment]
    if not ev.plots:
        return []
    out_dir = Path(out_dir)
    ref = prepared.reference
    shares = {
        name: [metrics[f"class_share_{c}"] for c in range(ref.num_classes)]
        for name, metrics in ((n, evaluate(exp, prepared, m)) for n, m in models.items())
    }
    return [
        sample_grids(models, prepared.evaluator, ref, ev.grid_size, out_dir / "samples.png"),
        class_histogram(shares, ref.forget_class, out_dir / "class_histogram.png"),
    ]
