"""Deletion requests in sequence: a run whose steps are requests (families with
:class:`otu.family.Requests`, e.g. ``task.data.requests`` of the LLM family).

Request k is a one-request experiment of its own (the family's ``request_overrides``), run by
:func:`otu.runtime.experiment.run_experiment` into ``DIR/requests/<k+1>/`` and unlearning request
k−1's checkpoint; its rows (original, its retrained oracle, unlearned) are that run's. ``DIR/metrics.json``
holds the last request's rows and ``requests``, every request's rows in order; ``DIR/plots/requests.png``
the family's request metrics against the request index, the original and the oracles marked. A
request whose ``metrics.json`` and checkpoint exist is finished and not redone, so a chain killed
between requests continues where it stopped (a request killed midway resumes from its loop
checkpoint, as ``run_experiment`` does).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from otu.family import Requests
from otu.registry import family_api
from otu.runtime.experiment import RunResult, run_experiment
from otu.spec import Experiment, dump_yaml

PLOT = "requests.png"


def request_count(exp: Experiment) -> int:
    """How many requests ``exp`` chains (0: none, a plain run)."""
    api = family_api(exp.task.family)
    return api.request_count(exp.job()) if isinstance(api, Requests) else 0


def runner_for(exp: Experiment) -> Callable[..., RunResult]:
    """:func:`run_requests` for a spec with requests, else :func:`run_experiment` (same arguments)."""
    return run_requests if request_count(exp) else run_experiment


def run_requests(
    exp: Experiment,
    out_dir: Path,
    report: Callable[[int, Mapping[str, float]], None] | None = None,
    phase: Callable[[str], None] | None = None,
    resume: bool = False,
    **options: Any,
) -> RunResult:
    """Run ``exp``'s requests in order into ``out_dir`` (see the module); ``report`` sees the loop steps
    of all requests numbered on from one request to the next; ``options`` go to every
    :func:`run_experiment`."""
    api = family_api(exp.task.family)
    assert isinstance(api, Requests)
    job = exp.job()
    count = api.request_count(job)
    out_dir.mkdir(parents=True, exist_ok=True)
    dump_yaml(exp, out_dir / "spec.yaml")
    rows: list[dict[str, dict[str, float]]] = []
    timings: dict[str, float] = {}
    previous: Path | None = None
    offset = 0
    for index in range(count):
        sub = out_dir / "requests" / f"{index + 1:02d}"
        done = sub / "metrics.json"
        if done.is_file() and (sub / "checkpoint").is_dir():  # finished before a kill: not redone
            rows.append(json.loads(done.read_text()))
        else:
            start = time.perf_counter()
            seen = [offset]

            def shifted(step: int, metrics: Mapping[str, float], base: int = offset, seen=seen) -> None:
                seen[0] = max(seen[0], base + step + 1)
                if report is not None:
                    report(base + step, metrics)

            def announced(name: str, index: int = index) -> None:
                if phase is not None:
                    phase(f"request {index + 1}/{count}: {name}")

            request = exp.with_overrides(api.request_overrides(job, index, previous))
            result = run_experiment(request, sub, shifted, announced, resume=resume, **options)
            rows.append(result.metrics)
            offset = seen[0]
            timings[f"request_{index + 1}_s"] = time.perf_counter() - start
        previous = (sub / "checkpoint").resolve()
    (out_dir / "metrics.json").write_text(json.dumps({**rows[-1], "requests": rows}, indent=2))
    plots = [plot_requests(rows, api.request_metrics(job), out_dir / "plots" / PLOT)]
    return RunResult(metrics=rows[-1], plots=plots, timings=timings)


def request_series(rows: list[dict[str, dict[str, float]]], name: str) -> dict[str, list[float]]:
    """Metric ``name`` of each model over the requests: ``series[model][k]`` is request k+1's row
    (NaN where the row lacks it). The original's per-request metrics (``request_forget_*``, the KS
    forget quality) are computed on each request's own splits, so they change from request to request."""
    models = [m for m in ("unlearned", "original", "retrained") if any(m in row for row in rows)]
    return {m: [row.get(m, {}).get(name, float("nan")) for row in rows] for m in models}


def plot_requests(rows: list[dict[str, dict[str, float]]], metrics: list[str], path: Path) -> Path:
    """One panel per metric over the request index (:func:`request_series`): the unlearned model
    after each request, the original (dashed) and each request's retrained oracle (crosses), each
    from that request's row."""
    from otu.figures import plt, save_figure

    names = [m for m in metrics if any(m in row.get("unlearned", {}) for row in rows)]
    fig, axes = plt.subplots(1, max(1, len(names)), figsize=(3.6 * max(1, len(names)), 3.2), squeeze=False)
    x = list(range(1, len(rows) + 1))
    for ax, name in zip(axes[0], names, strict=False):
        series = request_series(rows, name)
        ax.plot(x, series["unlearned"], "o-", label="unlearned")
        if "original" in series:
            ax.plot(x, series["original"], "--", color="grey", label="original")
        if "retrained" in series:
            ax.plot(x, series["retrained"], "x", color="C2", ms=8, label="retrained")
        ax.set_xticks(x)
        ax.set_xlabel("request")
        ax.set_title(name)
    axes[0][0].legend(fontsize=8, frameon=False)
    return save_figure(fig, path)
