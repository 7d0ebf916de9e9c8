"""One-hidden-layer autoencoders with sigmoid units, masking noise and a sparsity penalty."""
from __future__ import annotations

# torch at module level is deliberate: this module is a torch model and nothing else, and only
# zoo.pretraining imports it, from inside the functions that train; `import zoo` never reaches it.
import torch
import torch.nn.functional as F
from torch import nn

from zoo.rbm import kl_penalty


class Autoencoder(nn.Module):
    """Sigmoid encoder; decoder tied to the encoder's transposed weights by default.

    With Bernoulli visible units (inputs in [0, 1]) the decoder is a sigmoid trained with
    cross-entropy; with Gaussian ones (standardized real values) it is linear, trained with
    squared error. ``denoise`` is the fraction of inputs set to zero before encoding
    (masking noise, as in Vincent et al.'s denoising autoencoders); the clean input is the
    target. ``sparsity=(target, weight)`` adds ``weight * KL(target || mean activation)``.

    >>> ae = Autoencoder(64, 32, denoise=0.2)
    >>> loss, error = ae.loss(torch.rand(10, 64))
    """

    def __init__(
        self,
        n_visible: int,
        n_hidden: int,
        *,
        visible: str = "bernoulli",
        tied: bool = True,
        denoise: float = 0.0,
        sparsity: tuple[float, float] | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.visible = visible
        self.tied = tied
        self.denoise = denoise
        self.sparsity = sparsity
        # Glorot-uniform scaled by 4 for sigmoid units (Glorot & Bengio 2010).
        bound = 4 * (6 / (n_visible + n_hidden)) ** 0.5
        self.weight = nn.Parameter(_uniform((n_hidden, n_visible), bound, generator))
        self.hidden_bias = nn.Parameter(torch.zeros(n_hidden))
        self.visible_bias = nn.Parameter(torch.zeros(n_visible))
        self.decoder_weight = (
            None if tied else nn.Parameter(_uniform((n_visible, n_hidden), bound, generator))
        )

    def encode(self, v: torch.Tensor) -> torch.Tensor:
        """Hidden activations: the features the next layer trains on."""
        return torch.sigmoid(F.linear(v, self.weight, self.hidden_bias))

    def decode_logits(self, h: torch.Tensor) -> torch.Tensor:
        weight = self.weight.t() if self.decoder_weight is None else self.decoder_weight
        return F.linear(h, weight, self.visible_bias)

    def decode(self, h: torch.Tensor) -> torch.Tensor:
        """The reconstruction of the visible units from hidden activations."""
        pre = self.decode_logits(h)
        return torch.sigmoid(pre) if self.visible == "bernoulli" else pre

    def loss(
        self, v: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(training loss, mean squared reconstruction error) on one batch."""
        corrupted = v
        if self.denoise > 0:
            keep = torch.rand(v.shape, generator=generator) >= self.denoise
            corrupted = v * keep
        hidden = self.encode(corrupted)
        logits = self.decode_logits(hidden)
        if self.visible == "bernoulli":
            loss = F.binary_cross_entropy_with_logits(logits, v)
            reconstruction = torch.sigmoid(logits)
        else:
            loss = F.mse_loss(logits, v)
            reconstruction = logits
        if self.sparsity is not None:
            loss = loss + kl_penalty(hidden, *self.sparsity)
        return loss, ((reconstruction.detach() - v) ** 2).mean()


def _uniform(shape: tuple[int, int], bound: float, generator: torch.Generator | None) -> torch.Tensor:
    return (torch.rand(shape, generator=generator) * 2 - 1) * bound
