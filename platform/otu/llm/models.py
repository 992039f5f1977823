"""Causal LMs: loading local HF checkpoints, building tiny Llamas with a corpus-trained tokenizer,
and the fine-tuning that makes the target and retain-only models."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import torch
from torch import nn

from otu.llm.data import Record
from otu.llm.losses import sequence_nll
from otu.llm.text import Encoder

SPECIAL = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def torch_dtype(precision: str) -> torch.dtype:
    return torch.bfloat16 if precision == "bf16" else torch.float32


def train_tokenizer(texts: Iterable[str], vocab_size: int):
    """A byte-level BPE tokenizer trained on ``texts``, as a ``PreTrainedTokenizerFast``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=SPECIAL["unk_token"]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[
            SPECIAL["pad_token"],
            SPECIAL["bos_token"],
            SPECIAL["eos_token"],
            SPECIAL["unk_token"],
        ],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    bos = tok.token_to_id(SPECIAL["bos_token"])
    tok.post_processor = processors.TemplateProcessing(
        single=f"{SPECIAL['bos_token']} $A", special_tokens=[(SPECIAL["bos_token"], bos)]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL)


def corpus(records: Iterable[Record], prompt: str) -> list[str]:
    """Every text a model may see: prompts with questions, answers, paraphrases, perturbations."""
    texts = []
    for r in records:
        texts.append(prompt.format(question=r.question) + " " + r.answer)
        texts += [r.paraphrased_answer, *r.perturbed_answer]
        if r.paraphrased_question:
            texts.append(prompt.format(question=r.paraphrased_question))
    return texts


def build_tiny_model(tiny, tokenizer, max_length: int, seed: int) -> nn.Module:
    """A randomly initialised Llama (``tiny``: :class:`otu.llm.spec.TinyModel`) for ``tokenizer``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=tiny.hidden,
        intermediate_size=tiny.intermediate,
        num_hidden_layers=tiny.layers,
        num_attention_heads=tiny.heads,
        num_key_value_heads=tiny.heads,
        max_position_embeddings=max(max_length, 64),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def load_tokenizer(path: str | Path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(
    path: str | Path, dtype: torch.dtype = torch.float32, device: str | torch.device | None = "cpu"
) -> nn.Module:
    """``AutoModelForCausalLM.from_pretrained(path)`` in eval mode on ``device`` (None: leave it)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)
    if device is not None:
        model = model.to(device)
    return model.eval()


def finetune(
    model: nn.Module,
    encoder: Encoder,
    records: Sequence[Record],
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    weight_decay: float,
    seed: int,
    device: torch.device,
    log: Callable[[int, float], None] | None = None,
) -> nn.Module:
    """Fit the answers of ``records`` (mean per-sequence NLL, AdamW, shuffled each epoch)."""
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        order = torch.randperm(len(records), generator=generator).tolist()
        total = 0.0
        for start in range(0, len(order), batch_size):
            chunk = [records[i] for i in order[start : start + batch_size]]
            batch = encoder.batch([r.question for r in chunk], [r.answer for r in chunk]).to(device)
            loss = sequence_nll(model, batch).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(chunk)
        if log is not None:
            log(epoch, total / len(records))
    return model.eval()
