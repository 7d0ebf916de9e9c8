"""Restricted Boltzmann machines (Bernoulli or Gaussian visible units) trained with CD-k."""
from __future__ import annotations

# torch at module level is deliberate: this module is torch models and nothing else, and only
# zoo.pretraining imports it, from inside the functions that train; `import zoo` never reaches it.
import torch
import torch.nn.functional as F
from torch import nn


class RBM(nn.Module):
    """An RBM with sigmoid (Bernoulli) hidden units.

    Visible units are Bernoulli (inputs in [0, 1]) or Gaussian with unit variance
    (real-valued inputs, which the caller standardizes first). ``weight`` has the layout
    of ``nn.Linear(n_visible, n_hidden).weight`` so the trained layer drops into a stack.

    Training minimises ``F(v0) - F(vk)``: the free energy of the data minus that of the
    k-th Gibbs sample, held fixed. Its gradient is exactly the CD-k update, so an ordinary
    torch optimizer does the bookkeeping.

    >>> rbm = RBM(64, 32)
    >>> loss, error = rbm.loss(torch.rand(10, 64))
    """

    def __init__(
        self,
        n_visible: int,
        n_hidden: int,
        *,
        visible: str = "bernoulli",
        cd_k: int = 1,
        sparsity: tuple[float, float] | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.visible = visible
        self.cd_k = cd_k
        self.sparsity = sparsity
        # Small random weights and zero biases, as in Hinton's practical guide to RBMs.
        self.weight = nn.Parameter(torch.randn(n_hidden, n_visible, generator=generator) * 0.01)
        self.hidden_bias = nn.Parameter(torch.zeros(n_hidden))
        self.visible_bias = nn.Parameter(torch.zeros(n_visible))

    def encode(self, v: torch.Tensor) -> torch.Tensor:
        """P(h = 1 | v): the features the next layer trains on."""
        return torch.sigmoid(F.linear(v, self.weight, self.hidden_bias))

    def decode(self, h: torch.Tensor) -> torch.Tensor:
        """E[v | h]: probabilities (Bernoulli units) or means (Gaussian units)."""
        pre = F.linear(h, self.weight.t(), self.visible_bias)
        return torch.sigmoid(pre) if self.visible == "bernoulli" else pre

    def free_energy(self, v: torch.Tensor) -> torch.Tensor:
        """F(v) for each row; the lower, the more probable the model finds v."""
        hidden_term = F.softplus(F.linear(v, self.weight, self.hidden_bias)).sum(dim=1)
        if self.visible == "bernoulli":
            visible_term = -(v @ self.visible_bias)
        else:
            visible_term = 0.5 * ((v - self.visible_bias) ** 2).sum(dim=1)
        return visible_term - hidden_term

    def loss(
        self, v0: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(CD-k training loss, mean squared error of the one-step reconstruction)."""
        with torch.no_grad():
            v = v0
            for step in range(self.cd_k):
                h = torch.bernoulli(self.encode(v), generator=generator)
                # The mean of the visible units rather than a sample: less noise in the
                # gradient, the usual practice for both unit types.
                v = self.decode(h)
                if step == 0:
                    error = ((v - v0) ** 2).mean()
        loss = (self.free_energy(v0) - self.free_energy(v)).mean()
        if self.sparsity is not None:
            loss = loss + kl_penalty(self.encode(v0), *self.sparsity)
        return loss, error


def kl_penalty(hidden: torch.Tensor, target: float, weight: float) -> torch.Tensor:
    """weight * KL(target || each hidden unit's mean activation in the batch), averaged over units."""
    rho = hidden.mean(dim=0).clamp(1e-6, 1 - 1e-6)
    kl = target * torch.log(target / rho) + (1 - target) * torch.log((1 - target) / (1 - rho))
    return weight * kl.mean()
