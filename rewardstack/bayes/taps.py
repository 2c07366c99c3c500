"""Which weights carry the posterior, and a recorder of their layers' inputs and output gradients.

Every posterior weight belongs to a linear layer s = W a (LoRA's A and B matrices, and the reward head).
For one sequence the Jacobian of a scalar f with respect to W is J = Σ_t g_t a_tᵀ, where a_t is the
layer's input at token t and g_t = ∂f/∂s_t. One backward pass of Σ_i f_i gives g for every sequence of a
batch at once (sequences do not interact), so K-FAC statistics and per-example Jacobians need no loop
over examples.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
from peft import PeftModel
from peft.tuners.lora import LoraLayer

from ..errors import UserError

SUBSETS = ("all", "head", "lora")  # all: LoRA matrices and head; head: the head alone (last-layer Laplace); lora: LoRA alone


def posterior_layers(model, subset: str = "all") -> dict[str, torch.nn.Linear]:
    """The linear layers whose weights get a posterior, by name, in a fixed order."""
    if subset not in SUBSETS:
        raise UserError(f"laplace: subset must be one of {', '.join(SUBSETS)}, not {subset!r}")
    if model.config.objective == "dpo":
        raise UserError("laplace: a dpo model's reward comes from the LM head, not a reward head; fit bt or haf models")
    layers: dict[str, torch.nn.Linear] = {}
    if subset in ("all", "lora"):
        if not isinstance(model.backbone, PeftModel):
            raise UserError("laplace: this model was fully fine-tuned (no LoRA): use subset 'head' (--subset head)")
        for name, module in model.backbone.named_modules():
            if isinstance(module, LoraLayer):
                for adapter in module.active_adapters:
                    layers[f"{name}.lora_A.{adapter}"] = module.lora_A[adapter]
                    layers[f"{name}.lora_B.{adapter}"] = module.lora_B[adapter]
    if subset != "lora":
        layers["head"] = model.head
    for name, layer in layers.items():
        if not isinstance(layer, torch.nn.Linear) or layer.bias is not None:
            raise UserError(f"laplace: layer {name} is not a linear layer without bias")
    return layers


GradientHook = Callable[[str, torch.Tensor, torch.Tensor], None]


@contextlib.contextmanager
def record(model: torch.nn.Module, layers: dict[str, torch.nn.Linear], on_gradient: GradientHook) -> Iterator[Callable[[torch.Tensor], None]]:
    """Within the block, forward passes remember each layer's input a, and a backward pass started with
    the yielded function calls on_gradient(name, a, g) with a: (sequences, tokens, in) and
    g: (sequences, tokens, out) (the head, read at one token, gets tokens = 1). Only the layers' weights
    require gradients meanwhile, so the forward pass keeps no more than their backward needs (nothing
    inside the backbone for the head alone)."""
    weights = [layer.weight for layer in layers.values()]
    chosen = {id(w) for w in weights}
    params = list(model.parameters())
    needed = [p.requires_grad for p in params]
    handles = []

    def tap(name: str):
        def forward_hook(module, inputs, output):
            if output.requires_grad:
                a = inputs[0].detach()
                output.register_hook(lambda g: on_gradient(name, _as_tokens(a), _as_tokens(g.detach())))

        return forward_hook

    def backward(total: torch.Tensor) -> None:
        torch.autograd.grad(total, weights, allow_unused=True)

    try:
        for p in params:
            p.requires_grad_(id(p) in chosen)
        handles = [layer.register_forward_hook(tap(name)) for name, layer in layers.items()]
        with torch.enable_grad():
            yield backward
    finally:
        for handle in handles:
            handle.remove()
        for p, flag in zip(params, needed):
            p.requires_grad_(flag)


def _as_tokens(x: torch.Tensor) -> torch.Tensor:
    return (x if x.dim() == 3 else x[:, None]).float()
