"""The generative family (see :class:`otu.family.Family`): class unlearning for one-step generators."""

from __future__ import annotations

from pathlib import Path

from otu.family import Attacks, Family, RunContext, SavedModels
from otu.generative import attacks
from otu.generative import prepare as preparation
from otu.generative.metrics import generator_metrics
from otu.generative.models import MLPGenerator, load_generator, save_generator
from otu.generative.plots import class_histogram, sample_grids
from otu.generative.prepare import Prepared
from otu.generative.spec import METHODS, GenerativeJob

CHECKPOINT_FILE = "generator.pt"


class GenerativeFamily(Family, SavedModels, Attacks):
    def prepare(self, job: GenerativeJob, ctx: RunContext) -> Prepared:
        """Data, original generator, evaluator and guide classifiers (cached under
        ``ctx.cache_dir/generative-<hash>``), and the fixed evaluation noise."""
        return preparation.prepare(job, ctx)

    def reference_models(self, prepared: Prepared) -> dict[str, MLPGenerator]:
        """The pretrained generator; there is no retrained oracle."""
        return {"original": prepared.original}

    def unlearn(self, job: GenerativeJob, prepared: Prepared, ctx: RunContext) -> MLPGenerator:
        """Run ``job.method``; the unlearned generator is saved as ``ctx.checkpoint_dir/generator.pt``
        (the checkpoint format, so it can be the ``task.model.generator.checkpoint`` of another run)."""
        generator: MLPGenerator = METHODS[job.method.name].load()(job, prepared, ctx)
        generator.requires_grad_(False)
        if ctx.checkpoint_dir is not None:
            ctx.checkpoint_dir.mkdir(parents=True, exist_ok=True)
            save_generator(generator, ctx.checkpoint_dir / CHECKPOINT_FILE)
        return generator

    def load_unlearned(self, job: GenerativeJob, prepared: Prepared, checkpoint: Path) -> MLPGenerator:
        return self.load_checkpoint(job, prepared, str(checkpoint))

    def load_checkpoint(self, job: GenerativeJob, prepared: Prepared, path: str) -> MLPGenerator:
        """A generator checkpoint file, or a run's checkpoint directory (its ``generator.pt``)."""
        file = Path(path) / CHECKPOINT_FILE if Path(path).is_dir() else Path(path)
        return load_generator(file).requires_grad_(False)

    def evaluate(self, job: GenerativeJob, prepared: Prepared, model: MLPGenerator) -> dict[str, float]:
        """``pul``, ``ufid``, ``forget_share``, ``mean_confidence``, ``class_share_<c>``."""
        return generator_metrics(model, prepared.evaluator, prepared.reference)

    def attack_labels(self, job: GenerativeJob) -> list[str]:
        return [a.label for a in job.eval.robustness]

    def attacked(
        self, job: GenerativeJob, prepared: Prepared, model: MLPGenerator, seed: int
    ) -> dict[str, tuple[dict, dict]]:
        """k-shot relearning of the forgotten class (:mod:`otu.generative.attacks`): the relearned copy's
        metrics, and the generator's own."""
        betas = (job.model.generator.beta1, job.model.generator.beta2)
        clean = self.evaluate(job, prepared, model)
        return {
            a.label: (self.evaluate(job, prepared, attacks.relearn(model, prepared.data, a, betas, seed)), clean)
            for a in job.eval.robustness
        }

    def plots(
        self, job: GenerativeJob, prepared: Prepared, models: dict[str, MLPGenerator], out_dir: Path
    ) -> list[Path]:
        """``samples.png`` (a grid per model, same noise) and ``class_histogram.png``."""
        if not job.eval.plots:
            return []
        out_dir = Path(out_dir)
        ref = prepared.reference
        shares = {
            name: [metrics[f"class_share_{c}"] for c in range(ref.num_classes)]
            for name, metrics in ((n, self.evaluate(job, prepared, m)) for n, m in models.items())
        }
        return [
            sample_grids(models, prepared.evaluator, ref, job.eval.grid_size, out_dir / "samples.png"),
            class_histogram(shares, ref.forget_class, out_dir / "class_histogram.png"),
        ]


FAMILY = GenerativeFamily()
