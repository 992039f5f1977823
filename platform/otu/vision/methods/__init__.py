"""Unlearning methods of the vision family: one module each, ``run(job, prepared, ctx) -> model``,
listed in :data:`otu.vision.spec.METHODS`."""
