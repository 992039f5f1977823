"""The data, the original generator and the two classifiers (evaluator, guide), trained once and
cached in two entries: ``cache_dir/generative-classifiers-<hash>`` (seed, data source,
``task.model.evaluator``/``guide``) and ``cache_dir/generative-generator-<hash>`` (seed, data source,
``task.model.generator``; none when a generator checkpoint is given).

The forgotten class is in neither hash: the cached models are trained on every class, so a sweep over
classes, methods or their knobs prepares once, and changing the generator keeps the classifiers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from otu.cache import cached_dir, content_hash
from otu.classifiers.models import build_model
from otu.classifiers.train import train_classifier
from otu.errors import DataError
from otu.family import RunContext
from otu.generative.data import ClassData, load_class_data
from otu.generative.metrics import Reference, make_reference
from otu.generative.models import GeneratorConfig, MLPGenerator, load_generator, save_generator
from otu.generative.pretrain import fit_sinkhorn
from otu.generative.spec import ClassifierSpec, GenerativeJob, GenerativeModel, GeneratorSpec

GENERATOR_FILE = "generator.pt"
CLASSIFIER_FILES = {"evaluator": "evaluator.pt", "guide": "guide.pt"}
GUIDE_SEED_OFFSET = 1
"""The guide classifier is trained with ``seed + 1`` (the evaluator with ``seed``)."""


@dataclass
class Prepared:
    """What every trial of one (seed, data, model) setting shares."""

    data: ClassData
    original: MLPGenerator
    """The pretrained (or loaded) generator, frozen."""
    evaluator: nn.Module
    guide: nn.Module
    reference: Reference
    cache_paths: list[Path]

    @property
    def cache_id(self) -> str:
        """The cache entries of the generator and the classifiers (the platform keys metrics with it)."""
        return ",".join(sorted(p.name for p in self.cache_paths))


def cache_keys(job: GenerativeJob, seed: int) -> dict[str, str]:
    """Hashes of what each cache entry depends on (``classifiers``; ``generator`` unless a checkpoint
    is given)."""
    model = job.model
    base = {"seed": seed, "source": job.data.source}
    keys = {
        "classifiers": content_hash(
            {
                **base,
                "evaluator": model.evaluator.model_dump(mode="json"),
                "guide": model.guide.model_dump(mode="json"),
            }
        )
    }
    if model.generator.checkpoint is None:
        keys["generator"] = content_hash({**base, "generator": model.generator.model_dump(mode="json")})
    return keys


def prepare(job: GenerativeJob, ctx: RunContext) -> Prepared:
    """Load the data; load the models from the cache or train and cache them; fix the evaluation noise."""
    data = load_class_data(job.data)
    spec, seed, checkpoint = job.model, ctx.seed, job.model.generator.checkpoint
    paths = {name: Path(ctx.cache_dir) / f"generative-{name}-{key}" for name, key in cache_keys(job, seed).items()}
    cached_dir(paths["classifiers"], lambda tmp: _train_classifiers(data, spec, seed, tmp))
    if checkpoint is None:
        cached_dir(paths["generator"], lambda tmp: _train_generator(data, spec.generator, seed, tmp))
        original = load_generator(paths["generator"] / GENERATOR_FILE)
    else:
        original = load_generator(checkpoint)
    original.requires_grad_(False)
    classifiers = {
        name: _load_classifier(getattr(spec, name), data, paths["classifiers"] / file)
        for name, file in CLASSIFIER_FILES.items()
    }
    ev = job.eval
    noise = torch.randn(ev.num_samples, original.latent_dim, generator=torch.Generator().manual_seed(seed))
    reference = make_reference(
        original,
        classifiers["evaluator"],
        data.retained,
        noise,
        data.forget_class,
        data.num_classes,
    )
    if reference.forget_before == 0:
        raise DataError(
            f"task.data.forget_class: the original generator produces no sample the evaluator "
            f"classifies as class {data.forget_class} (of {ev.num_samples}); nothing to forget"
        )
    return Prepared(
        data,
        original,
        classifiers["evaluator"],
        classifiers["guide"],
        reference,
        list(paths.values()),
    )


def new_classifier(spec: ClassifierSpec, data: ClassData, seed: int) -> nn.Module:
    """A fresh, seeded classifier of ``spec``'s architecture for the data's images."""
    channels, height, _ = data.image_shape
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return build_model(spec.arch, data.num_classes, channels, height, spec.width)


def new_generator(spec: GeneratorSpec, data: ClassData, seed: int) -> MLPGenerator:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return MLPGenerator(GeneratorConfig(spec.latent_dim, spec.hidden, spec.layers, data.image_shape))


def _train_classifiers(data: ClassData, spec: GenerativeModel, seed: int, out: Path) -> None:
    for name, file in CLASSIFIER_FILES.items():
        clf_seed = seed + (GUIDE_SEED_OFFSET if name == "guide" else 0)
        clf_spec: ClassifierSpec = getattr(spec, name)
        model = train_classifier(
            new_classifier(clf_spec, data, clf_seed),
            data.images,
            data.labels,
            epochs=clf_spec.epochs,
            lr=clf_spec.lr,
            batch_size=clf_spec.batch_size,
            weight_decay=clf_spec.weight_decay,
            seed=clf_seed,
        )
        torch.save(model.state_dict(), out / file)


def _train_generator(data: ClassData, spec: GeneratorSpec, seed: int, out: Path) -> None:
    generator = fit_sinkhorn(
        new_generator(spec, data, seed),
        data.images,
        steps=spec.steps,
        lr=spec.lr,
        batch_size=spec.batch_size,
        blur=spec.blur,
        scaling=spec.scaling,
        betas=(spec.beta1, spec.beta2),
        noise=torch.Generator().manual_seed(seed),
    )
    save_generator(generator, out / GENERATOR_FILE)


def _load_classifier(spec: ClassifierSpec, data: ClassData, file: Path) -> nn.Module:
    model = new_classifier(spec, data, 0)
    model.load_state_dict(torch.load(file, weights_only=True))
    return model.eval().requires_grad_(False)
