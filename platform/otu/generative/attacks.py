r"""k-shot relearning of a forgotten class (``eval.robustness``): does a generator that stopped
producing class :math:`c` learn it back from :math:`k` images faster than one that never knew it?

The attacker has the retained images :math:`\{y : \mathrm{class}(y) \ne c\}` and :math:`k` images of
class :math:`c` (a seeded subset), each repeated :math:`\mathrm{round}(n_c / k)` times so the class
keeps its share of the data, and fine-tunes a copy with the pretraining objective,
:math:`\min_G S_\varepsilon(G_\# \mathcal N(0, I), \hat\mu)` (:func:`otu.generative.pretrain.fit_sinkhorn`).
"""

from __future__ import annotations

import torch

from otu.errors import DataError
from otu.generative.data import ClassData
from otu.generative.methods.common import noise_stream, trainable_copy
from otu.generative.models import MLPGenerator
from otu.generative.pretrain import fit_sinkhorn
from otu.generative.spec import GenerativeRelearn


def relearn_set(data: ClassData, attack: GenerativeRelearn, seed: int) -> torch.Tensor:
    """The retained images and ``attack.shots`` seeded images of the forgotten class, repeated to its share."""
    forget = data.images[data.labels == data.forget_class]
    if attack.shots > len(forget):
        raise DataError(
            f"eval.robustness ({attack.label}): shots {attack.shots} > the {len(forget)} images of class "
            f"{data.forget_class}; give fewer"
        )
    chosen = torch.randperm(len(forget), generator=torch.Generator().manual_seed(seed))[: attack.shots]
    repeats = max(1, round(len(forget) / attack.shots))
    return torch.cat([data.retained, forget[chosen.sort().values].repeat(repeats, 1, 1, 1)])


def relearn(
    generator: MLPGenerator, data: ClassData, attack: GenerativeRelearn, betas: tuple[float, float], seed: int
) -> MLPGenerator:
    """A copy of ``generator`` fine-tuned with Adam (``betas``: pretraining's) on :func:`relearn_set`
    (``generator`` is left as it was)."""
    attacked = fit_sinkhorn(
        trainable_copy(generator),
        relearn_set(data, attack, seed),
        steps=attack.steps,
        lr=attack.lr,
        batch_size=attack.batch_size,
        blur=attack.blur,
        scaling=attack.scaling,
        betas=betas,
        noise=noise_stream(seed),
    )
    return attacked.requires_grad_(False).eval()
