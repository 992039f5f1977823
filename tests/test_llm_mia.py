"""The LLM family's reference-model and gradient-norm membership attacks (open-unlearning's
``mia_reference`` and ``mia_gradnorm``), beside LOSS / zlib / Min-K% / Min-K%++."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from otu.llm.evaluation import ModelStats, reference_scores
from otu.llm.family import FAMILY
from otu.llm.gradnorm import grad_norms
from otu.llm.metrics import mia_auc


def stats_with_losses(forget: list[float], holdout: list[float]) -> ModelStats:
    mia = {"forget": {"loss": -np.array(forget)}, "holdout": {"loss": -np.array(holdout)}}
    return ModelStats({}, {}, {}, {}, {}, mia, {})


def test_reference_attack_scores_the_loss_drop_against_the_reference():
    """open-unlearning src/evals/metrics/mia/reference.py:23-25: score = target_loss − ref_loss (higher:
    non-member; labels forget 0 / holdout 1, mia/utils.py:58-61); otu negates it (higher: member)."""
    target = stats_with_losses(forget=[0.1, 0.2, 2.0], holdout=[1.0, 1.5])
    reference = stats_with_losses(forget=[1.0, 1.2, 2.1], holdout=[1.1, 1.4])
    np.testing.assert_allclose(reference_scores(target, reference, "forget"), [0.9, 1.0, 0.1])
    np.testing.assert_allclose(reference_scores(target, reference, "holdout"), [0.1, -0.1])
    # open-unlearning's AUC on its own scores and labels, by hand: pairs (holdout > forget) of 6
    ou_forget, ou_holdout = [-0.9, -1.0, -0.1], [-0.1, 0.1]
    by_hand = np.mean([(h > f) + 0.5 * (h == f) for h in ou_holdout for f in ou_forget])
    got = mia_auc(reference_scores(target, reference, "forget"), reference_scores(target, reference, "holdout"))
    assert got == pytest.approx(by_hand) == pytest.approx(5.5 / 6)


def test_gradnorm_is_the_mean_parameter_gradient_norm_and_leaves_the_model(prepared):
    exp, prepared = prepared
    model = prepared.model("original")
    record = prepared.splits["forget_eval"][0]
    flags, before = [p.requires_grad for p in model.parameters()], [p.detach().clone() for p in model.parameters()]
    (got,) = grad_norms(model, prepared.encoder(), [record.question], [record.answer])
    # by hand: the answer tokens' log-probs without the last (open-unlearning utils.py:129-131), mean,
    # backward, then the mean over parameter tensors of each gradient's 2-norm (gradnorm.py:19-33)
    batch = prepared.encoder().batch([record.question], [record.answer])
    model.train()
    model.zero_grad()
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits.float()
    answer = (batch.labels[0] != -100).nonzero().squeeze(1)[:-1]
    logp = torch.log_softmax(logits[0, answer - 1], -1).gather(-1, batch.input_ids[0, answer].unsqueeze(-1))
    (-logp.mean()).backward()
    want = torch.stack([p.grad.norm(2) for p in model.parameters() if p.grad is not None]).mean().item()
    model.zero_grad(set_to_none=True)
    model.eval()
    assert got == pytest.approx(want, rel=1e-4)
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), before, strict=True))


def test_reference_and_gradnorm_aucs_tell_the_original_from_the_oracle(prepared):
    exp, prepared = prepared
    job = replace(exp.job(), eval=exp.job().eval.model_copy(update={"mia_gradnorm": True}))
    on = {name: FAMILY.evaluate(job, prepared, prepared.model(name)) for name in ("original", "retrained")}
    assert on["retrained"]["mia_auc_reference"] == 0.5  # its own reference: every score 0
    assert on["original"]["mia_auc_reference"] > 0.7
    assert on["original"]["mia_auc_gradnorm"] > on["retrained"]["mia_auc_gradnorm"]
    off = FAMILY.evaluate(exp.job(), prepared, prepared.model("original"))
    assert math.isnan(off["mia_auc_gradnorm"]) and off["mia_auc_reference"] == on["original"]["mia_auc_reference"]
