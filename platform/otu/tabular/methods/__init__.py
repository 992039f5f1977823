"""Unlearning methods of the tabular family: one module each, ``run(job, prepared, ctx) -> model``,
listed in :data:`otu.tabular.spec.METHODS`. A :class:`~otu.tabular.spec.FeatureMethod` receives a
:class:`~otu.tabular.tables.FeatureTask`, a :class:`~otu.tabular.spec.PointMethod` a
:class:`~otu.tabular.networks.DigitsTask`."""
