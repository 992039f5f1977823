"""Evaluation without unlearning (``otu eval``): the family's metric suite for given checkpoints.

Writes the same output contract as :func:`otu.runtime.experiment.run_experiment`, less the
unlearning: ``DIR/spec.yaml``, ``DIR/metrics.json`` (``{model name: {metric: value}}``) and, where the
family has per-item outputs, ``DIR/generations.jsonl``. With no checkpoints named, the family's
reference models (original, retain-only oracle) are evaluated.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path

from otu.errors import SpecError
from otu.family import ItemOutputs, SavedModels
from otu.registry import family_api
from otu.runtime.experiment import Metrics, _as_floats, prepare, seed_everything
from otu.spec import Experiment, dump_yaml


def model_names(args: list[str]) -> dict[str, str]:
    """``--model`` values (``PATH`` or ``NAME=PATH``) → {name: path}; names default to the last
    path component and must be unique."""
    out: dict[str, str] = {}
    for arg in args:
        name, sep, path = arg.partition("=")
        if not sep:
            name, path = Path(arg.rstrip("/")).name or arg, arg
        if not name or not path:
            raise SpecError(f"--model: {arg!r} is neither PATH nor NAME=PATH")
        if name in out:
            raise SpecError(f"--model: two models are named {name!r}; give NAME=PATH")
        out[name] = path
    return out


def evaluate_checkpoints(
    exp: Experiment,
    out_dir: Path,
    checkpoints: Mapping[str, str],
    phase: Callable[[str], None] | None = None,
) -> Metrics:
    """Metrics of ``checkpoints`` ({name: local directory or hub id}; empty: the references)."""
    phase = phase or (lambda _name: None)
    api = family_api(exp.task.family)
    job = exp.job()
    if checkpoints and not isinstance(api, SavedModels):
        raise SpecError(f"--model: the {exp.task.family} family cannot load checkpoints")
    out_dir.mkdir(parents=True, exist_ok=True)
    dump_yaml(exp, out_dir / "spec.yaml")
    phase("preparing data")
    prepared = prepare(exp)
    if checkpoints:
        assert isinstance(api, SavedModels)
        models = {name: api.load_checkpoint(job, prepared, path) for name, path in checkpoints.items()}
    else:
        models = dict(api.reference_models(prepared))
    metrics: Metrics = {}
    for name, model in models.items():
        phase(f"evaluating {name}")
        seed_everything(exp.seed)
        metrics[name] = _as_floats(api.evaluate(job, prepared, model))
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    if isinstance(api, ItemOutputs):
        api.outputs(job, prepared, models, out_dir)
    return metrics
