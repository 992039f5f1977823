"""Causal LMs: loading HF checkpoints (a local directory or a hub id), building tiny Llamas with a
corpus-trained tokenizer, and the fine-tuning that makes the target and retain-only models."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import torch
from torch import nn

from otu.errors import SpecError
from otu.llm.data import Record
from otu.llm.losses import sequence_nll
from otu.llm.spec import LLMModel, TinyModel
from otu.llm.text import Encoder, TemplateError
from otu.sections import Compute

SPECIAL = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}
CHAT_TOKENS = ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|start_header_id|>{{ message['role'] }}"
    "<|end_header_id|>\n\n{{ message['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
"""Llama-3's chat format, given to tiny models with ``chat_template: true``."""
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def torch_dtype(precision: str) -> torch.dtype:
    return torch.bfloat16 if precision == "bf16" else torch.float32


def eval_dtype(model_spec: LLMModel, compute: Compute) -> torch.dtype:
    """The precision checkpoints are evaluated in: ``task.model.dtype``, else ``compute.precision``."""
    name = model_spec.dtype
    return DTYPES[name] if name else torch_dtype(compute.precision)


def encoder_for(tokenizer, data, field: str = "task.model.path") -> Encoder:
    """The :class:`Encoder` of a ``task.data`` section; a chat template that cannot carry a QA pair
    is a :class:`SpecError` naming ``field``."""
    chat = {"auto": None, "chat": True, "plain": False}[data.prompt_format]
    try:
        return Encoder(tokenizer, data.prompt, data.max_length, chat, data.system_prompt, data.date_string)
    except TemplateError as err:
        raise SpecError(
            f"{field}: {err}; fix the tokenizer's chat_template or set task.data.prompt_format: plain"
        ) from None


def train_tokenizer(texts: Iterable[str], vocab_size: int, chat: bool = False):
    """A byte-level BPE tokenizer trained on ``texts``, as a ``PreTrainedTokenizerFast``; with
    ``chat``, Llama-3's header/end-of-turn tokens, its chat template, and ``<|eot_id|>`` as eos."""
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
            *(CHAT_TOKENS if chat else ()),
        ],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    bos = tok.token_to_id(SPECIAL["bos_token"])
    tok.post_processor = processors.TemplateProcessing(
        single=f"{SPECIAL['bos_token']} $A", special_tokens=[(SPECIAL["bos_token"], bos)]
    )
    if not chat:
        return PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        **{**SPECIAL, "eos_token": CHAT_TOKENS[2]},
        additional_special_tokens=[*CHAT_TOKENS[:2], SPECIAL["eos_token"]],
        chat_template=CHAT_TEMPLATE,
    )


def corpus(records: Iterable[Record], prompt: str) -> list[str]:
    """Every text a model may see: prompts with questions, answers, paraphrases, perturbations."""
    texts = []
    for r in records:
        if r.kind == "text":
            texts.append(r.answer)
            continue
        texts.append(prompt.format(question=r.question) + r.answer)
        texts += [r.paraphrased_answer or "", *r.perturbed_answer]
        if r.paraphrased_question:
            texts.append(prompt.format(question=r.paraphrased_question))
    return texts


def build_tiny_model(tiny: TinyModel, tokenizer, max_length: int, seed: int) -> nn.Module:
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


def tiny_layout(tiny: TinyModel) -> list[tuple[str, bool]]:
    """The module tree of :func:`build_tiny_model`'s Llama as ``(name, is nn.Linear)``, without
    importing transformers (``otu validate`` checks LoRA targets against it; a test pins it to
    transformers' own tree)."""
    attention = [("self_attn", False), *((f"self_attn.{p}_proj", True) for p in "qkvo")]
    mlp = [("mlp", False), *((f"mlp.{p}_proj", True) for p in ("gate", "up", "down")), ("mlp.act_fn", False)]
    block = [*attention, *mlp, ("input_layernorm", False), ("post_attention_layernorm", False)]
    layers: list[tuple[str, bool]] = []
    for i in range(tiny.layers):
        layers += [(f"model.layers.{i}", False), *((f"model.layers.{i}.{name}", linear) for name, linear in block)]
    head = [("model.norm", False), ("model.rotary_emb", False), ("lm_head", True)]
    return [("model", False), ("model.embed_tokens", False), ("model.layers", False), *layers, *head]


def load_options(model_spec: LLMModel) -> dict:
    """``from_pretrained`` keyword arguments of a ``task.model`` section (beyond path and dtype)."""
    options: dict = {"trust_remote_code": model_spec.trust_remote_code}
    if model_spec.attn_implementation is not None:
        options["attn_implementation"] = model_spec.attn_implementation
    return options


def resolve_checkpoint(path: str, revision: str | None, field: str = "task.model.path") -> Path:
    """A local checkpoint directory for ``path``: the directory itself, or the snapshot of the hub
    id ``path`` at ``revision`` (downloaded, or read from the HF cache when the hub is unreachable)."""
    local = Path(path).expanduser()
    if local.is_dir():
        return local.resolve()
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(path, revision=revision))
    except Exception as err:  # offline, unknown id, gated repo, bad revision: one cause for the user
        cause = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise SpecError(
            f"{field}: {path!r} is neither a local directory nor a hub id that can be fetched or "
            f"found in the HF cache (revision {revision or 'main'}): {type(err).__name__}: {cause}"
        ) from None


def load_tokenizer(path: str | Path, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(
    path: str | Path,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = "cpu",
    **options,
) -> nn.Module:
    """``AutoModelForCausalLM.from_pretrained(path, **options)`` in eval mode on ``device`` (None:
    leave it); ``options``: :func:`load_options`."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, **options)
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
            batch = encoder.records(chunk).to(device)
            loss = sequence_nll(model, batch).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(chunk)
        if log is not None:
            log(epoch, total / len(records))
    return model.eval()
