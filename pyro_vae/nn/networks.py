"""Encoder and decoder networks.

Contracts (any user ``nn.Module`` that keeps them can replace the built-in ones):

* **encoder** ``(x, y_onehot=None) -> (loc, scale)``: ``x`` has shape ``(B, *event_shape)``;
  ``loc`` and ``scale`` have shape ``(B, latent_dim)`` and ``scale > 0``. The built-in encoders
  predict ``log σ²`` and return ``σ = exp(½ log σ²)``.
* **decoder** ``(z, y_onehot=None) -> out``: ``z`` has shape ``(B, latent_dim)``; ``out`` has
  ``B · num_params · prod(event_shape)`` elements, read as ``(B, num_params, *event_shape)`` (the
  likelihood's parameters, e.g. Bernoulli logits or a Gaussian mean). No output activation: the
  likelihood applies its own link.

``y_onehot`` is passed only to conditional models (CVAE): the MLPs concatenate it to their input,
the convolutional ones to the flattened features (encoder) and to z (decoder).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
from torch import nn

from pyro_vae.errors import ConfigError, check_count

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "softplus": nn.Softplus,
    "tanh": nn.Tanh,
    "elu": nn.ELU,
    "leaky-relu": nn.LeakyReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
}


def _activation(name: str) -> type[nn.Module]:
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ConfigError(
            f"unknown activation {name!r}; choose one of: {', '.join(ACTIVATIONS)}"
        ) from None


def mlp(sizes: Sequence[int], activation: str = "relu") -> nn.Sequential:
    """Affine layers ``sizes[0] → … → sizes[-1]`` with ``activation`` between them (not after)."""
    act = _activation(activation)
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(act())
    return nn.Sequential(*layers)


def _with_condition(h: torch.Tensor, y_onehot: torch.Tensor | None) -> torch.Tensor:
    return h if y_onehot is None else torch.cat([h, y_onehot.to(h.dtype)], dim=-1)


class GaussianHead(nn.Module):
    """Splits features into ``loc`` and ``scale = exp(½ log σ²)`` of q(z|x)."""

    def __init__(self, in_features: int, latent_dim: int) -> None:
        super().__init__()
        self.loc = nn.Linear(in_features, latent_dim)
        self.log_var = nn.Linear(in_features, latent_dim)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.loc(h), torch.exp(0.5 * self.log_var(h))


class MLPEncoder(nn.Module):
    """q_φ(z|x): flatten x (and append y), hidden layers, then a :class:`GaussianHead`."""

    def __init__(
        self,
        event_shape: Sequence[int],
        latent_dim: int,
        hidden: Sequence[int] = (400,),
        activation: str = "relu",
        cond_dim: int = 0,
    ) -> None:
        super().__init__()
        _check_sizes(event_shape, latent_dim, hidden)
        in_features = math.prod(event_shape) + cond_dim
        self.body = mlp([in_features, *hidden], activation)
        if hidden:
            self.body.append(_activation(activation)())
        self.head = GaussianHead(hidden[-1] if hidden else in_features, latent_dim)

    def forward(
        self, x: torch.Tensor, y_onehot: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        h = _with_condition(x.reshape(x.shape[0], -1), y_onehot)
        return self.head(self.body(h))


class MLPLogitsEncoder(nn.Module):
    """q_φ(z|x) of a discrete code: flatten x (and append y), hidden layers, then
    ``prod(code_shape)`` logits read as ``(B, *code_shape)`` — K units, or G groups of C classes.
    """

    def __init__(
        self,
        event_shape: Sequence[int],
        code_shape: Sequence[int],
        hidden: Sequence[int] = (400,),
        activation: str = "relu",
        cond_dim: int = 0,
    ) -> None:
        super().__init__()
        _check_sizes(event_shape, math.prod(code_shape), hidden)
        self.code_shape = tuple(code_shape)
        in_features = math.prod(event_shape) + cond_dim
        self.net = mlp([in_features, *hidden, math.prod(code_shape)], activation)

    def forward(self, x: torch.Tensor, y_onehot: torch.Tensor | None = None) -> torch.Tensor:
        h = _with_condition(x.reshape(x.shape[0], -1), y_onehot)
        return self.net(h).reshape(x.shape[0], *self.code_shape)


def _check_sizes(event_shape: Sequence[int], latent_dim: int, hidden: Sequence[int]) -> None:
    """One-line errors for sizes a network cannot have."""
    check_count("latent_dim", latent_dim)
    for h in hidden:
        check_count("a hidden width", h)
    for d in event_shape:
        check_count("each data dimension", d)


class MLPDecoder(nn.Module):
    """p_θ(x|z): z (and y) through hidden layers to ``num_params · prod(event_shape)`` outputs."""

    def __init__(
        self,
        event_shape: Sequence[int],
        latent_dim: int,
        hidden: Sequence[int] = (400,),
        activation: str = "relu",
        num_params: int = 1,
        cond_dim: int = 0,
    ) -> None:
        super().__init__()
        _check_sizes(event_shape, latent_dim, hidden)
        self.net = mlp([latent_dim + cond_dim, *hidden, num_params * math.prod(event_shape)],
                       activation)

    def forward(self, z: torch.Tensor, y_onehot: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(_with_condition(z, y_onehot))


# Convolutional stacks: every layer is Conv2d(k=4, s=2, p=1), halving the side.
# 28×28: 28 → 14 → 7 → 3 (the source material's ConvVAE; its decoder needs output_padding=1 at
# 3 → 7 to get back to 28, which the source omitted). 64×64: 64 → 32 → 16 → 8 → 4 with batch
# norm (the source material's CelebA VAE).
_CONV_SPECS = {
    28: {"channels": (32, 64, 128), "final": 3, "batch_norm": False, "output_padding": (1, 0, 0)},
    64: {"channels": (32, 64, 128, 256), "final": 4, "batch_norm": True,
         "output_padding": (0, 0, 0, 0)},
}


def _conv_spec(event_shape: Sequence[int]) -> dict:
    side = event_shape[1] if len(event_shape) == 3 else None
    if side is None or event_shape[2] != side or side not in _CONV_SPECS:
        raise ConfigError(
            f"the convolutional networks take images of shape (C, 28, 28) or (C, 64, 64), got "
            f"{tuple(event_shape)}; use --arch mlp, or --image-size 64 for image folders"
        )
    return _CONV_SPECS[event_shape[1]]


def _block(conv: nn.Module, channels: int, batch_norm: bool) -> list[nn.Module]:
    return [conv, *([nn.BatchNorm2d(channels)] if batch_norm else []), nn.ReLU()]


class ConvEncoder(nn.Module):
    """Strided-convolution encoder for (C, 28, 28) or (C, 64, 64) images."""

    def __init__(self, event_shape: Sequence[int], latent_dim: int, cond_dim: int = 0) -> None:
        super().__init__()
        spec = _conv_spec(event_shape)
        layers: list[nn.Module] = []
        c_in = event_shape[0]
        for c_out in spec["channels"]:
            conv = nn.Conv2d(c_in, c_out, kernel_size=4, stride=2, padding=1)
            layers += _block(conv, c_out, spec["batch_norm"])
            c_in = c_out
        self.features = nn.Sequential(*layers, nn.Flatten())
        self.head = GaussianHead(c_in * spec["final"] ** 2 + cond_dim, latent_dim)

    def forward(
        self, x: torch.Tensor, y_onehot: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(_with_condition(self.features(x), y_onehot))


class ConvDecoder(nn.Module):
    """Transposed-convolution decoder mirroring :class:`ConvEncoder`."""

    def __init__(
        self,
        event_shape: Sequence[int],
        latent_dim: int,
        num_params: int = 1,
        cond_dim: int = 0,
    ) -> None:
        super().__init__()
        spec = _conv_spec(event_shape)
        channels = spec["channels"][::-1]
        self._start = (channels[0], spec["final"], spec["final"])
        self.fc = nn.Linear(latent_dim + cond_dim, math.prod(self._start))
        layers: list[nn.Module] = []
        outs = [*channels[1:], num_params * event_shape[0]]
        for i, (c_in, c_out) in enumerate(zip(channels, outs, strict=True)):
            conv = nn.ConvTranspose2d(c_in, c_out, kernel_size=4, stride=2, padding=1,
                                      output_padding=spec["output_padding"][i])
            layers += [conv] if i == len(outs) - 1 else _block(conv, c_out, spec["batch_norm"])
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, y_onehot: torch.Tensor | None = None) -> torch.Tensor:
        h = self.fc(_with_condition(z, y_onehot))
        return self.net(torch.relu(h).reshape(-1, *self._start))
