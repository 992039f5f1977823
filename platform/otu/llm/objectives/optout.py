"""OPT-OUT (Choi et al. 2024): NPO + retain + world NLL + λ·Σ_tensors D(θ, θ₀), by default in two
optimizer steps per loop step (forget, then retain + world + regulariser); the recipe's
``clip_forget_step`` says whether the forget step is clipped."""

from __future__ import annotations

from otu.llm.engine import Engine
from otu.llm.lora import LoraRegulariser, adapted_layers
from otu.llm.losses import npo_forget
from otu.llm.objectives import Phase, RetainingObjective
from otu.llm.regulariser import ParameterRegulariser, Regulariser
from otu.llm.spec import OptOut


class OptOutObjective(RetainingObjective[OptOut]):
    needs_reference = True

    def forget_term(self, model, ref, b):
        return npo_forget(model, ref, b.forget, self.method.beta, self.method.reduction or self.recipe.npo_reduction)

    def regulariser(self, engine: Engine, seed: int) -> Regulariser:
        """With LoRA: D(W₀ + sBA, W₀) on the adapted layers (θ₀ = the base weights); otherwise over
        the trainable tensors, θ₀ their fp32 master value now."""
        m = self.method
        if m.lora is not None:
            return LoraRegulariser(
                kind=m.regulariser,
                weight=m.reg_weight,
                layers=adapted_layers(engine.module),
                gather=engine.gather,
                add_grad=engine.add_grad,
                n_projections=m.n_projections,
                resample=m.resample_projections,
                seed=seed,
            )
        return ParameterRegulariser(
            kind=m.regulariser,
            weight=m.reg_weight,
            params=[p for p in engine.module.parameters() if p.requires_grad],
            shards=engine.shards,
            n_projections=m.n_projections,
            resample=m.resample_projections,
            seed=seed,
            bucket_numel=m.reg_bucket_numel,
        )

    def phases(self) -> tuple[Phase, ...]:
        if self.method.alternate:
            return Phase(retain=False, regularise=False, clip=self.recipe.clip_forget_step), Phase(forget=False)
        return (Phase(),)
