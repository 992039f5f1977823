"""The LLM family's ``FAMILY``: prepare (:mod:`otu.llm.prepared`), unlearn with the per-rank loop
(:mod:`otu.llm.loop`, also one rank of a distributed run), evaluate, plots and per-item generations.
The unlearned model is saved as a HF checkpoint (or a LoRA adapter) in ``ctx.checkpoint_dir``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch.distributed as dist
from torch import nn

from otu.family import ItemOutputs, LaunchedAttacks, Requests, RunContext
from otu.llm import attacks, evaluation, lora, muse_eval
from otu.llm.loop import rank_and_world, run_worker
from otu.llm.models import resolve_checkpoint
from otu.llm.plots import write_muse_plot, write_plots
from otu.llm.prepared import Prepared, prepare
from otu.llm.spec import LLMJob
from otu.sections import Compute


class LLMFamily(LaunchedAttacks, ItemOutputs, Requests):
    def prepare(self, job: LLMJob, ctx: RunContext) -> Prepared:
        return prepare(job, ctx)

    def reference_models(self, prepared: Prepared) -> dict[str, nn.Module]:
        names = ["original"] + (["retrained"] if prepared.oracle_path is not None else [])
        return {name: prepared.model(name) for name in names}

    def unlearn(self, job: LLMJob, prepared: Prepared, ctx: RunContext) -> nn.Module:
        checkpoint_dir = _checkpoint_dir(ctx)
        run_worker(job, prepared, ctx, checkpoint_dir)
        return self.load_unlearned(job, prepared, checkpoint_dir)

    def unlearn_worker(self, job: LLMJob, ctx: RunContext) -> None:
        """One rank of the unlearning run (rank 0 prepares first; the others then read the cache)."""
        run_worker(job, _prepare_ranks(job, ctx), ctx, _checkpoint_dir(ctx))

    def load_unlearned(self, job: LLMJob, prepared: Prepared, checkpoint: Path) -> nn.Module:
        """The unlearned model: a full checkpoint, or the target with a LoRA adapter merged in."""
        if lora.is_adapter(checkpoint):
            return lora.load_merged(prepared.load(prepared.target_path), Path(checkpoint)).eval()
        return prepared.load(Path(checkpoint))

    def load_checkpoint(self, job: LLMJob, prepared: Prepared, path: str) -> nn.Module:
        """A checkpoint to evaluate (``otu eval --model``): a local directory or a hub id, loaded like
        the target model (``task.model`` options, evaluation precision); a LoRA adapter directory is
        merged into the target model."""
        return self.load_unlearned(job, prepared, resolve_checkpoint(path, None, "--model"))

    def evaluate(self, job: LLMJob, prepared: Prepared, model: nn.Module) -> dict[str, float]:
        if job.data.layout == "muse":
            return _muse_metrics(job, prepared, model)
        stats = prepared.stats(model, job.eval)
        oracle = prepared.stats(prepared.model("retrained"), job.eval) if prepared.oracle_path else None
        metrics = evaluation.metrics(stats, oracle)
        if "request_forget_eval" in prepared.splits:  # a request chain: the request's own target apart
            metrics |= _request_forget(job, prepared, model)
        if job.eval.lm_eval is not None:
            from otu.llm.harness import lm_eval_metrics

            tokenizer = prepared.tokenizer()
            metrics |= lm_eval_metrics(model, tokenizer, job.eval.lm_eval, job.data.max_length)
        return metrics

    def request_count(self, job: LLMJob) -> int:
        return len(job.data.requests or [])

    def request_overrides(self, job: LLMJob, index: int, previous: Path | None) -> dict[str, Any]:
        """Request ``index`` of ``task.data.requests``, unlearning ``previous`` (the last request's model)."""
        return {"task.data.request": index} | ({"task.model.start": str(previous)} if previous else {})

    def request_metrics(self, job: LLMJob) -> list[str]:
        if job.data.layout == "muse":
            return ["verbmem_f", "knowmem_f", "knowmem_r"]
        rouge = ["request_forget_rouge", "forget_rouge", "retain_rouge", "world_rouge"]
        # TOFU's own two numbers (open-unlearning configs/eval/tofu.yaml:8,11: forget_quality, model_utility)
        return [*rouge, "ks_forget_quality", "model_utility"] if job.data.layout == "tofu" else rouge

    def attack_labels(self, job: LLMJob) -> list[str]:
        return [a.label for a in job.eval.robustness]

    def launched_attacks(self, job: LLMJob, compute: Compute) -> list[str]:
        """The relearning attacks, where the loop runs under DeepSpeed or on several ranks
        (:func:`otu.llm.attacks.launched`)."""
        return [a.label for a in attacks.launched(job, compute)]

    def attack_worker(self, job: LLMJob, label: str, model: str, checkpoint: Path | None, ctx: RunContext) -> None:
        """One rank of relearning attack ``label`` as a loop run (:mod:`otu.llm.objectives.relearn`):
        the relearn set as the forget split, from ``model``'s checkpoint, the attack's recipe, the
        run's DeepSpeed settings; the relearned model goes to ``ctx.checkpoint_dir``."""
        from otu.llm.objectives.relearn import RelearnObjective, relearn_method
        from otu.llm.recipe import recipe_for

        prepared = _prepare_ranks(job, ctx)
        attack = next(a for a in attacks.launched(job, ctx.compute) if a.label == label)
        records, _ = attacks.relearn_split(prepared.splits, attack, ctx.seed)
        method = relearn_method(attack, len(records), attacks.relearn_steps(attack, len(records)))
        # the relearn set is the forget split; retain / world feed no term: the loop still draws a retain
        # batch, from the relearn set (so a paired draw always fits), and none from world
        splits = {**prepared.splits, "forget": records, "retain": records, "world": []}
        view = replace(prepared.on(splits), start_path=_start(prepared, model, checkpoint))
        compute = ctx.compute.model_copy(update={"grad_accum": attack.grad_accum})
        objective = RelearnObjective(method, recipe_for(method, job.data.layout))
        run_ctx = replace(ctx, compute=compute, resume_dir=None)
        run_worker(replace(job, method=method), view, run_ctx, _checkpoint_dir(ctx), objective)

    def load_attacked(
        self, job: LLMJob, prepared: Prepared, model: str, checkpoint: Path | None, saved: Path
    ) -> nn.Module:
        """What :meth:`attack_worker` saved, in the evaluation precision (a LoRA relearn merged into
        the model it started from)."""
        if lora.is_adapter(saved):
            return lora.load_merged(prepared.load(_start(prepared, model, checkpoint)), saved).eval()
        return prepared.load(saved)

    def attacked(
        self,
        job: LLMJob,
        prepared: Prepared,
        model: nn.Module,
        seed: int,
        trained: Mapping[str, Any] | None = None,
    ) -> dict[str, tuple[dict, dict]]:
        """``eval.robustness``'s attacks on ``model`` (:mod:`otu.llm.attacks`), each scored by
        :meth:`evaluate` on its evaluation splits (the oracle's statistics on the same splits); a
        relearning attack in ``trained`` (a launcher run, :meth:`attack_worker`) is not trained again."""
        trained = trained or {}
        out: dict[str, tuple[dict, dict]] = {}
        for attack in job.eval.robustness:
            view, baseline = prepared, prepared  # where the attacked and the clean model are scored
            if attack.attack == "probe" and attack.multiple_choice:  # its own metrics: nothing to compare
                out[attack.label] = (
                    attacks.multiple_choice(model, prepared.encoder(), prepared.splits, attack, seed),
                    {},
                )
                continue
            if attack.attack == "relearn":
                records, splits = attacks.relearn_split(prepared.splits, attack, seed)
                view = baseline = prepared.on(splits)
                attacked = (
                    trained[attack.label]
                    if attack.label in trained
                    else attacks.relearn(model, prepared.encoder(), records, attack, seed)
                )
            elif attack.attack == "quantize":
                attacked = attacks.quantize(model, attack)
            else:
                view, attacked = prepared.on(attacks.probe_splits(prepared.splits, attack)), model
            out[attack.label] = (self.evaluate(job, view, attacked), self.evaluate(job, baseline, model))
        return out

    def plots(self, job: LLMJob, prepared: Prepared, models: dict[str, nn.Module], out_dir: Path) -> list[Path]:
        if job.data.layout == "muse":
            return write_muse_plot({name: _muse_metrics(job, prepared, m) for name, m in models.items()}, out_dir)
        stats = {name: prepared.stats(model, job.eval) for name, model in models.items()}
        return write_plots(stats, out_dir)

    def outputs(self, job: LLMJob, prepared: Prepared, models: dict[str, nn.Module], out_dir: Path) -> list[Path]:
        """``generations.jsonl``: per evaluated model and QA item, the question, the reference, the
        greedy generation and its prob / rouge / truth_ratio (the numbers behind the metrics)."""
        splits = evaluation.cap(prepared.splits, job.eval.max_items)

        def rows(model: nn.Module) -> list[dict]:
            if job.data.layout == "muse":
                return muse_eval.generation_rows(prepared.muse_stats(model, job.eval))
            return evaluation.generation_rows(prepared.stats(model, job.eval), splits)

        lines = [json.dumps({"model": name, **row}) for name, model in models.items() for row in rows(model)]
        path = Path(out_dir) / "generations.jsonl"
        path.write_text("".join(line + "\n" for line in lines))
        return [path]


def _request_forget(job: LLMJob, prepared: Prepared, model: nn.Module) -> dict[str, float]:
    """``request_forget_*``: the forget metrics on the request's own items (``forget_*`` cover requests
    0…k); the other splits of this view are cut to two items, whose numbers are not kept."""
    splits = prepared.splits
    view = prepared.on(
        {**splits, "forget_eval": splits["request_forget_eval"]}
        | {k: splits[k][:2] for k in ("retain_eval", "world_eval", "holdout")}
    )
    oracle = view.stats(view.model("retrained"), job.eval) if view.oracle_path else None
    own = evaluation.metrics(view.stats(model, job.eval), oracle)
    return {f"request_{k}": v for k, v in own.items() if k.startswith("forget_")}


def _muse_metrics(job: LLMJob, prepared: Prepared, model: nn.Module) -> dict[str, float]:
    """MUSE's criteria (:mod:`otu.llm.muse_eval`); privleak against the retrained model's AUC."""
    stats = prepared.muse_stats(model, job.eval)
    needed = prepared.oracle_path is not None and job.eval.muse.privleak_retrain_auc is None
    oracle = prepared.muse_stats(prepared.model("retrained"), job.eval) if needed else None
    return muse_eval.muse_metrics(stats, oracle, job.eval.muse)


def _prepare_ranks(job: LLMJob, ctx: RunContext) -> Prepared:
    """The prepared task on every rank: rank 0 prepares first, the others then read the cache."""
    rank, world = rank_and_world()
    if world > 1 and rank != 0:
        dist.barrier()
    prepared = prepare(job, ctx)
    if world > 1 and rank == 0:
        dist.barrier()
    return prepared


def _start(prepared: Prepared, model: str, checkpoint: Path | None) -> Path:
    """The full checkpoint of ``model``: a reference model's, or the saved one (a LoRA run's merged copy)."""
    if checkpoint is None:
        path = prepared.target_path if model == "original" else prepared.oracle_path
        if path is None:
            raise KeyError(f"no {model!r} model: the task has no retain-only oracle")
        return path
    return Path(checkpoint) / "merged" if lora.is_adapter(Path(checkpoint)) else Path(checkpoint)


def _checkpoint_dir(ctx: RunContext) -> Path:
    if ctx.checkpoint_dir is None:
        raise ValueError("the LLM family saves the unlearned model: give the context a checkpoint_dir")
    return Path(ctx.checkpoint_dir)


FAMILY = LLMFamily()
