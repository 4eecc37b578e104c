"""The linear layers of a model run on the CPU with their weights packed once for oneDNN, not at every call.

On the CPU, torch's ``linear`` hands each call's weight to oneDNN, which first reorders it into its blocked layout;
for a decoding step of a few rows that reordering costs about half as much again as the product.
:func:`pack_linears` swaps every ``nn.Linear`` (and GPT-2's ``Conv1D``) of an inference model for a
:class:`PackedLinear` that holds the weight already reordered (``torch.ops.mkldnn._reorder_linear_weight``, what
torch.compile's freezing does on the CPU) and calls oneDNN's product on it. In bfloat16 the products are the very
same numbers; in float32 oneDNN's product replaces MKL's and may differ in the last bits, so the packing applies to
bfloat16 models only. An LM head tied to the embeddings gets a packed copy of its own (the embedding matrix once more
in memory: 57 MB for SmolLM2-135M).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

PACKED_DTYPES = (torch.bfloat16,)


def packing_available() -> bool:
    """Whether this torch can pack weights for oneDNN (a CPU build with mkldnn)."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")


class PackedLinear(nn.Module):
    """``y = x W^T + b`` on a weight packed once for oneDNN: the weight of an ``nn.Linear`` (``[out, in]``) or a
    ``Conv1D`` (``[in, out]``, transposed here), inference only."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.register_buffer("packed", torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous(), 1))
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    @classmethod
    def of(cls, layer: nn.Module) -> PackedLinear:
        """The packed twin of ``layer`` (an ``nn.Linear`` or a ``Conv1D``)."""
        weight = layer.weight.t() if isinstance(layer, Conv1D) else layer.weight
        return cls(weight, layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        out = torch.ops.mkldnn._linear_pointwise(rows, self.packed, self.bias, "none", [], "")
        return out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def pack_linears(model: nn.Module) -> int:
    """Swap every linear layer of ``model`` (in eval mode, on the CPU, in bfloat16) for its :class:`PackedLinear`;
    return how many were swapped (0 where the model is elsewhere, in another precision, or torch cannot pack)."""
    weight = next(model.parameters())
    if weight.device.type != "cpu" or weight.dtype not in PACKED_DTYPES or not packing_available():
        return 0
    layers = [(name, layer) for name, layer in model.named_modules() if isinstance(layer, (nn.Linear, Conv1D))]
    for name, layer in layers:
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, PackedLinear.of(layer))
    return len(layers)
