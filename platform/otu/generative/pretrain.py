r"""Training a generator by minimising the Sinkhorn divergence to data (Genevay, Peyré & Cuturi 2018).

Each step draws n noise vectors and n data images and takes an Adam step on

.. math::  S_\varepsilon(G_\#\hat\mu_z, \hat\nu) = OT_\varepsilon(G(z), y)
           - \tfrac12 OT_\varepsilon(G(z), G(z)) - \tfrac12 OT_\varepsilon(y, y),

with the squared Euclidean cost on pixels and ε = blur² (:func:`otu.ot.sinkhorn_loss`, geomloss,
gradients by the envelope theorem).

Why this objective for the original generator: it is not adversarial (one network, one loss, no
potential to balance), S_ε is a metric between distributions, so every class's mass must be matched
(no mode dropping — the class histogram of the generator follows the data's), and on 8×8 digits a
few hundred steps of batches of 256 give samples the digits classifier recognises. The UOT semi-dual
(adversarial) is used where it matters, for unlearning.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from otu.generative.models import MLPGenerator
from otu.ot import sinkhorn_loss


def fit_sinkhorn(
    generator: MLPGenerator,
    target: torch.Tensor,
    *,
    steps: int,
    lr: float,
    batch_size: int,
    blur: float,
    scaling: float,
    betas: tuple[float, float],
    noise: torch.Generator,
    on_step: Callable[[int, float], None] | None = None,
) -> MLPGenerator:
    """Adam on S_ε(G(z), y) for ``steps`` steps, z and y drawn (with replacement) from ``noise``;
    ``on_step(step, loss)`` after each step. Returns ``generator`` (trained in place)."""
    flat = target.flatten(1)
    opt = torch.optim.Adam(generator.parameters(), lr=lr, betas=betas)
    for step in range(1, steps + 1):
        z = torch.randn(batch_size, generator.latent_dim, generator=noise)
        real = flat[torch.randint(len(flat), (batch_size,), generator=noise)]
        loss = sinkhorn_loss(
            generator(z).flatten(1),
            real,
            blur=blur,
            cost="sqeuclidean",
            p=2,
            scaling=scaling,
            debias=True,
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if on_step is not None:
            on_step(step, float(loss.detach()))
    return generator
