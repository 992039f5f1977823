"""LLM family on real-checkpoint terms: a tiny Llama whose tokenizer carries a chat template, saved
with ``save_pretrained`` and loaded through ``task.model.path``; ``otu eval``; LoRA (regulariser value
and gradients against the full-weight closed form, and a LoRA OPT-OUT run that forgets); and the
one-line errors of bad input. ELUDe- and TOFU-layout data: test_elude_protocol.py, test_tofu_protocol.py.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from test_llm import REPO, tiny_spec

from otu.cli import main
from otu.errors import OtuError
from otu.llm.family import FAMILY
from otu.llm.lora import Adapted, LoraRegulariser, lowrank_sw, targeted
from otu.llm.lora import layout as module_layout
from otu.llm.models import CHAT_TEMPLATE, build_tiny_model, tiny_layout, train_tokenizer
from otu.llm.spec import LLMData, TinyModel
from otu.llm.text import IGNORE, Encoder
from otu.ot import random_projections, sw_regulariser
from otu.process_group import init_rank, rendezvous_file
from otu.spec import parse_experiment

TINY = {"layers": 2, "hidden": 64, "heads": 4, "intermediate": 128, "vocab": 400}


CPU_SPEC = REPO / "sweeps/experiments/optout_elude_tiny.yaml"


def chat_spec(cache: Path) -> dict:
    """The shipped CPU spec (tiny chat-template Llama, LoRA OPT-OUT) with its cache in ``cache``."""
    raw = yaml.safe_load(CPU_SPEC.read_text())
    raw["tracking"] = {"cache_dir": str(cache)}
    return raw


@pytest.fixture(scope="module")
def chat_prepared(tmp_path_factory):
    """The tiny chat-template target and retain-only models (fine-tuned once for the module)."""
    cache = tmp_path_factory.getbasetemp() / "llm-chat-cache"
    exp = parse_experiment(chat_spec(cache))
    assert exp.task.model.tiny.chat_template and exp.method.lora is not None
    return exp, FAMILY.prepare(exp.job(), exp.context())


def small_tokenizer(chat: bool = True):
    texts = ["Question: who is Ada?\nAnswer: Ada is a poet.", "Who wrote the probe?"] * 4
    return train_tokenizer(texts, 300, chat=chat)


def save_model(path: Path, tokenizer) -> Path:
    model = build_tiny_model(TinyModel(**{**TINY, "vocab": 300}), tokenizer, 48, seed=0)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def path_spec(tmp_path: Path, model_path: str, **model) -> dict:
    raw = tiny_spec(tmp_path / "cache")
    raw["task"]["model"] = {"path": model_path, "epochs": 0, **model}
    return raw


def one_line_error(raw: dict) -> str:
    with pytest.raises(OtuError) as info:
        parse_experiment(raw)
    message = str(info.value)
    assert "\n" not in message
    return message


# ---------------------------------------------------------------- prompts


def test_chat_template_prompts_put_labels_on_the_assistant_turn_only():
    tok = small_tokenizer()
    enc = Encoder(tok, "unused {question}", 64)
    assert enc.chat
    ids, labels = enc.pair("who is Ada?", "Ada is a poet.")
    prompt = tok.decode(ids[: labels.count(IGNORE)])
    answer = [t for t in labels if t != IGNORE]
    assert prompt.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert "<|start_header_id|>user<|end_header_id|>\n\nwho is Ada?<|eot_id|>" in prompt
    assert tok.decode(answer) == "Ada is a poet.<|eot_id|>"  # no inserted space, turn end labelled
    assert answer[-1] == tok.eos_token_id
    gen_ids, _ = enc.prompts(["who is Ada?"])
    assert gen_ids[0].tolist() == ids[: labels.count(IGNORE)]


def test_plain_template_inserts_no_space():
    tok = small_tokenizer(chat=False)
    enc = Encoder(tok, "Question: {question}\nAnswer:", 64)
    assert not enc.chat
    ids, labels = enc.pair("who is Ada?", "Ada is a poet.")
    assert tok.decode([t for t in labels if t != IGNORE]) == "Ada is a poet.</s>"


def test_saved_chat_checkpoint_loads_through_model_path(tmp_path):
    path = save_model(tmp_path / "chat", small_tokenizer())
    exp = parse_experiment(path_spec(tmp_path, str(path), attn_implementation="eager", dtype="float32"))
    prep = FAMILY.prepare(exp.job(), exp.context())
    assert prep.target_path == path.resolve() and prep.encoder().chat
    model = prep.model("original")
    assert model.config._attn_implementation == "eager"
    reference = build_tiny_model(TinyModel(**{**TINY, "vocab": 300}), small_tokenizer(), 48, seed=0)
    for (name, p), (_, q) in zip(model.named_parameters(), reference.named_parameters(), strict=True):
        torch.testing.assert_close(p, q, msg=name)


def test_chat_template_that_drops_the_answer_is_named(tmp_path):
    tok = small_tokenizer()
    tok.chat_template = CHAT_TEMPLATE.replace("{{ message['content'] | trim }}", "")
    path = save_model(tmp_path / "broken", tok)
    message = one_line_error(path_spec(tmp_path, str(path)))
    assert message.startswith("task.model.path: the chat template drops the")
    raw = path_spec(tmp_path, str(path))
    raw["task"]["data"]["prompt_format"] = "plain"  # the way out the message names
    parse_experiment(raw)


def test_hub_id_without_network_is_one_line_naming_the_key(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    message = one_line_error(path_spec(tmp_path, "otu-test-org/no-such-model", revision="v1"))
    assert message.startswith("task.model.path: 'otu-test-org/no-such-model' is not a local")
    assert "revision v1" in message


# ---------------------------------------------------------------- LoRA


@pytest.mark.parametrize("n, d, r", [(12, 7, 3), (5, 20, 4)])
def test_lowrank_sw_equals_the_full_weight_closed_form_on_w0_plus_ba(n, d, r):
    g = torch.Generator().manual_seed(n)
    w0, a, b = (torch.randn(*s, generator=g, dtype=torch.float64) for s in ((n, d), (r, d), (n, r)))
    scale = 2.5
    u = random_projections(d, 30, seed=1, dtype=torch.float64)
    w0u = w0 @ u
    value, grad_a, grad_b = lowrank_sw(a, b, scale, w0u, torch.sort(w0u, dim=0).values, u)
    full_value, grad_w = sw_regulariser(w0 + scale * b @ a, w0, u)
    assert value.item() == pytest.approx(full_value.item(), rel=1e-12)
    torch.testing.assert_close(grad_a, scale * b.T @ grad_w)
    torch.testing.assert_close(grad_b, scale * grad_w @ a.T)
    # and the closed form is the autograd gradient of SW(W₀ + sBA) w.r.t. A and B
    a_, b_ = a.clone().requires_grad_(), b.clone().requires_grad_()
    from otu.ot import sw_regulariser_autograd

    sw_regulariser_autograd(w0 + scale * b_ @ a_, w0, u).backward()
    torch.testing.assert_close(grad_a, a_.grad)
    torch.testing.assert_close(grad_b, b_.grad)


@pytest.mark.parametrize("kind", ["wasserstein", "euclidean"])
def test_lora_regulariser_adds_lambda_times_the_gradient_to_the_adapters(kind):
    g = torch.Generator().manual_seed(0)
    layer = Adapted(
        base=torch.nn.Parameter(torch.randn(6, 5, generator=g), requires_grad=False),
        a=torch.nn.Parameter(torch.randn(2, 5, generator=g)),
        b=torch.nn.Parameter(torch.randn(6, 2, generator=g)),
        scale=0.5,
    )
    reg = LoraRegulariser(
        kind=kind,
        weight=0.3,
        layers=[layer],
        gather=lambda params: __import__("contextlib").nullcontext(),
        add_grad=lambda p, grad: setattr(p, "grad", grad if p.grad is None else p.grad + grad),
        n_projections=16,
        resample=False,
    )
    value = reg.apply(step=0)
    a_, b_ = layer.a.detach().clone().requires_grad_(), layer.b.detach().clone().requires_grad_()
    w = layer.base + 0.5 * b_ @ a_
    if kind == "wasserstein":
        from otu.llm.regulariser import projection_seed
        from otu.ot import sw_regulariser_autograd

        u = random_projections(5, 16, projection_seed(0, 0, 0), dtype=torch.float32)
        expected = sw_regulariser_autograd(w, layer.base, u)
    else:
        expected = torch.linalg.vector_norm(w - layer.base)
    (0.3 * expected).backward()
    assert value == pytest.approx(expected.item(), rel=1e-5)
    torch.testing.assert_close(layer.a.grad, a_.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(layer.b.grad, b_.grad, rtol=1e-4, atol=1e-6)


def test_lora_target_modules_matching_nothing_is_one_line(tmp_path):
    raw = tiny_spec(tmp_path / "cache", lora={"r": 4, "target_modules": ["qkv_proj"]})
    message = one_line_error(raw)
    assert message.startswith("method.lora.target_modules: ['qkv_proj'] matches no linear layer")
    assert "q_proj" in message


@pytest.mark.parametrize("layers", [1, 3])
def test_tiny_layout_is_the_built_models_tree(layers):
    """``otu validate`` checks LoRA targets of a tiny model against :func:`tiny_layout` (no
    transformers import); it must be the tree :func:`build_tiny_model` builds."""
    tiny = TinyModel(**{**TINY, "layers": layers, "vocab": 300})
    with torch.device("meta"):
        built = build_tiny_model(tiny, small_tokenizer(), 48, seed=0)
    assert tiny_layout(tiny) == module_layout(built)


@pytest.mark.parametrize(
    "targets", [["q_proj", "v_proj"], ["self_attn.o_proj"], ["mlp"], ["model.layers.0.mlp.up_proj"], r".*\.1\..*_proj"]
)
def test_targeted_is_peft_rule(targets):
    from peft import LoraConfig
    from peft.tuners.tuners_utils import check_target_module_exists

    config = LoraConfig(target_modules=targets)
    for name, _ in tiny_layout(TinyModel(**TINY)):
        assert targeted(name, targets) == bool(check_target_module_exists(config, name)), name


def test_lora_targets_on_non_linear_modules_or_all_linear(tmp_path):
    message = one_line_error(tiny_spec(tmp_path / "cache", lora={"r": 4, "target_modules": ["input_layernorm"]}))
    assert message.startswith("method.lora.target_modules: ['input_layernorm'] matches no linear layer")
    message = one_line_error(tiny_spec(tmp_path / "cache", lora={"r": 4, "target_modules": ["mlp", "q_proj"]}))
    assert message.startswith("method.lora.target_modules: matches non-linear modules ['model.layers.0.mlp'")
    assert parse_experiment(tiny_spec(tmp_path / "cache", lora={"r": 4, "target_modules": "all-linear"}))


def test_validate_of_a_tiny_lora_spec_skips_transformers(tmp_path):
    """The LoRA target check of a tiny model needs no model build: ``otu validate`` of the shipped
    LoRA spec stays as fast as the others (it took 10 s, 6.5 s of it transformers' modeling code)."""
    script = (
        "import sys\n"
        "from otu.cli import main\n"
        f"assert main(['validate', {str(CPU_SPEC)!r}]) == 0\n"
        "print(sorted(m for m in ('transformers', 'peft') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, check=True)
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_shipped_gpu_specs_parse():
    from otu.llm.spec import SPEC, LLMModel

    for name, layout in [("optout_elude_lora", "elude"), ("optout_tofu", "tofu")]:
        raw = yaml.safe_load((REPO / f"sweeps/experiments/{name}.yaml").read_text())
        data = LLMData(**raw["task"]["data"])
        model = LLMModel(**raw["task"]["model"])
        method = SPEC.methods["optout"].spec(**raw["method"])
        assert data.layout == layout and method.lora is not None and model.epochs >= 0
        assert raw["compute"]["workers"] == 1 and raw["compute"]["device"] == "cuda"
    sweep = yaml.safe_load((REPO / "sweeps/optout_elude.yaml").read_text())
    assert sweep["experiment"] == "experiments/optout_elude.yaml"


# ---------------------------------------------------------------- end to end


def cli(*args: str) -> int:
    return main([*args])


@pytest.mark.slow  # fine-tunes the tiny chat models, then otu run + otu eval: ~90 s
def test_lora_optout_run_forgets_and_otu_eval_reproduces_the_original_row(chat_prepared, tmp_path):
    """``otu run`` of LoRA OPT-OUT on the saved chat model (``task.model.path``), then ``otu eval``
    of the same checkpoint: its metrics are the run's ``original`` row."""
    _, prep = chat_prepared
    raw = chat_spec(tmp_path / "cache")
    raw["task"]["model"] = {
        "path": str(prep.target_path),
        "retain_path": str(prep.oracle_path),
        "epochs": 0,
    }
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(raw))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert (
        cli(
            "run",
            str(spec),
            "--out",
            str(tmp_path / "run"),
            "--tracking-uri",
            uri,
            "--set",
            "method.lora.save_merged=true",
        )
        == 0
    )
    run = json.loads((tmp_path / "run" / "metrics.json").read_text())
    original, unlearned = run["original"], run["unlearned"]
    assert unlearned["forget_rouge"] <= original["forget_rouge"] - 0.4
    assert unlearned["retain_rouge"] >= original["retain_rouge"] - 0.1  # held-out retain items
    checkpoint = tmp_path / "run" / "checkpoint"
    assert (checkpoint / "adapter_config.json").is_file()  # the adapter, not a second model
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(checkpoint / "merged")
    assert (checkpoint / "merged" / "generation_config.json").is_file()
    assert merged.config.dtype == torch.float32  # the precision trained in
    exp = parse_experiment(raw)
    unlearned_model = FAMILY.load_unlearned(exp.job(), FAMILY.prepare(exp.job(), exp.context()), checkpoint)
    for (name, p), (_, q) in zip(merged.named_parameters(), unlearned_model.named_parameters(), strict=True):
        torch.testing.assert_close(p, q, msg=name)

    assert (
        cli(
            "eval",
            str(spec),
            "--model",
            f"original={prep.target_path}",
            "--model",
            f"unlearned={checkpoint}",
            "--out",
            str(tmp_path / "eval"),
            "--tracking-uri",
            uri,
        )
        == 0
    )
    both = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    evaluated = both["original"]
    assert set(evaluated) == set(original)
    for key, value in original.items():
        assert evaluated[key] == pytest.approx(value, abs=1e-6, nan_ok=True), key
    for key, value in unlearned.items():  # the adapter directory, merged into the target
        assert both["unlearned"][key] == pytest.approx(value, abs=1e-6, nan_ok=True), key

    rows = [json.loads(line) for line in (tmp_path / "eval" / "generations.jsonl").read_text().splitlines()]
    assert {r["split"] for r in rows} == {"forget", "retain", "world"}
    forget_rows = [r for r in rows if r["split"] == "forget" and r["model"] == "original"]
    assert math.isclose(sum(r["rouge"] for r in forget_rows) / len(forget_rows), evaluated["forget_rouge"])
    assert {"question", "reference", "generation", "prob", "rouge", "truth_ratio"} <= set(rows[0])
    run_rows = (tmp_path / "run" / "generations.jsonl").read_text().splitlines()
    assert {json.loads(line)["model"] for line in run_rows} == {"original", "retrained", "unlearned"}

    from mlflow import MlflowClient

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("otu").experiment_id])
    by_kind = {r.data.tags["otu.kind"]: r for r in runs}
    assert by_kind["run"].data.tags["otu.checkpoint"] == str(checkpoint.resolve())
    for kind in ("run", "eval"):
        logged = {a.path for a in client.list_artifacts(by_kind[kind].info.run_id)}
        assert {"metrics.json", "generations.jsonl"} <= logged
    assert by_kind["eval"].data.metrics["original/forget_rouge"] == pytest.approx(original["forget_rouge"])


def lora_zero3_worker(rank: int, world: int, rendezvous: str, model_dir: str, cache: str, out: str) -> None:
    """One ZeRO-3 rank: set the adapters (A, B) to fixed values, apply the LoRA regulariser, save
    the full gradients of the adapters (and their values) from rank 0."""
    import os

    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world), "DS_ACCELERATOR": "cpu"})
    torch.set_num_threads(1)
    init_rank("gloo", rendezvous, rank, world)
    import deepspeed
    from deepspeed.utils import safe_get_full_grad

    from otu.llm.engine import DeepSpeedEngine, EngineSettings
    from otu.llm.lora import adapted_layers
    from otu.llm.objectives.optout import OptOutObjective

    raw = tiny_spec(Path(cache), reg_weight=0.5, lora={"r": 3, "alpha": 6, "dropout": 0.0})
    raw["compute"] = {"workers": world, "zero_stage": 3, "zero3": ZERO3_ALL}
    exp = parse_experiment(raw)
    engine = DeepSpeedEngine(
        EngineSettings(exp.job(), exp.compute, Path(model_dir), torch.device("cpu"), needs_ref=True, total_steps=1)
    )
    layers = adapted_layers(engine.model.module)
    adapters = [p for layer in layers for p in (layer.a, layer.b)]
    assert all(hasattr(p, "ds_id") and p.numel() == 0 for p in adapters)  # partitioned
    with deepspeed.zero.GatheredParameters(adapters, modifier_rank=0):
        if rank == 0:
            for i, p in enumerate(adapters):
                p.data.copy_(0.3 * torch.randn(p.shape, generator=torch.Generator().manual_seed(i)))
    ids = torch.arange(12).reshape(2, 6)
    engine.backward(0.0 * engine.model(input_ids=ids, labels=ids).loss)
    value = OptOutObjective(exp.method).regulariser(engine, exp.seed).apply(step=0)
    grads = [safe_get_full_grad(p).clone() for p in adapters]
    with deepspeed.zero.GatheredParameters(adapters):
        values = [p.data.clone() for p in adapters]
    if rank == 0:
        scales = [layer.scale for layer in layers]
        torch.save({"value": value, "grads": grads, "values": values, "scales": scales}, Path(out) / "lora.pt")
    torch.distributed.destroy_process_group()


ZERO3_ALL = {"param_persistence_threshold": 0, "max_live_parameters": 100_000, "prefetch_bucket_size": 100_000}


@pytest.mark.slow  # two DeepSpeed processes: minutes on a loaded 2-core machine
def test_lora_regulariser_under_zero3_two_workers_equals_the_full_weight_closed_form(tmp_path):

    import torch.multiprocessing as mp
    from transformers import LlamaConfig, LlamaForCausalLM

    from otu.llm.regulariser import projection_seed

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=50,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=32,
    )
    LlamaForCausalLM(config).save_pretrained(tmp_path / "theta0")
    mp.start_processes(
        lora_zero3_worker,
        args=(2, rendezvous_file(tmp_path), str(tmp_path / "theta0"), str(tmp_path / "cache"), str(tmp_path)),
        nprocs=2,
        start_method="spawn",
    )
    got = torch.load(tmp_path / "lora.pt")
    theta0 = LlamaForCausalLM.from_pretrained(tmp_path / "theta0")
    targets = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    bases = [m.weight.detach() for n, m in theta0.named_modules() if n.endswith(targets)]
    assert len(bases) == len(got["scales"]) == 14
    total = 0.0
    for i, (w0, scale) in enumerate(zip(bases, got["scales"], strict=True)):
        a, b = got["values"][2 * i], got["values"][2 * i + 1]
        u = random_projections(w0.shape[1], 100, projection_seed(0, 0, i))
        value, grad_w = sw_regulariser(w0 + scale * b @ a, w0, u)  # full weight W₀ + sBA
        total += value.item()
        torch.testing.assert_close(got["grads"][2 * i], 0.5 * scale * b.T @ grad_w, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(got["grads"][2 * i + 1], 0.5 * scale * grad_w @ a.T, rtol=1e-4, atol=1e-6)
    assert total > 0 and got["value"] == pytest.approx(total, rel=1e-5)


# ---------------------------------------------------------------- lm-evaluation-harness


@pytest.mark.slow  # importing lm-eval alone takes tens of seconds
def test_lm_eval_custom_task_over_a_local_file_matches_hand_computed_accuracy(tmp_path):
    pytest.importorskip("lm_eval")
    rows = [
        {"question": f"who is Ada {i}?", "choices": ["Ada is a poet.", "a", "Who wrote"], "label": i % 3}
        for i in range(6)
    ]
    (tmp_path / "qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "otu_local.yaml").write_text(
        yaml.safe_dump(
            {
                "task": "otu_local",
                "dataset_path": "json",
                "dataset_kwargs": {"data_files": {"test": str(tmp_path / "qa.jsonl")}},
                "test_split": "test",
                "output_type": "multiple_choice",
                "doc_to_text": "Question: {{question}}\nAnswer:",
                "doc_to_choice": "{{choices}}",
                "doc_to_target": "label",
                "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
            }
        )
    )
    tok = small_tokenizer(chat=False)
    path = save_model(tmp_path / "plain", tok)
    raw = path_spec(tmp_path, str(path))
    raw["eval"]["lm_eval"] = {"tasks": ["otu_local"], "include_path": str(tmp_path / "tasks")}
    exp = parse_experiment(raw)
    prep = FAMILY.prepare(exp.job(), exp.context())
    model = prep.model("original")
    metrics = FAMILY.evaluate(exp.job(), prep, model)

    def loglik(context: str, continuation: str) -> float:  # lm-eval's split of context + continuation
        whole = tok(context + continuation, add_special_tokens=False)["input_ids"]
        ctx = tok(context, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([whole])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
        return sum(logp[i - 1, whole[i]].item() for i in range(len(ctx), len(whole)))

    hits = [
        max(range(3), key=lambda k, r=r: loglik(f"Question: {r['question']}\nAnswer:", " " + r["choices"][k]))
        == r["label"]
        for r in rows
    ]
    assert metrics["lm_eval/otu_local/acc"] == pytest.approx(sum(hits) / len(hits))
    raw["eval"]["lm_eval"]["include_path"] = str(tmp_path / "nowhere")
    assert one_line_error(raw).startswith("eval.lm_eval.include_path: not a directory")
