"""ELUDe as published and as the OPT-OUT authors run it (brightjade/Opt-Out at 995babb): the splits,
the world evaluation file, and the training recipe a method's unset knobs take on ``layout: elude``.

Expected values are written from the reference's definitions (file:line in each docstring), on data
shaped like the published dataset card (6rightjade/ELUDe: configuration ``forget_qa`` with only a
``train`` split, ``retain_qa`` with train / validation / test) and the authors' Alpaca-GPT4 files
(``question`` / ``input`` / ``answer``, the test file with paraphrased / perturbed answers).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from datasets import Dataset, DatasetDict
from test_llm import REPO, tiny_spec
from test_llm_checkpoints import one_line_error
from torch import nn

from otu.errors import DataError
from otu.family import StepCallback
from otu.llm.data import REQUIRED, load_splits
from otu.llm.engine import DeepSpeedEngine, EngineSettings, PlainEngine, steps_for
from otu.llm.family import FAMILY
from otu.llm.loop import _phase, ensure_process_group, steps_run
from otu.llm.losses import StepBatches, reduced_nll
from otu.llm.models import build_tiny_model, train_tokenizer
from otu.llm.objectives import objective_for
from otu.llm.objectives.ga import GAObjective
from otu.llm.objectives.graddiff import GradDiffObjective
from otu.llm.recipe import Recipe, recipe_for
from otu.llm.sampling import StepSampler, Stream
from otu.llm.spec import SPEC, LLMData, OptOut, TinyModel
from otu.llm.synthetic import generate_entities
from otu.llm.text import IGNORE, Batch, Encoder
from otu.spec import parse_experiment

SIZES = {"targets": 2, "neighbours": 2, "perturbed": 2, "world": 24}


# ---------------------------------------------------------------- data as published


def save_published(root: Path, retain_splits=("train", "validation", "test")) -> dict:
    """ELUDe's two configurations as ``save_to_disk`` directories under ``root`` (forget_qa: the target
    entities' rows, one ``train`` split; retain_qa: neighbour rows whose ``entity`` names the target,
    split train / validation / test by 2:1:1) and the authors' Alpaca files: ``train`` (question /
    input / answer) and ``test`` (plus paraphrased_answer / perturbed_answer)."""
    gen = generate_entities(3, LLMData(synthetic=True, sizes=SIZES).sizes)
    columns = ("entity", *REQUIRED[1:])
    forget = [{k: r[k] for k in columns} for r in gen["records"] if not r["neighbour_of"]]
    retain = [{k: r[k] for k in columns} | {"entity": r["neighbour_of"]} for r in gen["records"] if r["neighbour_of"]]
    DatasetDict({"train": Dataset.from_list(forget)}).save_to_disk(str(root / "forget_qa"))
    share = {"train": (0, 1), "validation": (2,), "test": (3,)}
    parts = {s: [r for i, r in enumerate(retain) if i % 4 in share[s]] for s in retain_splits}
    DatasetDict({s: Dataset.from_list(v) for s, v in parts.items()}).save_to_disk(str(root / "retain_qa"))
    world = gen["world"]
    alpaca = [
        {"question": w["question"], "input": "in context" if i % 2 else "", "answer": w["answer"]}
        for i, w in enumerate(world)
    ]
    (root / "alpaca_train.json").write_text(json.dumps(alpaca[:16]))
    test = [
        a | {k: w[k] for k in ("paraphrased_answer", "perturbed_answer")} for a, w in zip(alpaca, world, strict=True)
    ]
    (root / "alpaca_test.json").write_text(json.dumps(test[16:]))
    return {"root": root, "target": gen["targets"][0], "forget": forget, "retain": parts, "alpaca": alpaca}


@pytest.fixture()
def published(tmp_path) -> dict:
    return save_published(tmp_path)


def elude_data(pub: dict, **data) -> dict:
    root = pub["root"]
    return {
        "layout": "elude",
        "records": str(root / "forget_qa"),
        "retain_records": str(root / "retain_qa"),
        "world": str(root / "alpaca_train.json"),
        "world_eval": str(root / "alpaca_test.json"),
        "target": pub["target"],
        **data,
    }


def questions(records) -> list[str]:
    return [r.question for r in records]


def test_published_splits_forget_on_train_and_retain_on_train_evaluated_on_test(published):
    """dataset.py:63-64, 67, 82 train on forget_qa/train and retain_qa/train (the target's rows);
    dataset.py:18-21 evaluate forget on forget_qa/train itself and retain on retain_qa/<split>, the
    reported numbers on ``test`` (run.py:28, 94-95). MIA non-members are the other entities'
    forget_qa rows (the split that exists)."""
    splits = load_splits(LLMData(**elude_data(published)), 0)
    target = published["target"]
    mine = [r["question"] for r in published["forget"] if r["entity"] == target]
    assert questions(splits["forget"]) == mine and questions(splits["forget_eval"]) == mine
    assert questions(splits["retain"]) == [r["question"] for r in published["retain"]["train"] if r["entity"] == target]
    assert questions(splits["retain_eval"]) == [
        r["question"] for r in published["retain"]["test"] if r["entity"] == target
    ]
    assert questions(splits["holdout"]) == [r["question"] for r in published["forget"] if r["entity"] != target]
    assert not set(questions(splits["retain"])) & set(questions(splits["retain_eval"]))


def test_one_source_with_configurations_reads_like_two_directories(published, monkeypatch):
    """dataset.py:18-19, 63-64: ``load_dataset("6rightjade/ELUDe", "forget_qa" | "retain_qa", split=…)``
    — a hub id whose configurations the spec names; a local directory holds them as sub-directories."""
    apart = load_splits(LLMData(**elude_data(published)), 0)
    root = str(published["root"])
    configs = {"forget_config": "forget_qa", "retain_config": "retain_qa"}
    one = elude_data(published, records=root, retain_records=root, elude_splits=configs)
    assert load_splits(LLMData(**one), 0) == apart

    import datasets

    calls = []

    def from_hub(source, config):
        calls.append((source, config))
        return datasets.load_from_disk(f"{root}/{config}")

    monkeypatch.setattr(datasets, "load_dataset", from_hub)
    hub = elude_data(published, records="6rightjade/ELUDe", retain_records="6rightjade/ELUDe", elude_splits=configs)
    assert load_splits(LLMData(**hub), 0) == apart
    assert set(calls) == {("6rightjade/ELUDe", "forget_qa"), ("6rightjade/ELUDe", "retain_qa")}


def test_a_missing_configuration_or_split_names_its_key(published, tmp_path):
    raw = tiny_spec(tmp_path / "cache")
    root = str(published["root"])
    raw["task"]["data"] = elude_data(published, records=root, elude_splits={"forget_config": "forget"})
    message = one_line_error(raw)
    assert message.startswith("task.data.elude_splits.forget_config:") and "'forget_qa'" in message
    pub = save_published(tmp_path / "no_test", retain_splits=("train", "validation"))
    raw["task"]["data"] = elude_data(pub)
    message = one_line_error(raw)
    assert message.startswith("task.data.elude_splits.retain_eval: split 'test' is not in")
    assert "['train', 'validation']" in message
    raw["task"]["data"]["elude_splits"] = {"retain_eval": "validation"}
    parse_experiment(raw)


# ---------------------------------------------------------------- world evaluation file


def test_world_eval_file_evaluates_world_and_the_world_file_trains_whole(published):
    """dataset.py:88 trains on alpaca_gpt4_data_train.json whole and dataset.py:22 evaluates on
    alpaca_gpt4_data_{split}.json; dataset.py:168-169, 186-187 prompt ``question + "\\n\\n" + input``
    where the input is non-empty. Without the file a seeded eval_fraction is held out as before."""
    root, alpaca = published["root"], published["alpaca"]
    splits = load_splits(LLMData(**elude_data(published)), 0)
    joined = [a["question"] + (f"\n\n{a['input']}" if a["input"] else "") for a in alpaca]
    assert questions(splits["world"]) == joined[:16]
    assert questions(splits["world_eval"]) == joined[16:]
    assert all(len(r.perturbed_answer) == 2 for r in splits["world_eval"])  # truth ratio, normalised prob
    held = load_splits(LLMData(**elude_data(published, world=str(root / "alpaca_test.json"), world_eval=None)), 0)
    assert len(held["world_eval"]) == round(0.2 * 8) and len(held["world"]) == 8 - round(0.2 * 8)


def test_instruction_rows_as_world_eval_have_no_truth_ratio(published, tmp_path):
    """Instruction rows (instruction / input / output) carry no perturbed answers: no truth ratio."""
    rows = [{"instruction": a["question"], "input": a["input"], "output": a["answer"]} for a in published["alpaca"]]
    path = tmp_path / "instructions.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    splits = load_splits(LLMData(**elude_data(published, world_eval=str(path))), 0)
    assert len(splits["world_eval"]) == 24 and all(r.perturbed_answer == () for r in splits["world_eval"])
    assert splits["world_eval"][1].question == rows[1]["instruction"] + "\n\nin context"


def test_world_eval_is_refused_where_it_has_no_meaning(tmp_path):
    raw = tiny_spec(tmp_path / "cache")
    raw["task"]["data"] = {"layout": "tofu", "records": "locuslab/TOFU", "world_eval": str(tmp_path / "w.json")}
    assert "world_eval: needs a world file and layout records or elude" in one_line_error(raw)


def test_published_shape_runs_end_to_end_with_the_authors_recipe(published, tmp_path):
    """prepare + unlearn + evaluate on the published shape with the authors' world test file: forget
    and holdout from forget_qa/train, retain from retain_qa, world prob normalised and world truth
    ratio over perturbed answers (evaluator.py:70-82), so rq has all six numbers; OPT-OUT stops after
    2 of its 3 scheduled epochs (evaluator.py:27-33)."""
    raw = tiny_spec(tmp_path / "cache")
    raw["task"]["data"] = elude_data(published, max_length=48)
    raw["task"]["model"]["epochs"] = 2
    raw["method"] = {"name": "optout", "epochs": 3}  # lr, batch 8, recipe: the authors' defaults
    exp = parse_experiment(raw)
    prepared = FAMILY.prepare(exp.job(), exp.context())
    steps: list[int] = []
    model = FAMILY.unlearn(
        exp.job(), prepared, exp.context(StepCallback(lambda s, m: steps.append(s)), tmp_path / "ck")
    )
    assert len(steps) == 2  # 8 forget items, batch 8: one step an epoch, 3 scheduled
    metrics = FAMILY.evaluate(exp.job(), prepared, model)
    six = [metrics[f"{s}_{m}"] for s in ("retain", "world") for m in ("prob", "rouge", "truth_ratio")]
    assert all(math.isfinite(v) for v in six) and math.isfinite(metrics["rq"])
    assert all(math.isfinite(metrics[k]) for k in ("forget_prob", "forget_truth_ratio", "mia_auc_loss"))


# ---------------------------------------------------------------- the recipe's defaults


@pytest.mark.parametrize(
    ("name", "terms", "epochs"),
    [
        ("optout", {}, 2.0),
        ("graddiff", {}, 2.0),
        ("npo_rt", {}, 2.0),
        ("idk", {}, 2.0),  # otu's IDK has retain and world terms: the authors' idk+rt+wd
        ("ga", {}, 1.0),
        ("npo", {}, 1.0),
        ("idk", {"retain_weight": 0.0, "world_weight": 0.0}, 1.0),
    ],
)
def test_elude_stops_composite_methods_after_two_epochs_and_single_term_ones_after_one(name, terms, epochs):
    """evaluator.py:27-33: training stops at the first epoch end for ga / dpo / npo / idk alone, else
    at epoch ≥ 1.9 (the end of epoch 2); run.py:129 schedules 3."""
    method = SPEC.methods[name].spec(name=name, **terms)
    assert method.epochs == 3
    assert recipe_for(method, "elude").stop_after_epochs == epochs
    assert recipe_for(method, "records").stop_after_epochs is None
    # 10 forget items, batch 8: 2 steps an epoch, 6 scheduled
    assert steps_run(method, 10, steps_for(method, 10), "elude") == 2 * epochs
    assert steps_run(method, 10, steps_for(method, 10), "records") == 6


def test_elude_defaults_are_the_authors_and_other_layouts_keep_otus():
    """trainer.py:28-29, 74-81 (HF's loss for every term), dataset.py:81-91 (paired subsets),
    trainer.py:59-63 (the forget step before the Trainer's clipping)."""
    method = OptOut(name="optout")
    elude = Recipe(2.0, "batch_mean", npo_reduction="batch_mean", retain_sampling="paired", clip_forget_step=False)
    assert recipe_for(method, "elude") == elude
    assert recipe_for(method, "records") == Recipe(None, "sequence_mean", "sequence_sum", "stream", True)
    # open-unlearning: HF's batch token mean (grad_diff.py:26-29), NPO on sequence sums (utils.py:34-44)
    assert recipe_for(method, "tofu") == Recipe(None, "batch_mean", "sequence_sum", "stream", True)
    chosen = OptOut(
        name="optout",
        stop_after_epochs=3,
        nll_reduction="sequence_mean",
        retain_sampling="stream",
        clip_forget_step=True,
    )
    assert recipe_for(chosen, "elude") == Recipe(3.0, "sequence_mean", "batch_mean", "stream", True)
    assert recipe_for(SPEC.methods["ga"].spec(name="ga"), "elude").retain_sampling == "stream"  # no retain terms


def test_shipped_elude_specs_carry_the_authors_recipe_and_the_lora_variant_its_own():
    """train.sh:14, 16-18, 26 (per-device batch 8, no accumulation, lr 1e-5, warm-up 0, alternating
    updates) in one process whose model device_map="auto" splits over the GPUs (model.py:26: the HF
    Trainer then steps on batches of 8); run.py:124-133 (linear schedule, weight decay 0.01, 3 epochs,
    λ = 0.1, β = 0.1); model.py:63 (projections drawn on every call); dataset.py:18-22 (splits)."""
    raw = yaml.safe_load((REPO / "sweeps/experiments/optout_elude.yaml").read_text())
    data, method = LLMData(**raw["task"]["data"]), OptOut(**raw["method"])
    assert data.layout == "elude" and data.world_eval is not None
    assert (data.elude_splits.forget_eval, data.elude_splits.retain_train, data.elude_splits.retain_eval) == (
        "train",
        "train",
        "test",
    )
    assert method.lora is None and method.alternate and method.resample_projections
    assert (method.lr, method.batch_size, method.epochs, method.weight_decay) == (1e-5, 8, 3, 0.01)
    assert (method.lr_schedule, method.beta, method.reg_weight, method.max_grad_norm) == ("linear", 0.1, 0.1, 1.0)
    assert recipe_for(method, data.layout) == Recipe(2.0, "batch_mean", "batch_mean", "paired", False)
    compute = raw["compute"]
    assert compute["workers"] * compute["grad_accum"] == 1  # HF's token mean over the authors' 8
    lora = yaml.safe_load((REPO / "sweeps/experiments/optout_elude_lora.yaml").read_text())
    variant = OptOut(**lora["method"])
    assert variant.lora is not None and LLMData(**lora["task"]["data"]) == data
    assert (variant.lr, variant.batch_size, variant.stop_after_epochs, variant.resample_projections) == (
        1e-4,
        32,
        3,
        False,
    )
    assert variant.batch_size // lora["compute"]["grad_accum"] == 8


# ---------------------------------------------------------------- retain / world sampling


def test_paired_sampling_cuts_the_authors_subsets_and_pairs_them_by_index():
    """dataset.py:83, 89: retain and world are ``shuffle(seed=args.seed).select(range(len(forget)))``;
    dataset.py:96-106: item idx is (forget[idx], retain[idx], world[idx]), so forget item i meets the
    same retain and world items in every epoch (here 3 epochs of 5 forget items, batches of 2)."""
    seed, sizes = 42, {"forget": 5, "retain": 12, "world": 9}
    want = {
        name: Dataset.from_dict({"i": list(range(sizes[name]))}).shuffle(seed=seed).select(range(5))["i"]
        for name in ("retain", "world")
    }
    sampler = StepSampler(sizes, "paired", seed)
    taken = [sampler.take(2) for _ in range(8)]
    forget = [i for t in taken for i in t["forget"]]
    assert [sorted(forget[e * 5 : e * 5 + 5]) for e in range(3)] == [list(range(5))] * 3  # epochs
    for name in ("retain", "world"):
        drawn = [i for t in taken for i in t[name]]
        assert drawn == [want[name][f] for f in forget]
        assert set(drawn) == set(want[name])  # a fixed subset of the forget set's size


def test_stream_sampling_draws_every_retain_item_apart_from_the_forget_order():
    sampler = StepSampler({"forget": 5, "retain": 12, "world": 9}, "stream", 7)
    taken = [sampler.take(4) for _ in range(6)]
    assert sorted(i for t in taken[:3] for i in t["retain"]) == list(range(12))  # one pass of 12
    assert [i for t in taken for i in t["retain"]] == Stream(12, 7 + 1).take(24)  # otu's streams, as before


def test_paired_sampling_needs_as_many_retain_items_as_forget_items():
    """dataset.py:83's ``select(range(len(forget)))`` cannot take more rows than the set has."""
    with pytest.raises(DataError, match=r"method.retain_sampling: 'paired' .* world set has 4 for 5 forget items"):
        StepSampler({"forget": 5, "retain": 12, "world": 4}, "paired", 0)


# ---------------------------------------------------------------- HF's token-mean NLL


class FixedLogits(nn.Module):
    """Next-token logits (0, ℓ_b) at every position of sequence b: the NLL of token 0 is log(1 + e^ℓ_b)."""

    def __init__(self, per_sequence: list[float]) -> None:
        super().__init__()
        logits = torch.zeros(len(per_sequence), 4, 2)
        logits[..., 1] = torch.tensor(per_sequence)[:, None]
        self.logits = nn.Parameter(logits)

    def forward(self, input_ids, attention_mask):
        return SimpleNamespace(logits=self.logits)


def two_answers() -> Batch:
    """Sequence A: one answer token; B: three. Every answer token is 0."""
    ids = torch.zeros(2, 4, dtype=torch.long)
    labels = torch.tensor([[IGNORE, IGNORE, IGNORE, 0], [IGNORE, 0, 0, 0]])
    return Batch(ids, torch.ones_like(ids), labels)


def test_batch_mean_nll_is_one_token_mean_over_the_micro_batch():
    """trainer.py:28-29, 74-78 take ``model(**inputs)[0]``, HF's causal-LM loss: the mean over every
    answer token of the micro-batch. A's token NLL log 4 (ℓ = log 3), B's three log 2 (ℓ = 0):
    (log 4 + 3 log 2) / 4 = 5/4 log 2, where the per-sequence mean gives (log 4 + log 2) / 2."""
    model, batch = FixedLogits([math.log(3), 0.0]), two_answers()
    elude = recipe_for(OptOut(name="optout"), "elude")
    ga = GAObjective(SPEC.methods["ga"].spec(name="ga"), elude)
    assert ga.forget_term(model, None, StepBatches(batch, batch, batch)).item() == pytest.approx(-5 / 4 * math.log(2))
    otu = GAObjective(SPEC.methods["ga"].spec(name="ga"))
    assert otu.forget_term(model, None, StepBatches(batch, batch, batch)).item() == pytest.approx(-1.5 * math.log(2))
    method = SPEC.methods["graddiff"].spec(name="graddiff", retain_weight=1.0, world_weight=0.5)
    retain = GradDiffObjective(method, elude).retain_term(model, StepBatches(batch, batch, batch))
    assert retain is not None and retain.item() == pytest.approx(1.5 * 5 / 4 * math.log(2))


def test_batch_mean_nll_equals_hf_causal_lm_loss():
    """The authors' loss is ``LlamaForCausalLM(..., labels=labels).loss`` (trainer.py:28-29): equal on
    a tiny Llama, padded answers of different lengths."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2
    )
    model = LlamaForCausalLM(config).eval()
    ids = torch.randint(1, 40, (3, 7))
    mask = torch.tensor([[1] * 7, [1] * 5 + [0] * 2, [1] * 6 + [0]])
    labels = ids.clone()
    labels[0, :3], labels[1, :4], labels[1, 5:], labels[2, :2], labels[2, 6:] = IGNORE, IGNORE, IGNORE, IGNORE, IGNORE
    with torch.no_grad():
        hf = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        ours = reduced_nll(model, Batch(ids, mask, labels), "batch_mean")
    assert ours.item() == pytest.approx(hf.item(), rel=1e-6)


# ---------------------------------------------------------------- the forget step's clipping


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> tuple[Path, Encoder]:
    """A saved tiny Llama and an encoder of its tokenizer."""
    path = tmp_path_factory.mktemp("clip-model")
    tok = train_tokenizer(["Question: who is Ada?\nAnswer: Ada is a poet.", "Where is Bo? Bo is home."] * 4, 300)
    model = build_tiny_model(TinyModel(layers=1, hidden=32, heads=2, intermediate=64, vocab=300), tok, 32, 0)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path, Encoder(tok, "Question: {question}\nAnswer: ", 32)


def step_batches(encoder: Encoder) -> list[StepBatches]:
    forget = encoder.batch(["who is Ada?", "where is Bo?"], ["Ada is a poet.", "Bo is home."])
    retain = encoder.batch(["who is Bo?"], ["Bo is a poet."])
    return [StepBatches(forget, retain, retain)]


def gradient_norms_at_each_step(engine, inner, layout: str, encoder: Encoder, method: OptOut) -> list[float]:
    """OPT-OUT's two alternating phases through the loop's ``_phase``; the norm of the gradients the
    optimizer ``inner`` steps on, each time."""
    norms: list[float] = []
    step = inner.step

    def recording(*args, **kwargs):
        grads = [p.grad for group in inner.param_groups for p in group["params"] if p.grad is not None]
        norms.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))))
        return step(*args, **kwargs)

    inner.step = recording
    objective = objective_for(method, recipe_for(method, layout))
    micro = step_batches(encoder)
    for phase in objective.phases():
        _phase(engine, objective, micro, phase, None, 0)
    return norms


CLIP = 1e-3
SPIED = pytest.mark.filterwarnings("ignore:Seems like `optimizer.step\\(\\)` has been overridden")
"""The tests wrap ``optimizer.step`` to read the gradients it steps on; torch's scheduler notices."""


def clipping_spec(tmp_path: Path, **compute) -> tuple:
    raw = tiny_spec(tmp_path / "cache", max_grad_norm=CLIP, beta=0.1)
    raw["compute"] = compute
    exp = parse_experiment(raw, check_files=False)
    return exp, exp.method


@SPIED
@pytest.mark.parametrize(("layout", "forget_clipped"), [("elude", False), ("records", True)])
def test_forget_step_is_unclipped_on_elude_and_the_second_step_clipped(
    tiny_checkpoint, tmp_path, layout, forget_clipped
):
    """trainer.py:59-63: with alternate_updates the forget loss is back-propagated and
    ``optimizer.step()`` taken inside compute_loss, before the Trainer clips (to TrainingArguments'
    default max_grad_norm 1.0: run.py:41-67 passes none) the retain + world + OT loss it returns;
    otu's default clips both."""
    path, encoder = tiny_checkpoint
    exp, method = clipping_spec(tmp_path)
    engine = PlainEngine(
        EngineSettings(exp.job(), exp.compute, path, torch.device("cpu"), needs_ref=True, total_steps=2)
    )
    norms = gradient_norms_at_each_step(engine, engine.optimizer, layout, encoder, method)
    assert norms[1] == pytest.approx(CLIP, rel=1e-4)  # retain + world step: clipped
    if forget_clipped:
        assert norms[0] == pytest.approx(CLIP, rel=1e-4)
    else:
        assert norms[0] > 100 * CLIP  # the NPO gradient as back-propagated


@SPIED
@pytest.mark.parametrize("compute", [{"zero_stage": 2}, {"zero_stage": 3, "offload": "optimizer"}])
def test_deepspeed_forget_step_is_unclipped_on_elude(tiny_checkpoint, tmp_path, compute):
    """As above, under DeepSpeed (its ZeRO optimizer clips; ZeRO-3 with the optimizer offloaded, as
    optout_elude.yaml runs): the inner optimizer steps on the raw forget gradient, then on the
    clipped second one, and clipping is back on after the forget step."""
    path, encoder = tiny_checkpoint
    exp, method = clipping_spec(tmp_path, **compute)
    ensure_process_group("gloo")
    engine = DeepSpeedEngine(
        EngineSettings(exp.job(), exp.compute, path, torch.device("cpu"), needs_ref=True, total_steps=2)
    )
    try:
        norms = gradient_norms_at_each_step(engine, engine.model.optimizer.optimizer, "elude", encoder, method)
    finally:
        engine.close()
    assert norms[0] > 100 * CLIP and norms[1] == pytest.approx(CLIP, rel=1e-3)
    assert engine.model.optimizer.clip_grad == CLIP
