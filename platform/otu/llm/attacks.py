r"""Attacks on an evaluated model: does the forgetting survive them? Each returns the attacked model
(a copy: the evaluated model is never changed) and the evaluation splits its metrics are taken on.

* **relearn** — a few AdamW steps of answer NLL on a relearn set (Hu et al., ICLR 2025, "benign
  relearning"): ``forget_subset`` takes a seeded ``fraction`` of the forget items and the forget
  metrics are then over the *other* items (their targeted setting); ``forget`` all of them (scored
  on themselves: open-unlearning's meta-evaluation); ``retain`` / ``world`` (optionally a seeded
  ``size``) relearn on benign data.
* **quantize** — weight-only round-to-nearest quantization of every ``nn.Linear`` but the LM head
  (what bitsandbytes quantizes when HF loads a model in 8 or 4 bits), dequantized back to the
  weight's dtype (Zhang et al., ICLR 2025). 8 bits: one absmax scale per output row (LLM.int8's
  vector-wise weight quantization), :math:`\hat w = \mathrm{round}(127\,w/s)\,s/127`. 4 bits: blocks of
  ``block_size`` consecutive weights, each scaled by its absmax and rounded to the nearest of 16 code
  values — NF4 (Dettmers et al. 2023, QLoRA: quantiles of N(0, 1) scaled to [−1, 1]), bitsandbytes'
  FP4 (E2M1, its 4-bit default, which Zhang et al. use) or uniform int4.
* **probe** — the evaluation questions rewritten by a template (``{question}``,
  ``{paraphrased_question}``): prefix injection, an instruction wrapper, the dataset's paraphrases.
  A template with ``{options}`` asks a multiple-choice question whose options are the true answer
  :math:`a_0` and the perturbed answers :math:`a_1..a_k` (lettered, seeded order per item), and
  reports the probability of the true option among them,
  :math:`p_0 / \sum_i p_i` with :math:`p_i = P(\text{letter}_i \mid \text{prompt})` (WMDP / MMLU) or
  :math:`\exp(-\overline{\mathrm{NLL}}(a_i \mid \text{prompt}))` (``choice: text``), and how often
  it is the most probable.
"""

from __future__ import annotations

import copy
import math
import string
from dataclasses import replace

import torch
from torch import Tensor, nn

from otu.errors import DataError, SpecError
from otu.llm import lora
from otu.llm.data import Record, Splits
from otu.llm.evaluation import QA_SPLITS
from otu.llm.losses import reduced_nll
from otu.llm.sampling import Stream
from otu.llm.spec import LLMJob, Probe, Quantize, Relearn
from otu.llm.text import Encoder
from otu.sections import Compute

NF4 = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
)  # fmt: skip
"""bitsandbytes' NF4 code values (QLoRA, Appendix E)."""
FP4 = tuple(sign * v / 12 for sign in (1.0, -1.0) for v in (0.0, 0.0625, 8.0, 12.0, 4.0, 6.0, 2.0, 3.0))
"""bitsandbytes' FP4 (E2M1) code values, its table scaled to [−1, 1] (functional.py ``get_4bit_type``)."""
INT4 = tuple(k / 7 for k in range(-8, 8))
"""Uniform symmetric 4-bit code values, scaled to the block's absmax (−8/7 is never the nearest)."""
CODES = {"nf4": NF4, "fp4": FP4, "int4": INT4}


def relearn_split(splits: Splits, attack: Relearn, seed: int) -> tuple[list[Record], Splits]:
    """The relearn set and the splits to evaluate on afterwards."""
    if attack.data == "forget":
        return splits["forget_eval"], splits
    if attack.data != "forget_subset":
        records = splits[attack.data]
        if not records:
            raise DataError(f"eval.robustness ({attack.label}): the {attack.data} set is empty: nothing to relearn")
        if attack.size is not None and attack.size < len(records):
            order = torch.randperm(len(records), generator=torch.Generator().manual_seed(seed)).tolist()
            records = [records[i] for i in sorted(order[: attack.size])]
        return records, splits
    forget = splits["forget_eval"]
    n = round(attack.fraction * len(forget))
    if n < 1 or n >= len(forget):
        raise DataError(
            f"eval.robustness ({attack.label}): fraction {attack.fraction} of {len(forget)} forget items leaves "
            "no item to relearn or none to evaluate; give more forget items or another fraction"
        )
    order = torch.randperm(len(forget), generator=torch.Generator().manual_seed(seed)).tolist()
    chosen = set(order[:n])
    relearned = [forget[i] for i in sorted(chosen)]
    others = [forget[i] for i in range(len(forget)) if i not in chosen]
    return relearned, {**splits, "forget_eval": others}


def relearn_steps(attack: Relearn, n: int) -> int:
    """Optimizer steps: ``attack.steps``, or ``ceil(epochs · n / (batch_size · grad_accum))``."""
    if attack.epochs is None:
        return attack.steps
    return max(1, math.ceil(attack.epochs * n / (attack.batch_size * attack.grad_accum)))


def launched(job: LLMJob, compute: Compute) -> list[Relearn]:
    """The relearning attacks that run as runs of the unlearning loop under its launcher: all of them
    where the loop runs under DeepSpeed (``compute.zero_stage > 0``) or on several ranks (Ray Train
    workers, a torchrun / deepspeed group), none in a plain process (:func:`relearn` there)."""
    if compute.workers == 1 and compute.zero_stage == 0:
        return []
    return [a for a in job.eval.robustness if isinstance(a, Relearn)]


def check_launched(job: LLMJob, compute: Compute, splits: Splits, seed: int) -> None:
    """What a relearning attack run by the launcher needs, before any work: a full checkpoint of the
    unlearned model to start from, and a global batch the ranks split evenly."""
    relearns = launched(job, compute)
    method_lora = job.method.lora
    if relearns and method_lora is not None and not method_lora.save_merged:
        raise SpecError(
            f"method.lora.save_merged: eval.robustness ({relearns[0].label}) relearns the unlearned model on "
            f"{compute.workers} rank(s) under DeepSpeed, from a full checkpoint; a LoRA run saves only its "
            "adapter unless save_merged: true"
        )
    for attack in relearns:
        micro = min(attack.batch_size, len(relearn_split(splits, attack, seed)[0]))
        if micro % compute.workers:
            raise SpecError(
                f"eval.robustness ({attack.label}).batch_size: {micro} items per micro-batch (batch_size, at most "
                f"the relearn set's size) do not split over compute.workers = {compute.workers}"
            )


def relearn(model: nn.Module, encoder: Encoder, records: list[Record], attack: Relearn, seed: int) -> nn.Module:
    """A copy of ``model`` fine-tuned with AdamW (constant lr) on per-sequence answer NLL over
    ``records`` (seeded micro-batches, reshuffled every pass; ``grad_accum`` per step), in fp32;
    with ``attack.lora`` only adapters train and are merged into the copy at the end."""
    dtype = next(model.parameters()).dtype
    attacked = copy.deepcopy(model).float()
    if attack.lora is not None:
        attacked = lora.wrap(attacked, attack.lora)
    attacked.train()
    device = next(attacked.parameters()).device
    trainable = [p for p in attacked.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=attack.lr, weight_decay=attack.weight_decay)
    stream = Stream(len(records), seed)
    with torch.random.fork_rng():  # dropout draws leave the caller's RNG where it was
        torch.manual_seed(seed)
        for _ in range(relearn_steps(attack, len(records))):
            optimizer.zero_grad(set_to_none=True)
            for _ in range(attack.grad_accum):
                batch = [records[i] for i in stream.take(min(attack.batch_size, len(records)))]
                inputs = encoder.batch([r.question for r in batch], [r.answer for r in batch]).to(device)
                (reduced_nll(attacked, inputs, "sequence_mean").mean() / attack.grad_accum).backward()
            optimizer.step()
    if attack.lora is not None:
        attacked = attacked.merge_and_unload()
    return attacked.to(dtype).eval()


@torch.no_grad()
def quantize(model: nn.Module, attack: Quantize) -> nn.Module:
    """A copy of ``model`` whose linear layers (not the LM head) hold their quantized-dequantized weights."""
    attacked = copy.deepcopy(model)
    head = attacked.get_output_embeddings() if hasattr(attacked, "get_output_embeddings") else None
    for module in attacked.modules():
        if isinstance(module, nn.Linear) and module is not head:
            w = module.weight
            module.weight.copy_(
                quantize_rows(w) if attack.bits == 8 else quantize_blocks(w, attack.block_size, attack.quant_type)
            )
    return attacked.eval()


def quantize_rows(w: Tensor) -> Tensor:
    r"""8-bit absmax per row, :math:`\hat w = \mathrm{round}(w \cdot 127/s_r)\, s_r/127` with
    :math:`s_r = \max_j |w_{rj}|`, in float32 as bitsandbytes computes it (backends/default/ops.py
    ``int8_vectorwise_quant``, _ops.py ``int8_vectorwise_dequant``)."""
    scale = w.abs().amax(dim=1, keepdim=True).float().clamp(min=torch.finfo(torch.float32).tiny)
    return (torch.round(w * (127.0 / scale)) * scale * (1 / 127)).to(w.dtype)


def quantize_blocks(w: Tensor, block_size: int, quant_type: str) -> Tensor:
    r"""4-bit: each block of ``block_size`` consecutive weights (row-major; a shorter last block has
    its own scale) is scaled by its absmax :math:`s_b`, :math:`x = w\cdot(1/s_b)` clamped to
    [−1, 1], and rounded to the code value :math:`c_i` with :math:`m_{i-1} < x \le m_i` for the
    midpoints :math:`m_i = (c_i + c_{i+1})/2` of the sorted code (a tie goes to the lower value);
    :math:`\hat w = c_i\, s_b`. This is bitsandbytes' ``quantize_4bit`` / ``dequantize_4bit``
    (backends/default/ops.py), bit for bit in float32 (tests/test_quantizer_reference.py)."""
    code = torch.tensor(CODES[quant_type], dtype=torch.float32, device=w.device).sort().values
    bounds = (code[:-1] + code[1:]) / 2
    flat = w.reshape(-1).float()
    full = flat.numel() - flat.numel() % block_size
    blocks = flat[:full].view(-1, block_size)
    absmax = blocks.abs().amax(dim=1, keepdim=True).clamp(min=1e-38)
    parts = [(torch.clamp(blocks * (1.0 / absmax), -1, 1), absmax)]
    if full < flat.numel():  # bitsandbytes divides the last, shorter block by its absmax
        rest_max = flat[full:].abs().amax().clamp(min=1e-38)
        parts.append((torch.clamp(flat[full:] / rest_max, -1, 1), rest_max))
    out = [code[torch.bucketize(x, bounds)] * scale for x, scale in parts]
    return torch.cat([o.reshape(-1) for o in out]).view_as(w).to(w.dtype)


def check_probe(splits: Splits, attack: Probe) -> None:
    """The forget items have what the template asks: a paraphrase each for ``{paraphrased_question}``,
    perturbed answers for ``{options}``."""
    forget = splits["forget_eval"]
    if "{paraphrased_question}" in attack.text and not all(r.paraphrased_question for r in forget):
        raise DataError(
            f"eval.robustness ({attack.label}): the template uses paraphrased_question, which some forget "
            "items lack (the data has no paraphrased_question column or empty values)"
        )
    if attack.multiple_choice and not any(r.perturbed_answer for r in forget):
        raise DataError(
            f"eval.robustness ({attack.label}): a multiple-choice probe offers the perturbed answers as options, "
            "and no forget item has any (the data has no perturbed_answer column)"
        )


def probe_splits(splits: Splits, attack: Probe) -> Splits:
    """Every evaluation split with its questions rewritten by the template; an item without a
    paraphrase keeps its question under ``{paraphrased_question}``, but every forget item needs one."""
    check_probe(splits, attack)

    def rewrite(record: Record) -> Record:
        question = attack.text.format(
            question=record.question, paraphrased_question=record.paraphrased_question or record.question
        )
        return replace(record, question=question)

    return {name: [rewrite(r) for r in records] if not _trained(name) else records for name, records in splits.items()}


def _trained(split: str) -> bool:
    """Training splits (forget, retain, world) are what the models learned from: not rewritten."""
    return split in ("forget", "retain", "world")


@torch.no_grad()
def multiple_choice(
    model: nn.Module, encoder: Encoder, splits: Splits, attack: Probe, seed: int, batch_size: int = 32
) -> dict[str, float]:
    """``<split>_mc_prob`` (mean probability of the true option) and ``<split>_mc_acc`` (share of items
    where it is the most probable) over each evaluation split's items with perturbed answers."""
    check_probe(splits, attack)
    model.eval()
    device = next(model.parameters()).device
    out = {}
    for split in QA_SPLITS:
        items = [r for r in splits.get(f"{split}_eval", []) if r.perturbed_answer]
        if not items:
            continue
        prompts = [choice_prompt(r, attack, seed + i) for i, r in enumerate(items)]
        pairs = [(q, a) for q, options, _ in prompts for a in options]
        nll = torch.cat([
            reduced_nll(model, encoder.batch(*zip(*pairs[i : i + batch_size], strict=True)).to(device),
                        "sequence_sum" if attack.choice == "letter" else "sequence_mean").float().cpu()
            for i in range(0, len(pairs), batch_size)
        ])  # fmt: skip
        probs, hits, start = [], [], 0
        for _, options, true in prompts:
            p = torch.softmax(-nll[start : start + len(options)], 0)
            probs.append(float(p[true]))
            hits.append(float(int(p.argmax()) == true))
            start += len(options)
        out[f"{split}_mc_prob"], out[f"{split}_mc_acc"] = sum(probs) / len(probs), sum(hits) / len(hits)
    return out


def choice_prompt(record: Record, attack: Probe, seed: int) -> tuple[str, list[str], int]:
    """(the question with lettered options, the answers each option is scored by, the true option's
    index): the true and perturbed answers in a seeded order."""
    answers = [record.answer, *record.perturbed_answer]
    order = torch.randperm(len(answers), generator=torch.Generator().manual_seed(seed)).tolist()
    letters = string.ascii_uppercase[: len(answers)]
    options = "\n".join(f"{letter}. {answers[k]}" for letter, k in zip(letters, order, strict=True))
    question = attack.text.format(
        question=record.question,
        paraphrased_question=record.paraphrased_question or record.question,
        options=options,
    )
    scored = list(letters) if attack.choice == "letter" else [answers[k] for k in order]
    return question, scored, order.index(0)
