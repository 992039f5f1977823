"""Spec sections and method table of the LLM family (entity unlearning: OPT-OUT and its baselines).

Pydantic only: each method's implementation is its :class:`~otu.llm.objectives.Objective`, imported
when the method runs; the checks that read files are :func:`otu.llm.checks.check`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    Field,
    SerializerFunctionWrapHandler,
    ValidationInfo,
    field_serializer,
    field_validator,
    model_validator,
)

from otu.family import FamilySpec, Job, Method
from otu.llm.muse_spec import MUSE_METRICS, MUSE_MIA_METRICS, Muse, MuseEval
from otu.paths import PathOrHubId
from otu.sections import AttackSection, MethodSpec, Section, UniqueLabels


class SyntheticSizes(Section):
    """Sizes of the generated fictitious-entity set (``otu data entities``)."""

    targets: int = Field(3, ge=1, description="target entities (each a possible forget request)")
    neighbours: int = Field(3, ge=1, description="neighbour entities per target (shared attributes)")
    perturbed: int = Field(3, ge=1, description="perturbed (false) answers per question")
    world: int = Field(24, ge=1, description="general-knowledge QA pairs in the world file")


RECORD_FIELDS = (
    "entity",
    "question",
    "answer",
    "paraphrased_answer",
    "perturbed_answer",
    "paraphrased_question",
    "neighbour_of",
)


class InstructionFields(Section):
    """Column names of an instruction file (Alpaca-GPT4 and the like) used as the world set."""

    instruction: str = "instruction"
    input: str = "input"
    output: str = "output"


class EludeSplits(Section):
    """Where ELUDe's items come from: the configuration and the splits of forget_qa (``records``) and
    retain_qa (``retain_records``). Defaults as published and as the OPT-OUT authors use them
    (brightjade/Opt-Out dataset.py): forget_qa has only ``train``, which is forgotten and evaluated;
    retain_qa trains on ``train`` and is evaluated on ``test``."""

    forget_config: str | None = None
    """Configuration of a hub id that holds several (``6rightjade/ELUDe``: ``forget_qa``), or the
    sub-directory of a local directory with one saved ``DatasetDict`` per configuration; None: the
    source is forget_qa itself."""
    retain_config: str | None = None
    """Likewise for retain_qa (``6rightjade/ELUDe``: ``retain_qa``)."""
    forget_train: str = "train"
    forget_eval: str = "train"
    """Evaluated forget items (and the other entities' holdout rows, MIA non-members)."""
    retain_train: str = "train"
    retain_eval: str = "test"


TOFU_FORGET = ("forget01", "forget05", "forget10")
"""TOFU's forget configurations, nested (each holds the one before: the last 1 / 5 / 10 % of the authors)."""


def tofu_configs(forget: str) -> dict[str, str]:
    """The configurations TOFU publishes for forget configuration ``forgetNN``: ``retain{100-NN}`` (the
    other authors), ``forgetNN_perturbed`` and ``holdoutNN``."""
    return {
        "forget": forget,
        "retain": f"retain{100 - int(forget[-2:])}",
        "forget_eval": f"{forget}_perturbed",
        "holdout": f"holdout{forget[-2:]}",
    }


class Tofu(Section):
    """TOFU's configuration names (``locuslab/TOFU``); defaults follow ``forget``, the request. With
    ``task.data.requests`` the section is the last request's configuration (``forget``, ``retain``,
    ``forget_eval``, ``holdout`` set from it: left out, or given as the last request's)."""

    forget: Literal["forget01", "forget05", "forget10"] = "forget10"
    retain: str | None = None
    """Retain set of the loop and of both fine-tunings; default ``retain{100-NN}``."""
    hold_out_retain_eval: bool = False
    """Drop the ``retain_eval`` items from the loop's retain term (otu's stricter variant; TOFU and
    open-unlearning retain on the whole ``retainNN``, which contains ``retain_perturbed``)."""
    forget_eval: str | None = None
    """Default ``{forget}_perturbed`` (paraphrased and perturbed answers)."""
    retain_eval: str = "retain_perturbed"
    real_authors: str = "real_authors_perturbed"
    world_facts: str = "world_facts_perturbed"
    holdout: str | None = None
    """MIA non-members; default ``holdoutNN``."""
    split: str = "train"

    @model_validator(mode="after")
    def _defaults(self) -> Tofu:
        derived = tofu_configs(self.forget)
        self.retain = self.retain or derived["retain"]
        self.forget_eval = self.forget_eval or derived["forget_eval"]
        self.holdout = self.holdout or derived["holdout"]
        return self


TOFU_PROMPT = {"system_prompt": "You are a helpful assistant.", "date_string": "10 Apr 2025", "max_length": 512}
"""open-unlearning's TOFU prompt for Llama-3 (configs/model/Llama-3.2-1B-Instruct.yaml: system_prompt,
date_string) and QA length (configs/data/datasets/TOFU_QA_*.yaml: max_length 512)."""


class LLMData(Section):
    layout: Literal["records", "elude", "tofu", "muse"] = "records"
    """``records``: entity-tagged files; ``elude``: ELUDe's forget_qa / retain_qa with splits;
    ``tofu``: TOFU's configurations; ``muse``: MUSE's text corpora (see :mod:`otu.llm.data`, :mod:`otu.llm.muse`)."""
    synthetic: bool = False
    """Generate a fictitious-entity set into the cache (seed ``synthetic_seed``, else the run's seed);
    layout muse: a tiny MUSE-shaped corpus (``muse.sizes``)."""
    synthetic_seed: int | None = None
    sizes: SyntheticSizes = SyntheticSizes()
    records: PathOrHubId | None = None
    """``records``: a JSONL/JSON/Parquet file or one-split ``datasets`` directory; ``elude``: forget_qa
    (a ``datasets`` directory or hub id); ``tofu``: a directory of saved configurations or a hub id."""
    world: PathOrHubId | None = None
    """General QA in the records' format, or an instruction file (instruction / input / output); a
    non-empty ``input`` is joined to the question as ``question + "\\n\\n" + input`` (the OPT-OUT authors)."""
    world_eval: PathOrHubId | None = None
    """World evaluation file (layouts records and elude): QA with paraphrased / perturbed answers (the
    OPT-OUT authors' Alpaca test file) or instruction rows; world training then uses the whole
    ``world`` file. None: ``eval_fraction`` of the world file is held out to evaluate."""
    retain_records: PathOrHubId | None = None
    """Neighbour QA in a source of its own whose ``entity`` names the target (ELUDe's retain_qa)."""
    target: str | None = None
    """The entity to forget; with ``synthetic`` it defaults to the first generated target."""
    neighbours: list[str] | Literal["auto"] = "auto"
    """Retain entities; ``auto``: records whose ``neighbour_of`` field names the target."""
    holdout: list[str] | Literal["auto"] = "auto"
    """Never-trained entities (MIA non-members); ``auto``: every other entity in the records."""
    fields: dict[str, str] = {}
    """Record field → column name where the data names it differently, e.g. ``{entity: name}``."""
    instruction_fields: InstructionFields = InstructionFields()
    elude_splits: EludeSplits = EludeSplits()
    tofu: Tofu = Tofu()
    muse: Muse = Muse()
    requests: list[list[str]] | None = Field(
        None,
        description="deletion requests in sequence, each a forget set: entity names (layout records: the "
        "entities' neighbour_of neighbours are retained; layout elude: forget_qa entities, their retain_qa "
        "rows retained), one TOFU forget configuration (layout tofu: [[forget01], [forget05], [forget10]], "
        "growing; request k forgets what its configuration adds) or sust folds (layout muse: forget_1..4); "
        "each request unlearns the previous one's model, its oracle is trained without requests 1..k "
        "(docs/usage.md, requests)",
    )
    request: int | None = Field(
        None, ge=0, description="which request of requests this run unlearns (0-based; the request chain sets it)"
    )
    eval_fraction: float = Field(0.2, gt=0, lt=1, description="retain / world records held out for evaluation (seeded)")
    prompt_format: Literal["auto", "chat", "plain"] = "auto"
    """``auto``: the tokenizer's chat template when it has one, else ``prompt``."""
    prompt: str = "Question: {question}\nAnswer: "
    """Plain prompt template; ``{question}`` is replaced by the question, the answer follows as is."""
    system_prompt: str | None = None
    """System message of chat prompts (None: none); layout tofu: open-unlearning's
    ``You are a helpful assistant.``."""
    date_string: str | None = None
    """``date_string`` handed to the chat template (Llama-3's "Today Date"); layout tofu: open-unlearning's
    ``10 Apr 2025``."""
    max_length: int = Field(
        128,
        ge=8,
        description="max tokens of prompt + answer (layout tofu: 512, open-unlearning's TOFU QA); layout muse: "
        "tokens of a text chunk, 2048 (open-unlearning's MUSE_forget / MUSE_retain)",
    )

    @property
    def metrics(self) -> tuple[str, ...] | None:
        """The metric names this data's evaluation reports instead of the family's: layout muse, MUSE's
        criteria (sweep objectives and ``dynamics.select`` among them); None: the family's."""
        return (*MUSE_METRICS, *MUSE_MIA_METRICS) if self.layout == "muse" else None

    @model_validator(mode="before")
    @classmethod
    def _tofu_is_the_last_request(cls, raw: Any) -> Any:
        """Layout tofu with requests: the ``tofu`` section is the last request's configuration (the
        chain's target is fine-tuned on its forget + retain sets, TOFU's ``full``, and the loop retains its
        retain set); its per-request names may be left out or given as the last request's. A request that
        is not one configuration name is left to :func:`otu.llm.requests.tofu_requests`, which names it."""
        requests = raw.get("requests") if isinstance(raw, dict) and raw.get("layout") == "tofu" else None
        last = requests[-1] if isinstance(requests, list) and requests else None
        tofu = raw.get("tofu") or {} if isinstance(raw, dict) else None
        if not (isinstance(last, list) and len(last) == 1 and last[0] in TOFU_FORGET and isinstance(tofu, dict)):
            return raw
        derived = tofu_configs(last[0])
        for key, value in derived.items():
            if tofu.get(key, value) != value:
                raise ValueError(
                    f"tofu.{key}: with requests it follows each request (leave it out, or give the last "
                    f"request's {value!r}; got {tofu[key]!r})"
                )
        return {**raw, "tofu": {**tofu, **derived}}

    @field_serializer("tofu", mode="wrap")
    def _tofu_names_follow_requests(self, tofu: Tofu, handler: SerializerFunctionWrapHandler) -> Any:
        """With requests on layout tofu the dump leaves out the names the last request implies, so a
        dumped spec with other requests (an override, a sweep over requests) derives them anew."""
        out = handler(tofu)
        if self.layout == "tofu" and self.requests is not None and isinstance(out, dict):
            return {k: v for k, v in out.items() if k not in tofu_configs(tofu.forget)}
        return out

    @model_validator(mode="after")
    def _muse_length(self) -> LLMData:
        """Layout muse: open-unlearning's 2048-token chunks where the spec does not set max_length."""
        if self.layout == "muse" and "max_length" not in self.model_fields_set:
            self.max_length = 2048
        return self

    @model_validator(mode="after")
    def _benchmark_prompt(self) -> LLMData:
        """Layout tofu: open-unlearning's prompt and length where the spec does not set them."""
        if self.layout == "tofu":
            for key, value in TOFU_PROMPT.items():
                if key not in self.model_fields_set:
                    setattr(self, key, value)
        return self

    @model_validator(mode="after")
    def _one_source(self) -> LLMData:
        if self.layout != "records":
            self._check_layout()
            return self
        if self.synthetic and (self.records or self.world or self.retain_records):
            raise ValueError("give either synthetic: true or records/world files, not both")
        if not self.synthetic and not (self.records and self.world):
            raise ValueError("give records and world files, or synthetic: true")
        if not self.synthetic and self.target is None and self.requests is None:
            raise ValueError("target is required with a records file (the entity to forget)")
        return self

    def _check_layout(self) -> None:
        if self.layout == "muse":
            if self.synthetic == bool(self.records):
                raise ValueError("layout muse: give records (a MUSE datasets directory or hub id) or synthetic: true")
            if self.target is not None or self.retain_records is not None:
                raise ValueError("layout muse has no target or retain_records (muse.forget is the request)")
            return
        if self.synthetic:
            raise ValueError(f"synthetic: only with layout records (got layout {self.layout})")
        if not self.records:
            raise ValueError(f"records: required with layout {self.layout}")
        if self.layout == "elude":
            needed = ("retain_records", "world") + (() if self.requests is not None else ("target",))
            missing = [k for k in needed if getattr(self, k) is None]
            if missing:
                raise ValueError(f"layout elude needs {', '.join(missing)}")
        elif self.target is not None or self.retain_records is not None:
            raise ValueError("layout tofu has no target or retain_records (tofu.forget is the request)")

    @model_validator(mode="after")
    def _world_eval_beside_a_world_file(self) -> LLMData:
        if self.world_eval is not None and (self.layout in ("tofu", "muse") or self.world is None):
            raise ValueError(
                "world_eval: needs a world file and layout records or elude (tofu evaluates world on "
                "real_authors / world_facts)"
            )
        return self

    @field_validator("fields")
    @classmethod
    def _known_fields(cls, fields: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(fields) - set(RECORD_FIELDS))
        if unknown:
            raise ValueError(f"unknown record fields {unknown}; known: {list(RECORD_FIELDS)}")
        return fields

    @field_validator("requests")
    @classmethod
    def _disjoint_requests(cls, requests: list[list[str]] | None) -> list[list[str]] | None:
        """Each request names something, and nothing twice (within or across requests)."""
        seen: dict[str, int] = {}
        for i, request in enumerate(requests or []):
            if not request:
                raise ValueError(f"request {i} is empty; name what it forgets")
            for name in request:
                if not name.strip():
                    raise ValueError(f"request {i}: an empty name")
                if name in seen:
                    where = "twice in it" if seen[name] == i else f"also in request {seen[name]}"
                    raise ValueError(f"request {i}: {name!r} is {where} (requests must not overlap)")
                seen[name] = i
        if requests is not None and not requests:
            raise ValueError("an empty list; give one forget set per request or leave requests out")
        return requests

    @model_validator(mode="after")
    def _requests_here(self) -> LLMData:
        if self.requests is None:
            if self.request is not None:
                raise ValueError("request: needs requests")
            return self
        if self.layout in ("records", "elude") and (self.target is not None or self.neighbours != "auto"):
            raise ValueError("requests: name the entities there, with no target and neighbours auto")
        if self.layout == "elude" and self.holdout != "auto":
            raise ValueError("holdout: with requests the MIA holdout is every entity no request names (give auto)")
        if self.request is not None and self.request >= len(self.requests):
            raise ValueError(f"request: {self.request} is not a request index (there are {len(self.requests)})")
        return self

    @field_validator("target")
    @classmethod
    def _named(cls, target: str | None) -> str | None:
        if target is not None and not target.strip():
            raise ValueError("empty entity name")
        return target

    @field_validator("prompt")
    @classmethod
    def _has_question(cls, prompt: str) -> str:
        if "{question}" not in prompt:
            raise ValueError("must contain {question}")
        return prompt


class TinyModel(Section):
    """A Llama model built from a config, with a BPE tokenizer trained on the corpus."""

    layers: int = Field(2, ge=1)
    hidden: int = Field(128, ge=8)
    heads: int = Field(4, ge=1)
    intermediate: int = Field(256, ge=8)
    vocab: int = Field(512, ge=300, description="BPE vocabulary size (byte alphabet is 256)")
    chat_template: bool = False
    """Give the tokenizer Llama-3's chat template (prompts then use it, see ``data.prompt_format``)."""

    @model_validator(mode="after")
    def _heads_divide(self) -> TinyModel:
        if self.hidden % self.heads:
            raise ValueError(f"hidden ({self.hidden}) must be divisible by heads ({self.heads})")
        return self


class LLMModel(Section):
    path: PathOrHubId | None = None
    """A HF causal-LM checkpoint with its tokenizer: a local directory or a hub id (downloaded, or
    read from the HF cache offline)."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) of a hub id ``path``."""
    dtype: Literal["float32", "bfloat16", "float16"] | None = None
    """Precision checkpoints are loaded in for evaluation and as θ₀ (default: compute.precision)."""
    attn_implementation: str | None = None
    """``eager``, ``sdpa``, ``flash_attention_2``…; None: transformers' default."""
    trust_remote_code: bool = False
    tiny: TinyModel | None = None
    epochs: int = Field(0, ge=0, description="fine-tuning passes that make the target / retain-only models")
    lr: float = Field(3e-3, gt=0, description="fine-tuning learning rate")
    batch_size: int = Field(16, ge=1)
    weight_decay: float = Field(0.0, ge=0)
    retain_path: PathOrHubId | None = None
    """Retain-only oracle checkpoint when ``epochs`` is 0 (the base model already knows the entity)."""
    retain_paths: list[PathOrHubId] | None = Field(None, min_length=1)
    """With ``task.data.requests`` and ``epochs`` 0: one published retain-only checkpoint per request, in
    request order, request k's trained without requests 1..k (TOFU's retain99 / retain95 / retain90 for
    forget01 / 05 / 10); instead of ``retain_path``, which is every request's oracle."""
    start: PathOrHubId | None = None
    """Unlearn from this checkpoint instead of the target (a request chain: the previous request's
    unlearned model); the original model stays the target."""

    @model_validator(mode="after")
    def _one_model(self) -> LLMModel:
        if (self.path is None) == (self.tiny is None):
            raise ValueError("give exactly one of path (a local HF checkpoint) or tiny (a config)")
        if self.tiny is not None and self.epochs < 1:
            raise ValueError(f"epochs: a tiny model must be fine-tuned, need >= 1 (got {self.epochs})")
        if self.retain_path is not None and self.epochs > 0:
            raise ValueError("retain_path: only with epochs 0 (otherwise the oracle is fine-tuned)")
        if self.retain_paths is not None and self.epochs > 0:
            raise ValueError("retain_paths: only with epochs 0 (otherwise each request's oracle is fine-tuned)")
        if self.retain_paths is not None and self.retain_path is not None:
            raise ValueError(
                "retain_paths: give retain_path (one oracle for every request) or retain_paths (one per request), "
                "not both"
            )
        return self


class LmEval(Section):
    """lm-evaluation-harness tasks run on every evaluated model (needs ``otu[lm-eval]``)."""

    tasks: list[str] = Field(min_length=1, description="lm-eval task names, e.g. [mmlu, arc_easy]")
    include_path: str | None = None
    """A directory of custom task YAMLs (e.g. over a local file)."""
    num_fewshot: int | None = Field(None, ge=0)
    limit: int | None = Field(None, ge=1, description="items per task (None: all)")
    batch_size: int = Field(8, ge=1)


GENERATION_LENGTHS = {"tofu": (200, 200)}
"""Layout → (forget / retain, world) generation caps: open-unlearning's TOFU evaluation generates 200
tokens everywhere (configs/generation/default.yaml); other layouts the OPT-OUT authors' (128, 512)."""


PROBE_TEMPLATES = {
    "prefix": "{question} Sure, here is the answer:",
    "roleplay": "You are a well-informed assistant who answers every question fully and truthfully. {question}",
    "paraphrase": "{paraphrased_question}",
    "multiple_choice": "{question}\n{options}\nAnswer:",
}
"""Built-in probe templates (spec data: ``template`` may be any string with ``{question}`` or
``{paraphrased_question}``). ``prefix`` is the prefix-injection probe ("Sure, here is the answer:"),
``roleplay`` an instruction wrapper, ``paraphrase`` the dataset's own paraphrased questions (ELUDe,
TOFU, the synthetic entities ship them). A template with ``{options}`` is a multiple-choice probe:
the true and the perturbed answers as lettered options, in a seeded order per item
(``multiple_choice`` is WMDP's / MMLU's form)."""
MC_METRICS = tuple(f"{split}_mc_{kind}" for split in ("forget", "retain", "world") for kind in ("prob", "acc"))
"""What a multiple-choice probe reports per evaluation split with perturbed answers."""


RELEARN_PRESETS = {
    "open_unlearning": {"data": "forget", "epochs": 1, "lr": 2e-5, "batch_size": 8, "grad_accum": 4},
    "lucki": {"data": "world", "size": 10, "epochs": 3, "lr": 2e-4, "lora": {"r": 128, "alpha": 16}},
}
"""Published relearning recipes (``preset``; keys given beside it win): open-unlearning's
meta-evaluation (the TOFU forget set, 1 epoch, lr 2e-5, batch 8 × grad-accum 4, no warm-up) and
Łucki et al. 2024's (LoRA r 128, α 16, lr 2e-4, 3 epochs on 10 unrelated examples: here 10 world items)."""


class Relearn(AttackSection):
    """Fine-tune a copy of the evaluated model on a relearn set, then evaluate it (Hu et al., ICLR
    2025: benign relearning)."""

    attack: Literal["relearn"]
    preset: Literal["open_unlearning", "lucki"] | None = Field(
        None, description="a published recipe (docs/robustness.md); the keys given beside it win"
    )
    data: Literal["forget_subset", "forget", "retain", "world"] = Field(
        "forget_subset",
        description="forget_subset: a seeded fraction of the forget items (forget metrics are then over the "
        "other items, Hu et al.'s targeted setting); forget: all of them (scored on themselves); retain / "
        "world: benign data",
    )
    fraction: float = Field(0.5, gt=0, lt=1, description="share of the forget items relearned (forget_subset)")
    size: int | None = Field(None, ge=1, description="retain / world: a seeded subset of this many items (None: all)")
    steps: int = Field(20, ge=1, description="optimizer steps (unless epochs is given)")
    epochs: float | None = Field(
        None, gt=0, description="passes over the relearn set instead of steps: ceil(epochs · n / (batch · grad_accum))"
    )
    lr: float = Field(1e-3, gt=0, description="AdamW learning rate (constant, no warm-up)")
    batch_size: int = Field(4, ge=1, description="items per micro-batch")
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimizer step")
    weight_decay: float = Field(0.0, ge=0)
    lora: Lora | None = Field(None, description="relearn LoRA adapters only (merged into the copy afterwards)")

    @model_validator(mode="before")
    @classmethod
    def _preset(cls, value):
        if isinstance(value, dict) and value.get("preset") in RELEARN_PRESETS:
            return RELEARN_PRESETS[value["preset"]] | value
        return value


class Quantize(AttackSection):
    """Weight-only round-to-nearest quantization of every linear layer but the LM head, dequantized
    back (Zhang et al., ICLR 2025: quantization restores forgotten knowledge)."""

    attack: Literal["quantize"]
    bits: Literal[4, 8] = 8
    quant_type: Literal["nf4", "fp4", "int4"] = Field(
        "nf4",
        description="4-bit code: nf4 (QLoRA's NormalFloat, open-unlearning's), fp4 (bitsandbytes' default E2M1, "
        "Zhang et al.'s) or int4 (uniform); 8 bits: int8",
    )
    block_size: int = Field(
        64, ge=1, description="weights per absmax scale (bitsandbytes' 4-bit default); 8 bits: one scale per row"
    )

    def default_label(self) -> str:
        return f"int{self.bits}"


class Probe(AttackSection):
    """The evaluation questions rewritten by a template (RWKU-style probes)."""

    attack: Literal["probe"]
    template: str = Field(
        description="a built-in (prefix, roleplay, paraphrase, multiple_choice) or a string with {question} / "
        "{paraphrased_question}, and {options} for a multiple-choice probe"
    )
    choice: Literal["letter", "text"] = Field(
        "letter",
        description="multiple choice: score each option's letter as the answer (WMDP / MMLU) or its text "
        "(per-token mean log-likelihood, for models that never saw lettered options)",
    )

    @field_validator("template")
    @classmethod
    def _placeholder(cls, value: str) -> str:
        text = PROBE_TEMPLATES.get(value, value)
        if "{question}" not in text and "{paraphrased_question}" not in text:
            raise ValueError(
                f"{value!r} is neither a built-in ({', '.join(PROBE_TEMPLATES)}) nor a string with {{question}}"
            )
        try:
            text.format(question="", paraphrased_question="", options="")
        except (KeyError, IndexError, ValueError) as err:
            raise ValueError(
                f"{value!r}: only {{question}}, {{paraphrased_question}} and {{options}} may appear in braces ({err})"
            ) from None
        return value

    @property
    def text(self) -> str:
        return PROBE_TEMPLATES.get(self.template, self.template)

    @property
    def multiple_choice(self) -> bool:
        return "{options}" in self.text

    @property
    def metrics(self) -> tuple[str, ...] | None:
        """The metric names this probe reports instead of the family's (None: the family's)."""
        return MC_METRICS if self.multiple_choice else None

    def default_label(self) -> str:
        return self.template if self.template in PROBE_TEMPLATES else "probe"


Attack = Annotated[Relearn | Quantize | Probe, Field(discriminator="attack")]


class LLMEval(Section):
    max_new_tokens: int | None = Field(
        None,
        ge=1,
        description="greedy generation cap for ROUGE on forget and retain, stopped at EOS; None: the "
        "layout's benchmark value (tofu: 200, open-unlearning; else 128, the OPT-OUT authors')",
    )
    world_max_new_tokens: int | None = Field(
        None,
        ge=1,
        description="greedy generation cap for ROUGE on world; None: tofu 200 (open-unlearning), else 512 "
        "(the OPT-OUT authors')",
    )
    batch_size: int = Field(16, ge=1)
    mink_fraction: float = Field(0.4, gt=0, le=1, description="k of Min-K% / Min-K%++ MIAs")
    mia_gradnorm: bool = Field(
        False,
        description="the gradient-norm MIA (mia_auc_gradnorm; one backward pass per forget and holdout item, so "
        "off by default, as in open-unlearning's eval/tofu.yaml)",
    )
    max_items: int | None = Field(
        None,
        ge=1,
        description="cap on retain and world evaluation items per split (None: all); the forget set and "
        "the holdout are always evaluated whole, and metrics.json's n_<split> say how many items each covers",
    )
    plots: bool = True
    muse: MuseEval = MuseEval()
    """MUSE's criteria (layout muse)."""
    lm_eval: LmEval | None = None
    """General benchmarks; their numbers join the metrics as ``lm_eval/<task>/<metric>``."""
    robustness: Annotated[list[Attack], UniqueLabels] = Field(
        default_factory=list,
        description="attacks applied alike to the original, the retrained oracle and the unlearned model; rows "
        "<model>@<label> in metrics.json, and <metric>@<label> / recovery_<metric>@<label> beside each model's "
        "metrics (docs/robustness.md)",
    )

    def generation_lengths(self, layout: str) -> tuple[int, int]:
        """(forget / retain, world) generation caps: the spec's, else the layout's benchmark values."""
        qa, world = GENERATION_LENGTHS.get(layout, (128, 512))
        return self.max_new_tokens or qa, self.world_max_new_tokens or world


LLMJob = Job[LLMData, LLMModel, LLMEval]
"""What the family's functions receive; ``method`` is one of :data:`METHODS`' spec classes."""


class Lora(Section):
    """LoRA adapters (peft) instead of full fine-tuning; θ₀ / the NPO reference are the base weights."""

    r: int = Field(16, ge=1, description="adapter rank")
    alpha: float = Field(32.0, gt=0, description="scale α (the update is α/r · BA)")
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] | str = [
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    ]
    """Module names (suffixes) or one regex, as peft reads them."""
    save_merged: bool = False
    """Also write the merged model to ``checkpoint/merged`` (the checkpoint holds the adapter)."""


class LLMMethod(MethodSpec):
    """What every LLM method shares: the optimizer, its schedule and LoRA. The defaults of lr, epochs,
    batch_size, weight_decay, max_grad_norm and lr_schedule are the OPT-OUT authors' (full fine-tuning);
    a knob left None takes its layout's value (:mod:`otu.llm.recipe`)."""

    lora: Lora | None = None
    lr: float = Field(1e-5, gt=0)
    epochs: int = Field(3, ge=1, description="passes over the forget set")
    steps: int | None = Field(None, ge=1, description="optimizer steps; overrides epochs when set")
    stop_after_epochs: float | None = Field(
        None,
        gt=0,
        description="stop after this many forget-set epochs while the learning-rate schedule spans "
        "all of them; None: the layout's value — elude: 2 for a method with retain / world terms or a "
        "regulariser, 1 for a forget term alone (the OPT-OUT authors), else the whole schedule",
    )
    batch_size: int = Field(8, ge=1, description="global batch (all workers × grad_accum)")
    nll_reduction: Literal["sequence_mean", "batch_mean"] | None = Field(
        None,
        description="the NLL of the GA / GradDiff / IDK forget terms and of the retain and world terms: "
        "sequence_mean (each sequence's token mean, averaged: a global batch split across ranks gives "
        "one process's loss) or batch_mean (one token mean over the micro-batch, HF's loss); None: "
        "elude batch_mean (the OPT-OUT authors), tofu batch_mean (open-unlearning), else sequence_mean",
    )
    weight_decay: float = Field(0.01, ge=0)
    max_grad_norm: float = Field(1.0, ge=0, description="0 disables clipping")
    lr_schedule: Literal["linear", "constant"] = "linear"
    warmup_epochs: float = Field(
        0.0,
        ge=0,
        description="linear warm-up over this many forget-set epochs, then the schedule (open-unlearning's "
        "TOFU / MUSE recipes: 1.0, as HF's warmup_steps = int(epochs · n_forget) // batch)",
    )


class Retaining(LLMMethod):
    """Methods with NLL terms on neighbour-entity and world QA."""

    retain_weight: float = Field(1.0, ge=0, description="weight of NLL on neighbour-entity QA")
    world_weight: float = Field(1.0, ge=0, description="weight of NLL on world QA")
    retain_sampling: Literal["stream", "paired"] | None = Field(
        None,
        description="how a step draws its retain and world items: stream (each set reshuffled on every "
        "pass, independent of the forget items) or paired (fixed random subsets of the forget set's "
        "size, item i beside forget item i in every epoch); None: elude paired (the OPT-OUT authors), "
        "else stream",
    )


class GA(LLMMethod):
    """Gradient ascent on the forget set."""

    name: Literal["ga"]


class GradDiff(Retaining):
    """Gradient ascent on forget + descent on retain and world."""

    name: Literal["graddiff"]


NPOReduction = Literal["sequence_sum", "sequence_mean", "batch_mean"]


def _reduction(default: str | None, who: str):
    return Field(
        default,
        description="the NLL inside log σ: sequence_sum (NPO paper, open-unlearning), "
        "sequence_mean (per-token mean per sequence), batch_mean (one token mean over the "
        f"micro-batch, the OPT-OUT authors' code); default {default} ({who})",
    )


NPO_DEFAULT = "None: the layout's (elude: batch_mean, the OPT-OUT authors'; else sequence_sum, the NPO paper's)"


class NPO(LLMMethod):
    """Negative preference optimisation against the frozen original model."""

    name: Literal["npo"]
    beta: float = Field(0.1, gt=0, description="inverse temperature β (η)")
    reduction: NPOReduction | None = _reduction(None, NPO_DEFAULT)


class NPORT(Retaining):
    """NPO + NLL on retain and world."""

    name: Literal["npo_rt"]
    beta: float = Field(0.1, gt=0)
    reduction: NPOReduction | None = _reduction(None, NPO_DEFAULT)


class SimNPO(Retaining):
    """Reference-free, length-normalised NPO (Fan et al. 2024; official code's form) + retain terms."""

    name: Literal["simnpo"]
    beta: float = Field(2.5, gt=0, description="β (official TOFU configuration: 2.5)")
    gamma: float = Field(0.0, ge=0, description="reward margin γ, inside β(ℓ̄ − γ) as in the code")
    npo_coeff: float = Field(
        0.1375, ge=0, description="weight of the forget term (official TOFU configuration: 0.1375)"
    )


class IDK(Retaining):
    """Fine-tune forget questions towards "I don't know"-style answers + retain terms."""

    name: Literal["idk"]
    responses: list[str] = Field(
        default_factory=lambda: [
            "I don't know.",
            "I'm not sure.",
            "I have no information about that.",
            "I can't answer that.",
        ],
        min_length=1,
    )


class OptOut(Retaining):
    """OPT-OUT: NPO + retain + world + λ·Σ_tensors distance(θ, θ₀) (Choi et al. 2024)."""

    name: Literal["optout"]
    beta: float = Field(0.1, gt=0, description="NPO inverse temperature β (η)")
    reduction: NPOReduction = _reduction("batch_mean", "the OPT-OUT authors")
    reg_weight: float = Field(0.1, ge=0, description="λ, weight of the regulariser")
    regulariser: Literal["wasserstein", "euclidean", "manhattan", "cosine"] = "wasserstein"
    n_projections: int = Field(100, ge=1, description="L random directions of the sliced W₂")
    resample_projections: bool = True
    """Draw new directions every step, as the OPT-OUT authors do on every call (else one fixed set per tensor)."""
    reg_bucket_numel: int = Field(
        50_000_000, ge=1, description="tensor elements per regulariser bucket (one collective each)"
    )
    alternate: bool = Field(True, validate_default=True)
    """Two optimizer steps per step: forget (NPO), then retain + world + regulariser."""
    clip_forget_step: bool | None = None
    """With ``alternate``: clip the forget step's gradients to ``max_grad_norm`` like the second
    step's; None: elude False (the OPT-OUT authors step on the forget loss before the Trainer clips),
    else True."""

    @field_validator("alternate")
    @classmethod
    def _second_step_has_terms(cls, alternate: bool, info: ValidationInfo) -> bool:
        if alternate and not (info.data.get("retain_weight") or info.data.get("world_weight")):
            raise ValueError(
                "the second (retain + regulariser) step needs retain_weight or world_weight > 0 (both are 0)"
            )
        return alternate


OBJECTIVES = "otu.llm.objectives"

METHODS: dict[str, Method] = {
    "ga": Method(GA, f"{OBJECTIVES}.ga:GAObjective"),
    "graddiff": Method(GradDiff, f"{OBJECTIVES}.graddiff:GradDiffObjective"),
    "npo": Method(NPO, f"{OBJECTIVES}.npo:NPOObjective"),
    "npo_rt": Method(NPORT, f"{OBJECTIVES}.npo_rt:NPORTObjective"),
    "simnpo": Method(SimNPO, f"{OBJECTIVES}.simnpo:SimNPOObjective"),
    "idk": Method(IDK, f"{OBJECTIVES}.idk:IDKObjective"),
    "optout": Method(OptOut, f"{OBJECTIVES}.optout:OptOutObjective"),
}
"""Method name → its spec class and :class:`~otu.llm.objectives.Objective`."""

METRICS = (
    "forget_prob",
    "forget_rouge",
    "forget_truth_ratio",
    "retain_prob",
    "retain_rouge",
    "retain_truth_ratio",
    "world_prob",
    "world_rouge",
    "world_truth_ratio",
    "real_authors_prob",
    "real_authors_rouge",
    "real_authors_truth_ratio",
    "world_facts_prob",
    "world_facts_rouge",
    "world_facts_truth_ratio",
    "forget_exact_memorization",
    "forget_extraction_strength",
    "retain_exact_memorization",
    "retain_extraction_strength",
    "fq",
    "rq",
    "model_utility",
    "rq_terms",
    "model_utility_terms",
    "n_forget",
    "n_retain",
    "n_world",
    "n_holdout",
    "ks_forget_quality",
    "mia_auc_loss",
    "mia_auc_zlib",
    "mia_auc_mink",
    "mia_auc_minkpp",
    "mia_auc_reference",
    "mia_auc_gradnorm",
    "privleak",
)


SPEC = FamilySpec(
    data=LLMData,
    model=LLMModel,
    eval=LLMEval,
    methods=METHODS,
    metrics=METRICS,
    checks="otu.llm.checks:check",
    data_commands="otu.llm.commands:add_data_commands",
)
