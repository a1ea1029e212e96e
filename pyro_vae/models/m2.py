"""The semi-supervised VAE "M2" of Kingma, Rezende, Mohamed & Welling (2014), the Pyro way.

Generative model (``SemiSupervisedVAE.model``), for each point n in the plate ``"data"``::

    y_n ~ Categorical(1/C)                      site "y"   (observed when the label is known)
    z_n ~ N(0, I_L)                             site "z"   (the "style")
    x_n ~ p_θ(x | y_n, z_n)                     site "x"   (decoder on [z, one-hot y])

Guide (``SemiSupervisedVAE.guide``)::

    y_n ~ q_φ(y | x_n) = Categorical(classifier(x_n))     site "y", only when y is not given;
                                                           marked ``infer={"enumerate":
                                                           "parallel"}``
    z_n ~ q_φ(z | x_n, y_n) = N(μ_φ(x_n, y_n), diag σ²_φ(x_n, y_n))      site "z"

With ``TraceEnum_ELBO(max_plate_nesting=1)`` an unlabelled point's y is summed out exactly, so
the objective per point is the paper's
U(x) = Σ_y q(y|x) [L(x, y)] + H(q(y|x)) and a labelled one's L(x, y) = E_q(z|x,y)[log p(x|y,z)
+ log p(y) + log p(z) − log q(z|x,y)]. The classifier q(y|x) gets no gradient from labelled
points through L, so the paper adds α · Σ_labelled log q(y_n|x_n): :meth:`classify_model`
observes y at site ``"y_aux"`` under ``poutine.scale`` (train it with its empty
:meth:`classify_guide` and ``Trace_ELBO``). α = ``aux_weight`` · N / N_l makes it the paper's
α = 0.1·N times the mean over labelled points (Kingma et al. 2014, §3.1.1).

Plates: a labelled batch is a subsample of the ``num_labelled`` labelled points, an unlabelled
one of the ``num_unlabelled`` others (``indices`` index within each), so each ELBO term is
scaled to its own part of the data set. As a density model of x the VAE is unconditional
(``conditional`` is False: evaluation and ``Predictive`` leave y to the model and the guide);
:meth:`classify` and :meth:`accuracy` read the classifier.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro import poutine
from torch import nn

from pyro_vae.distributions.likelihoods import Likelihood
from pyro_vae.errors import DataError, check_count
from pyro_vae.models.vae import VAE, kl_scale
from pyro_vae.nn.module import register_module
from pyro_vae.nn.networks import mlp
from pyro_vae.sites import DATA_PLATE, DECODER_MODULE, ENCODER_MODULE, LATENT_SITE, OBS_SITE

LABEL_SITE = "y"
AUX_SITE = "y_aux"
CLASSIFIER_MODULE = "classifier"


class MLPClassifier(nn.Module):
    """q_φ(y | x): flatten x, hidden layers, C logits."""

    def __init__(self, event_shape: Sequence[int], num_classes: int,
                 hidden: Sequence[int] = (500,), activation: str = "softplus") -> None:
        super().__init__()
        self.net = mlp([math.prod(event_shape), *hidden, num_classes], activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.reshape(x.shape[0], -1))


class SemiSupervisedVAE(VAE):
    """M2 (module docstring): ``classifier`` x → logits of y; ``encoder`` (x, one-hot y) →
    (loc, scale) of z; ``decoder`` (z, one-hot y) → the likelihood's parameters.

    :param num_labelled: N_l, the labelled points the ``"data"`` plate scales labelled batches
        to; ``num_unlabelled`` likewise (``None``: the batch is its whole part).
    :param aux_weight: the paper's α / N (0.1): the classification term's weight.
    """

    def __init__(self, classifier: nn.Module, encoder: nn.Module, decoder: nn.Module,
                 likelihood: Likelihood, latent_dim: int, event_shape: Sequence[int],
                 num_classes: int, num_labelled: int | None = None,
                 num_unlabelled: int | None = None, aux_weight: float = 0.1) -> None:
        super().__init__(encoder, decoder, likelihood, latent_dim, event_shape)
        self.classifier = classifier
        self.num_classes = check_count("num_classes", num_classes)
        self.num_labelled, self.num_unlabelled = num_labelled, num_unlabelled
        self.aux_weight = float(aux_weight)

    @property
    def conditional(self) -> bool:
        return False  # y is a latent variable of the model (observed when known)

    def networks(self) -> dict[str, nn.Module]:
        return {**super().networks(), CLASSIFIER_MODULE: self.classifier}

    # ------------------------------------------------------------------ pieces
    def _onehot(self, y: torch.Tensor | None, batch: int) -> torch.Tensor:  # any leading dims
        if y is None:
            raise DataError("M2's decoder and encoder need the label y (given, or drawn from "
                            "q(y|x)); pass y")
        return F.one_hot(y.long(), self.num_classes).float()

    def _check_labels(self, y: torch.Tensor | None, batch: int) -> None:
        if y is None:
            return
        if not isinstance(y, torch.Tensor) or y.is_floating_point() or y.shape != (batch,):
            raise DataError(f"labels y must be an integer tensor of shape ({batch},), got "
                            f"{getattr(y, 'dtype', type(y).__name__)} "
                            f"{tuple(getattr(y, 'shape', ()))}; one label per point")
        if not torch.jit.is_tracing() and y.numel() and (int(y.min()) < 0
                                                          or int(y.max()) >= self.num_classes):
            raise DataError(f"labels y must lie in [0, {self.num_classes}); renumber them")

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """The logits of q(y | x), shape (B, C)."""
        return self.classifier(x)

    @torch.no_grad()
    def accuracy(self, x: torch.Tensor, y: torch.Tensor, batch_size: int = 2000) -> float:
        """The share of points whose most probable class under q(y|x) is their label."""
        was = self.training
        self.eval()
        try:
            hits = sum(int((self.classify(x[i:i + batch_size]).argmax(-1)
                            == y[i:i + batch_size]).sum()) for i in range(0, len(x), batch_size))
        finally:
            self.train(was)
        return hits / max(1, len(x))

    def encode(self, x: torch.Tensor, y: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """(μ, σ) of q(z | x, y); ``y`` may carry leading (enumeration) dims; ``None`` takes
        the classifier's most probable class."""
        if y is None:
            y = self.classify(x).argmax(-1)
        y_onehot = self._onehot(y, x.shape[0])
        lead = torch.broadcast_shapes(y_onehot.shape[:-1], (x.shape[0],))
        flat_x = x.reshape(x.shape[0], -1).expand(*lead, -1).reshape(-1, math.prod(x.shape[1:]))
        flat_y = y_onehot.expand(*lead, self.num_classes).reshape(-1, self.num_classes)
        loc, scale = self.encoder(flat_x.reshape(-1, *self.event_shape), flat_y)
        return loc.reshape(*lead, -1), scale.reshape(*lead, -1)

    def observation_distribution(self, z: torch.Tensor, y: torch.Tensor | None = None
                                 ) -> dist.TorchDistribution:
        base = self.likelihood.distribution(*self._decoder_params(z, self._onehot(y, 0)),
                                            scale=self.obs_scale())
        return base.to_event(len(self.event_shape))

    def decode_mean(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.likelihood.mean(*self._decoder_params(z, self._onehot(y, 0)))

    def _plate(self, batch: int, labelled: bool, indices: torch.Tensor | None,
               scaled: bool = True) -> pyro.plate:
        size = (self.num_labelled if labelled else self.num_unlabelled) if scaled else None
        if indices is not None and size is not None:
            return pyro.plate(DATA_PLATE, size=size, subsample=indices)
        return pyro.plate(DATA_PLATE, size=max(size or batch, batch), subsample_size=batch)

    # ------------------------------------------------------------------ Pyro programs
    def _model(self, x, y, indices, beta, num_points, scaled: bool) -> torch.Tensor:
        self.check_call(x, None, indices, beta)
        batch = self.batch_size(x, y, num_points)
        self._check_labels(y, batch)
        register_module(DECODER_MODULE, self.decoder)
        device = x.device if x is not None else self.device
        with self._plate(batch, y is not None, indices, scaled and x is not None):
            prior_y = dist.Categorical(logits=torch.zeros(batch, self.num_classes, device=device))
            y = pyro.sample(LABEL_SITE, prior_y, obs=y)
            with kl_scale(beta):
                z = pyro.sample(LATENT_SITE, self.prior(batch, device))
            pyro.sample(OBS_SITE, self.observation_distribution(z, y), obs=x)
        return z

    def guide(self, x: torch.Tensor, y: torch.Tensor | None = None,
              indices: torch.Tensor | None = None, beta: float | torch.Tensor = 1.0,
              num_points: int | None = None) -> torch.Tensor:
        """q(y | x) (when y is not given; enumerated in parallel under ``TraceEnum_ELBO``) and
        q(z | x, y)."""
        if x is None:
            raise DataError("the guide q(y, z | x) needs data x; to generate, run the model "
                            "alone")
        self.check_call(x, None, indices, beta)
        self._check_labels(y, x.shape[0])
        register_module(CLASSIFIER_MODULE, self.classifier)
        register_module(ENCODER_MODULE, self.encoder)
        with self._plate(x.shape[0], y is not None, indices):
            if y is None:
                y = pyro.sample(LABEL_SITE, dist.Categorical(logits=self.classify(x)),
                                infer={"enumerate": "parallel"})
            loc, scale = self.encode(x, y)
            with kl_scale(beta):
                return pyro.sample(LATENT_SITE, dist.Normal(loc, scale).to_event(1))

    def classify_model(self, x: torch.Tensor, y: torch.Tensor,
                       indices: torch.Tensor | None = None) -> None:
        """α · log q(y | x) of labelled points, as an observed site ``"y_aux"`` (train with
        :meth:`classify_guide` and ``Trace_ELBO``)."""
        self._check_labels(y, x.shape[0])
        register_module(CLASSIFIER_MODULE, self.classifier)
        n_l = self.num_labelled or x.shape[0]
        n = n_l + (self.num_unlabelled or 0)
        with self._plate(x.shape[0], True, indices), \
                poutine.scale(scale=self.aux_weight * n / n_l):
            pyro.sample(AUX_SITE, dist.Categorical(logits=self.classify(x)), obs=y)

    def classify_guide(self, x: torch.Tensor, y: torch.Tensor,
                       indices: torch.Tensor | None = None) -> None:
        """The empty guide of :meth:`classify_model` (it has no latent site)."""

    def posterior(self, x: torch.Tensor, y: torch.Tensor | None = None
                  ) -> dist.TorchDistribution:
        loc, scale = self.encode(x, y)
        return dist.Normal(loc, scale).to_event(1)
