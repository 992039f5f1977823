"""Unlearning methods of the generative family: one module each, ``run(job, prepared, ctx) ->
generator``, listed in :data:`otu.generative.spec.METHODS`."""
