"""Entity unlearning for causal LMs: OPT-OUT (NPO + retain + sliced-Wasserstein to θ₀) and baselines.

Modules: ``spec`` (spec sections and the method table), ``objectives`` (one module per method: its
loss and the hooks the loop calls), ``checks`` (environment checks), ``data`` (ELUDe / TOFU records
and splits), ``synthetic`` (fictitious entities), ``commands`` (``otu data entities``), ``text``
(tokenised batches), ``models`` (HF loading, tiny Llamas, fine-tuning), ``prepared`` (cached splits
and reference models), ``losses`` (answer NLL, NPO), ``regulariser`` (OPT-OUT's parameter
regulariser), ``lora`` (adapters), ``engine`` (plain / DeepSpeed engines), ``loop`` (the per-rank
loop), ``metrics`` / ``evaluation`` (TOFU/MUSE metrics), ``family`` (``FAMILY``).
"""
