"""Entity unlearning for causal LMs: OPT-OUT (NPO + retain + sliced-Wasserstein to θ₀) and baselines.

Modules: ``spec`` (spec sections), ``checks`` (up-front data/model checks), ``data`` (ELUDe records
and splits), ``synthetic`` (fictitious entities), ``text`` (tokenised batches), ``models`` (HF
loading, tiny Llamas, fine-tuning), ``losses`` (method objectives), ``regulariser`` (OPT-OUT's
parameter regulariser), ``engine`` (plain / DeepSpeed engines), ``loop`` (the per-rank loop),
``metrics`` / ``evaluation`` (TOFU/MUSE metrics), ``family`` (entry points), ``launch`` (DeepSpeed /
torchrun entry point).
"""
