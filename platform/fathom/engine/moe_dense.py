"""Small-batch routed experts as three dense GEMMs (an engine-side MoE backend).

The model's DeepSeekMoE (`fathom.model.layers.moe.MoE`) loops over experts: per expert a
`where`, a gather, three small GEMMs and an `index_add_`. At decode a step has only a few
dozen tokens, so that loop is ~10 tiny ops x E experts per layer, and on CPU their overhead
dominates. For T tokens and E local experts with T*E <= `max_dense`, this backend instead
runs every local expert on every token with stacked weights and weights the results by the
router's (mostly zero) combine weights:

    h   = x · [W_gate; W_up]_e^T          [T, E, 2I]   one GEMM over all experts
    a   = silu(h_gate) * h_up * w[t, e]    [T, E, I]    w = routing weight, 0 if not selected
    y   = shared(x) + sum_e a_e · W_down_e^T            one batched GEMM, then all_reduce

The sum is the same as the model's (unselected experts contribute exact zeros); the expert
weights are re-pointed to views of the stacked tensors, so no memory is duplicated. Larger
batches (prefill) use the model's own loop. `install` is a no-op for an unknown MoE layout.
"""

import types

import torch
import torch.nn.functional as F

from fathom.parallel.comm import all_reduce

_NEEDED = ("gate", "experts", "shared_experts", "local", "ctx")


def install(model, max_dense: int = 2048) -> bool:
    """Use dense small-batch experts in every MoE layer; False (nothing changed) if unsupported."""
    moes = [layer.mlp for layer in getattr(getattr(model, "model", None), "layers", [])
            if all(hasattr(getattr(layer, "mlp", None), n) for n in _NEEDED)]
    if not moes or not all(_mlp_like(e) for m in moes for e in m.experts):
        return False
    for moe in moes:
        _stack_weights(moe)
        moe._loop_forward = moe.forward
        moe.max_dense = max_dense
        moe.forward = types.MethodType(forward, moe)
    return True


def _mlp_like(expert) -> bool:
    return all(hasattr(getattr(expert, n, None), "weight") for n in ("gate_proj", "up_proj", "down_proj"))


@torch.no_grad()
def _stack_weights(moe) -> None:
    """[E, 2I, H] gate|up and [E, H, I] down, with each expert's parameters made views into them."""
    gate_up = torch.stack([torch.cat([e.gate_proj.weight, e.up_proj.weight]) for e in moe.experts])
    down = torch.stack([e.down_proj.weight for e in moe.experts])
    inter = moe.experts[0].gate_proj.weight.shape[0]
    for j, e in enumerate(moe.experts):
        e.gate_proj.weight.data = gate_up[j, :inter]
        e.up_proj.weight.data = gate_up[j, inter:]
        e.down_proj.weight.data = down[j]
    moe.dense_gate_up = gate_up.view(-1, gate_up.shape[-1])  # [E*2I, H]
    moe.dense_down_t = down.transpose(1, 2)  # [E, I, H]
    moe.dense_inter = inter


def forward(self, x: torch.Tensor) -> torch.Tensor:
    """x [T, H] -> [T, H], combined over all ranks like the model's MoE.forward."""
    T, E = x.shape[0], len(self.experts)
    if T * E > self.max_dense:
        return self._loop_forward(x)
    weights, ids = self.gate(x)  # [T, k], [T, k] global expert ids
    y = self.shared_experts(x) if self.shared_experts is not None else torch.zeros_like(x)
    combine = torch.zeros(T, self.gate.n_experts, dtype=x.dtype, device=x.device)
    combine.scatter_(1, ids, weights.to(x.dtype))
    combine = combine[:, self.local.start:self.local.stop]  # [T, E] this rank's experts
    h = F.linear(x, self.dense_gate_up).view(T, E, 2 * self.dense_inter)  # [T, E, 2I]
    a = F.silu(h[..., : self.dense_inter]) * h[..., self.dense_inter:] * combine[..., None]  # [T, E, I]
    y = y + torch.bmm(a.transpose(0, 1), self.dense_down_t).sum(dim=0)  # [E, T, H] -> [T, H]
    return all_reduce(y, self.ctx)
