"""General capability with lm-evaluation-harness (the ``otu[lm-eval]`` extra): ``eval.lm_eval`` runs
``lm_eval.simple_evaluate`` on the in-memory model for the tasks named (hub tasks, or custom task
YAMLs in ``include_path``, e.g. a multiple-choice task over a local JSONL file)."""

from __future__ import annotations

import math

from torch import nn

from otu.llm.spec import LmEval


def lm_eval_metrics(model: nn.Module, tokenizer, spec: LmEval, max_length: int) -> dict[str, float]:
    """``{"lm_eval/<task>/<metric>": value}`` for every numeric metric lm-eval reports (no stderr)."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=spec.batch_size, max_length=max_length)
    results = simple_evaluate(
        model=lm,
        tasks=list(spec.tasks),
        num_fewshot=spec.num_fewshot,
        limit=spec.limit,
        task_manager=TaskManager(include_path=spec.include_path),
        bootstrap_iters=0,
        log_samples=False,
    )
    out: dict[str, float] = {}
    for task, values in (results or {}).get("results", {}).items():
        for key, value in values.items():
            name = key.split(",")[0]
            if isinstance(value, (int, float)) and not name.endswith("_stderr") and name != "sample_len":
                out[f"lm_eval/{task}/{name}"] = float(value) if math.isfinite(value) else math.nan
    return out
