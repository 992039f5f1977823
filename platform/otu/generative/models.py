"""The one-step generator (noise → image in one forward pass), its checkpoint format, and the
potential network of the UOT semi-dual.

Checkpoint format (``torch.save`` of a plain dict, loadable with ``weights_only=True``)::

    {"format": "otu-generator-v1",
     "config": {"latent_dim": int, "hidden": int, "layers": int, "image_shape": [C, H, W]},
     "state_dict": MLPGenerator.state_dict()}
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from otu.errors import DataError

FORMAT = "otu-generator-v1"
CHECKPOINT_FIELD = "task.model.generator.checkpoint"


@dataclass(frozen=True)
class GeneratorConfig:
    latent_dim: int
    hidden: int
    layers: int
    image_shape: tuple[int, ...]


class MLPGenerator(nn.Module):
    """z ~ N(0, I_latent) → ``layers`` × (Linear, LeakyReLU 0.2) → Linear → sigmoid → C×H×W in [0, 1]."""

    def __init__(self, config: GeneratorConfig) -> None:
        super().__init__()
        self.config = config
        blocks: list[nn.Module] = []
        width = config.latent_dim
        for _ in range(config.layers):
            blocks += [nn.Linear(width, config.hidden), nn.LeakyReLU(0.2)]
            width = config.hidden
        blocks += [nn.Linear(width, math.prod(config.image_shape)), nn.Sigmoid()]
        self.net = nn.Sequential(*blocks)

    @property
    def latent_dim(self) -> int:
        return self.config.latent_dim

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).view(len(z), *self.config.image_shape)

    @torch.no_grad()
    def sample(self, noise: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
        """Images for a fixed noise tensor, in batches, without gradients."""
        return torch.cat([self(chunk) for chunk in noise.split(batch_size)])


def potential_network(image_shape: tuple[int, ...], hidden: int) -> nn.Module:
    """v: images → ℝ, an MLP with two LeakyReLU(0.2) hidden layers on the flattened image."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(math.prod(image_shape), hidden),
        nn.LeakyReLU(0.2),
        nn.Linear(hidden, hidden),
        nn.LeakyReLU(0.2),
        nn.Linear(hidden, 1),
        nn.Flatten(0),
    )


def save_generator(generator: MLPGenerator, path: Path) -> Path:
    """Write ``generator`` in the checkpoint format (usable as ``task.model.generator.checkpoint``)."""
    config = asdict(generator.config)
    config["image_shape"] = list(config["image_shape"])
    torch.save({"format": FORMAT, "config": config, "state_dict": generator.state_dict()}, path)
    return path


def load_generator(path: str | Path) -> MLPGenerator:
    """Read a checkpoint; DataError naming the field if it is missing or not in the format."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{CHECKPOINT_FIELD}: file not found: {path}")
    try:
        raw = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as err:  # any unpickling failure means "not a checkpoint"
        raise DataError(f"{CHECKPOINT_FIELD}: cannot read {path}: {err}") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise DataError(
            f"{CHECKPOINT_FIELD}: {path} is not an {FORMAT} checkpoint (write one with "
            "otu.generative.models.save_generator)"
        )
    try:
        cfg = raw["config"]
        config = GeneratorConfig(
            int(cfg["latent_dim"]),
            int(cfg["hidden"]),
            int(cfg["layers"]),
            tuple(int(d) for d in cfg["image_shape"]),
        )
        generator = MLPGenerator(config)
        generator.load_state_dict(raw["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise DataError(f"{CHECKPOINT_FIELD}: {path} has an inconsistent config or weights: {err}") from None
    return generator


def check_checkpoint(path: str | Path, image_shape: tuple[int, ...]) -> MLPGenerator:
    """Load the checkpoint and generate two probe samples; DataError unless they are ``image_shape``."""
    generator = load_generator(path)
    with torch.no_grad():
        out = generator(torch.zeros(2, generator.latent_dim))
    if tuple(out.shape[1:]) != tuple(image_shape):
        shape = "×".join(map(str, out.shape[1:]))
        raise DataError(
            f"{CHECKPOINT_FIELD}: the generator in {path} outputs {shape} images but the data's are "
            f"{'×'.join(map(str, image_shape))}"
        )
    return generator
