"""Generator class unlearning: UOT-Unlearn and baselines for one-step generators (plain PyTorch).

* :mod:`otu.generative.spec` — spec sections, the method table ``METHODS`` and ``SPEC``;
  :mod:`otu.generative.checks` — the environment checks.
* :mod:`otu.generative.models` — the MLP generator, its checkpoint format, the potential network.
* :mod:`otu.generative.pretrain` — Sinkhorn-divergence training of the original generator.
* :mod:`otu.generative.prepare` — data, original generator and classifiers, cached by content hash.
* :mod:`otu.generative.uot` — the UOT semi-dual: f-divergence conjugates and the two losses.
* :mod:`otu.generative.methods` — ``uot_unlearn``, ``forget_cost`` (naive), ``finetune``.
* :mod:`otu.generative.metrics` — PUL, u-FID, forget share, class histogram.
* :mod:`otu.generative.plots` — sample grids and the class histogram.
* :mod:`otu.generative.family` — ``FAMILY``, the :class:`otu.family.Family` the platform calls.
"""
