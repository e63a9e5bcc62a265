"""`MaskedNetwork`: a network run with masked weights, the masks straight-through to what a method
learns (HYDRA's scores, HARP's scores and rates), the network's own tensors untouched."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn
from torch.func import functional_call


class MaskedNetwork(nn.Module):
    """`network` run with each masked weight w used as w ⊙ mask: the subnetwork being learnt.

    The network's tensors are untouched; `state_dict` and `load_state_dict` are the network's own,
    so checkpoints and model files keep its keys. A subclass says what the masks are
    (`weight_masks`, straight-through to what it learns).
    """

    network: nn.Module

    def weight_masks(self) -> dict[str, Tensor]:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        weights = dict(self.network.named_parameters())
        masked = {name: weights[name] * mask for name, mask in self.weight_masks().items()}
        return functional_call(self.network, masked, (x,))

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return self.network.state_dict(*args, **kwargs)

    def load_state_dict(self, state: Any, strict: bool = True, assign: bool = False) -> Any:
        return self.network.load_state_dict(state, strict=strict, assign=assign)
