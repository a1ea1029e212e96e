"""The VAE as a ``torch.nn.Module`` that owns its networks, and its Pyro ``model`` / ``guide``.

Generative model (``VAE.model``), for each data point n in the plate ``"data"``::

    z_n ~ N(0, I_L)                                   site "z", event shape (L,)
    x_n ~ p_θ(x | z_n [, y_n]) = Π_d p(x_nd | decoder_θ(z_n [, y_n]))   site "x"

Amortized variational family (``VAE.guide``)::

    q_φ(z_n | x_n [, y_n]) = N(z_n; μ_φ(x_n), diag σ²_φ(x_n))              site "z"

or a richer family built on it — full covariance, inverse autoregressive or planar flows
(:mod:`pyro_vae.distributions.guides`, ``family=``).

Both run inside ``pyro.plate("data", size=N, subsample=indices)``: a mini-batch of B points gets
scale N/B, so ``Trace_ELBO`` estimates the ELBO of the whole data set,
``Σ_n E_q[log p(x_n|z_n)] - KL(q(z_n|x_n) ‖ p(z_n))``.

A KL weight β ≥ 0 (β-VAE, KL annealing) scales site "z" in *both* model and guide
(:func:`kl_scale`), so every ELBO sees ``E_q[log p(x|z)] - β·KL(q‖p)``: with
``TraceMeanField_ELBO`` the analytic KL term is scaled by β, with ``Trace_ELBO`` both
``log p(z)`` and ``log q(z)`` are. β = 0 drops the KL term (Pyro's ``poutine.scale`` refuses a
zero scale; :class:`KLWeight` is the same handler without that check). Pass β as a tensor,
positionally, to a JIT ELBO: it is then a graph input and the graph compiles once.

**Why an ``nn.Module`` and not a ``PyroModule``.** The networks stay plain ``nn.Module`` networks
registered with ``pyro.module("encoder" / "decoder", ...)``, so the documented param names
``encoder$$$…`` / ``decoder$$$…`` stay as they are, any torch network can be plugged in, and
the model and guide stay plain functions. Being an ``nn.Module`` gives torch's own
``state_dict``, ``load_state_dict``, ``to``, ``parameters``, ``train`` / ``eval`` over the
encoder, the decoder and a learned observation scale. The one hazard of ``pyro.module`` — a
stale param-store entry shadowing the module's tensors — is removed by registering through
:func:`pyro_vae.nn.register_module`, which makes the module's own tensors the store's.

Both callables are plain Pyro: pass them to ``pyro.infer.SVI``, ``poutine.trace``,
``Predictive`` or ``pyro.render_model``. Site names are in :mod:`pyro_vae.sites`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro.poutine.messenger import Messenger
from torch import nn
from torch.distributions import constraints

from pyro_vae.distributions.guides import GuideFamily
from pyro_vae.distributions.likelihoods import Likelihood
from pyro_vae.errors import ConfigError, DataError, check_count
from pyro_vae.nn.module import register_module, register_param
from pyro_vae.sites import (
    DATA_PLATE,
    DECODER_MODULE,
    ENCODER_MODULE,
    GUIDE_FAMILY_MODULE,
    LATENT_SITE,
    OBS_SCALE_PARAM,
    OBS_SITE,
)


class KLWeight(Messenger):
    """Multiplies the log-density scale of the sites inside it by ``weight`` ≥ 0.

    ``poutine.scale`` without its positivity check, so that β = 0 (the start of a KL warm-up)
    is allowed: the scaled terms then vanish from every ELBO and their gradients are zero.
    """

    def __init__(self, weight: float | torch.Tensor) -> None:
        super().__init__()
        self.weight = weight

    def _process_message(self, msg: dict[str, Any]) -> None:
        msg["scale"] = self.weight * msg["scale"]


def kl_scale(beta: float | torch.Tensor) -> contextlib.AbstractContextManager:
    """The handler that weights site ``"z"`` by β in model and guide (identity for β = 1).

    :raises ConfigError: for a number β that is negative or not finite (a tensor β is not
        inspected, so that JIT tracing can take it as a graph input).
    """
    if not isinstance(beta, torch.Tensor):
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) \
                or not (0.0 <= beta < math.inf):
            raise ConfigError(f"the KL weight beta must be a finite number ≥ 0, got {beta!r}; "
                              "use 1 for the ELBO")
        if beta == 1.0:
            return contextlib.nullcontext()
    return KLWeight(beta)


class VAE(nn.Module):
    """A variational autoencoder: networks, likelihood and the Pyro ``model`` / ``guide``.

    :param encoder: network ``(x[, y_onehot]) -> (loc, scale)`` of q(z|x) (see
        :mod:`pyro_vae.nn.networks` for the contract).
    :param decoder: network ``(z[, y_onehot]) -> params`` of p(x|z).
    :param likelihood: the observation model, see :mod:`pyro_vae.distributions.likelihoods`.
        A learned scale (``gaussian-learned``, ``laplace-learned``) becomes the parameter
        ``obs_scale_unconstrained`` (log σ) of this module, seen by Pyro as
        ``pyro.param("obs_scale")`` with a positive constraint.
    :param latent_dim: L, the dimension of z.
    :param event_shape: the shape of one data point, e.g. ``(2,)`` or ``(1, 28, 28)``.
    :param num_data: N, the full data-set size that the plate scales mini-batches to. ``None``
        means "the batch is the data set" (no scaling).
    :param num_classes: number of label classes for a conditional VAE; ``None`` for a plain VAE.
    :param family: the posterior family (:class:`~pyro_vae.distributions.guides.GuideFamily`);
        default the diagonal Gaussian.
    """

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        likelihood: Likelihood,
        latent_dim: int,
        event_shape: Sequence[int],
        num_data: int | None = None,
        num_classes: int | None = None,
        family: GuideFamily | None = None,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.likelihood = likelihood
        self.latent_dim = check_count("latent_dim", latent_dim)
        self.event_shape = tuple(check_count("each data dimension", s) for s in event_shape)
        self.num_data = num_data
        self.num_classes = num_classes
        self.family = family if family is not None else GuideFamily(
            "diag", self.event_shape, self.latent_dim)
        if likelihood.learns_scale:
            self.obs_scale_unconstrained = nn.Parameter(
                torch.tensor(float(likelihood.obs_scale)).log())
        else:
            self.obs_scale_unconstrained = None

    # ------------------------------------------------------------------ helpers
    @property
    def latent_event_shape(self) -> tuple[int, ...]:
        """The event shape of site ``"z"``: ``(latent_dim,)`` (a discrete code may differ)."""
        return (self.latent_dim,)

    @property
    def conditional(self) -> bool:
        return self.num_classes is not None

    def networks(self) -> dict[str, nn.Module]:
        """The networks by their ``pyro.module`` names."""
        return {ENCODER_MODULE: self.encoder, DECODER_MODULE: self.decoder}

    def obs_scale(self) -> torch.Tensor | None:
        """The learned observation scale (``pyro.param("obs_scale")``), or ``None``."""
        if self.obs_scale_unconstrained is None:
            return None
        return register_param(OBS_SCALE_PARAM, self.obs_scale_unconstrained,
                              constraints.positive)

    @property
    def device(self) -> torch.device:
        return next(self.decoder.parameters()).device

    def _onehot(self, y: torch.Tensor | None, batch: int) -> torch.Tensor | None:
        if not self.conditional:
            return None
        if y is None:
            raise DataError(
                "this is a conditional VAE: pass the labels y (integers in "
                f"[0, {self.num_classes})) along with x; call model(x, y)"
            )
        if y.is_floating_point() and y.shape == (batch, self.num_classes):
            return y  # rows of class weights, e.g. to interpolate between two classes
        if y.shape != (batch,):
            raise DataError(
                f"labels y must have shape ({batch},) to match the data (or ({batch}, "
                f"{self.num_classes}) rows of class weights), got {tuple(y.shape)}; "
                "give one label per point"
            )
        # the one-hot rows by comparison (F.one_hot reads the labels' range into Python, which a
        # traced step cannot; check_call validates that range outside trusted loops)
        classes = torch.arange(self.num_classes, device=y.device)
        return (y.long().unsqueeze(-1) == classes).float()

    def check_shape(self, x: torch.Tensor) -> None:
        """Raise :class:`DataError` unless ``x`` has shape ``(B, *event_shape)``."""
        if tuple(x.shape[1:]) != self.event_shape or x.dim() != len(self.event_shape) + 1:
            raise DataError(
                f"data must have shape (batch, {', '.join(map(str, self.event_shape))}) for this "
                f"model, got {tuple(x.shape)}; reshape it or build the model for this shape"
            )

    def data_plate(self, batch: int, indices: torch.Tensor | None = None,
                   observed: bool = True, scaled: bool = True) -> pyro.plate:
        """The ``"data"`` plate for a batch of ``batch`` points.

        With ``indices``, a subsample of the ``num_data`` points (scale N/B); without, a batch
        scaled to ``num_data`` when it is observed and ``num_data`` is set. ``scaled=False``
        gives a plain plate of size ``batch`` (no subsampling, no scaling), the log-joint of
        exactly these points, as MCMC needs.
        """
        if not scaled:
            return pyro.plate(DATA_PLATE, size=batch)
        if indices is not None:
            if self.num_data is None:
                raise DataError("mini-batch indices need the full data size; set VAE.num_data = N")
            return pyro.plate(DATA_PLATE, size=self.num_data, subsample=indices)
        # a batch larger than the training set (a test set) is its own data set
        size = max(self.num_data, batch) if (observed and self.num_data) else batch
        return pyro.plate(DATA_PLATE, size=size, subsample_size=batch)

    def batch_size(self, x: torch.Tensor | None, y: torch.Tensor | None,
                   num_points: int | None = None) -> int:
        """B for a call of model or guide: ``len(x)``, else ``len(y)``, else ``num_points``."""
        if x is not None:
            self.check_shape(x)
            return x.shape[0]
        if y is not None:
            return y.shape[0]
        if num_points is not None:
            return check_count("num_points", num_points)
        return 1

    def encode(
        self, x: torch.Tensor, y: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(μ_φ(x), σ_φ(x)) of q(z | x), each of shape ``(B, latent_dim)``."""
        return self.encoder(x, self._onehot(y, x.shape[0])) if self.conditional \
            else self.encoder(x)

    def _decoder_params(
        self, z: torch.Tensor, y_onehot: torch.Tensor | None
    ) -> tuple[torch.Tensor, ...]:
        # z may carry leading sample dims (vectorized particles, Predictive): flatten them so
        # that any decoder taking (B, L) works, then restore them.
        lead = z.shape[:z.dim() - len(self.latent_event_shape)]
        flat = z.reshape(-1, self.latent_dim)
        if y_onehot is not None:
            flat_y = y_onehot.expand(*lead, y_onehot.shape[-1]).reshape(flat.shape[0], -1)
            out = self.decoder(flat, flat_y)
        else:
            out = self.decoder(flat)
        k = self.likelihood.num_params
        if k == 1:  # a plain view: its backward copies nothing (unbind's would stack)
            return (out.reshape(*lead, *self.event_shape),)
        return out.reshape(*lead, k, *self.event_shape).unbind(len(lead))

    def observation_distribution(
        self, z: torch.Tensor, y: torch.Tensor | None = None
    ) -> dist.TorchDistribution:
        """p_θ(x | z [, y]) with event shape ``event_shape`` and batch shape ``z.shape[:-1]``."""
        y_onehot = self._onehot(y, z.shape[-1 - len(self.latent_event_shape)]) \
            if self.conditional else None
        base = self.likelihood.distribution(*self._decoder_params(z, y_onehot),
                                            scale=self.obs_scale())
        return base.to_event(len(self.event_shape))

    def decode_mean(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """E[x | z]: decoded images or points, shape ``(*z.shape[:-1], *event_shape)``."""
        y_onehot = self._onehot(y, z.shape[-2]) if self.conditional else None
        return self.likelihood.mean(*self._decoder_params(z, y_onehot))

    # ------------------------------------------------------------------ Pyro programs
    def model(
        self,
        x: torch.Tensor | None = None,
        y: torch.Tensor | None = None,
        indices: torch.Tensor | None = None,
        beta: float | torch.Tensor = 1.0,
        num_points: int | None = None,
    ) -> torch.Tensor:
        """p(z) p_θ(x | z): observes ``x`` if given, otherwise samples it.

        :param x: a batch of data, shape ``(B, *event_shape)``, or ``None`` to generate.
        :param y: labels, shape ``(B,)`` (conditional VAE only); ``decode_mean`` and
            ``observation_distribution`` also take rows of class weights, shape ``(B, C)``.
        :param indices: positions of the batch in the full data set (``plate`` subsample);
            ``None`` scales the batch to ``num_data`` with ``subsample_size=B``.
        :param beta: KL weight β ≥ 0 at site ``"z"`` (:func:`kl_scale`).
        :param num_points: how many points to generate when ``x`` and ``y`` are ``None``
            (default 1); ``Predictive(num_samples=S)`` draws S sets of them.
        :returns: the latent code z.
        """
        return self._model(x, y, indices, beta, num_points, scaled=True)

    def local_model(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """p(z) p_θ(x | z) of exactly the points ``x``: plate ``"data"`` of size B with no
        subsampling and no N/B scale, so its log-density is the log-joint of these points.

        This is the model that MCMC takes (``NUTS(vae.local_model)``; Pyro's HMC refuses
        subsampled plates); see :func:`pyro_vae.infer.mcmc.nuts_posterior`.
        """
        return self._model(x, y, None, 1.0, None, scaled=False)

    def check_call(self, x: Any, y: Any = None, indices: Any = None,
                   beta: Any = 1.0) -> None:
        """Validate the arguments of :meth:`model` / :meth:`guide`, raising the library's
        one-line errors: x a floating tensor of the model's shape and dtype, finite and not
        empty; y integer class labels in range; indices integers in [0, num_data); β finite
        and ≥ 0. The checks of values (which read the tensors) are skipped while ``torch.jit``
        traces and inside :meth:`trusted_inputs`, where the trainer feeds data it validated
        once."""
        tracing = torch.jit.is_tracing() or self._trusted
        if x is not None:
            if not isinstance(x, torch.Tensor):
                raise DataError(f"x must be a torch.Tensor, got {type(x).__name__}; convert it "
                                "with torch.as_tensor(x, dtype=torch.float32)")
            if not x.is_floating_point():
                raise DataError(f"x must be a floating-point tensor, got {x.dtype}; convert it "
                                "with x.float()")
            weight = next(self.decoder.parameters(), None)
            if weight is not None and x.dtype != weight.dtype:
                raise DataError(f"x is {x.dtype} but the model's weights are {weight.dtype}; "
                                f"convert x with x.to({weight.dtype}) (or the model with "
                                ".to(dtype))")
            if weight is not None and x.device != weight.device:
                raise DataError(f"x is on {x.device} but the model is on {weight.device}; move "
                                f"it with x.to('{weight.device}')")
            self.check_shape(x)
            if x.shape[0] == 0:
                raise DataError("x is an empty batch; pass at least one data point")
            if not tracing and not bool(torch.isfinite(x).all()):
                raise DataError("x contains NaN or infinite values; remove or impute them")
        if y is not None and self.conditional:
            if not isinstance(y, torch.Tensor):
                raise DataError(f"y must be a torch.Tensor of class labels, got "
                                f"{type(y).__name__}; convert it with torch.as_tensor(y)")
            if not y.is_floating_point() or y.dim() == 1:
                if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
                    raise DataError(f"labels y must be integers in [0, {self.num_classes}), got "
                                    f"{y.dtype}; convert them with y.long()")
                if not tracing and y.numel() and (int(y.min()) < 0
                                                  or int(y.max()) >= self.num_classes):
                    raise DataError(f"labels y must lie in [0, {self.num_classes}), got "
                                    f"{int(y.min())}..{int(y.max())}; renumber the classes 0..C-1")
        if indices is not None:
            if not isinstance(indices, torch.Tensor) or indices.is_floating_point() \
                    or indices.dtype == torch.bool or indices.dim() != 1:
                raise DataError("indices must be a 1-D integer tensor of positions in the data "
                                "set (the plate's subsample); e.g. torch.arange(B)")
            if x is not None and indices.shape[0] != x.shape[0]:
                raise DataError(f"{indices.shape[0]} indices for a batch of {x.shape[0]} "
                                "points; give one index per point")
            if not tracing and self.num_data is not None and indices.numel() and (
                    int(indices.min()) < 0 or int(indices.max()) >= self.num_data):
                raise DataError(f"indices must lie in [0, num_data = {self.num_data}), got "
                                f"{int(indices.min())}..{int(indices.max())}; "
                                "index the data set's own rows")
        if not tracing:
            value = beta if not isinstance(beta, torch.Tensor) else (
                float(beta) if beta.numel() == 1 else None)
            if value is None or isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not (0 <= value < math.inf):
                raise ConfigError(f"beta must be a finite number ≥ 0 (the KL weight), got "
                                  f"{beta!r}; use 1 for the ELBO, 0 to drop the KL term")

    _trusted = False

    @contextlib.contextmanager
    def trusted_inputs(self):
        """Skip :meth:`check_call`'s value checks inside (types, shapes and dtypes are still
        checked): for a training loop whose data, indices and β were validated once."""
        previous, self._trusted = self._trusted, True
        try:
            yield
        finally:
            self._trusted = previous

    def _model(self, x, y, indices, beta, num_points, scaled: bool) -> torch.Tensor:
        self.check_call(x, y, indices, beta)
        register_module(DECODER_MODULE, self.decoder)
        batch = self.batch_size(x, y, num_points)
        device = x.device if x is not None else self.device
        with self.data_plate(batch, indices, observed=x is not None, scaled=scaled):
            with kl_scale(beta):
                z = pyro.sample(LATENT_SITE, self.prior(batch, device))
            pyro.sample(OBS_SITE, self.observation_distribution(z, y), obs=x)
        return z

    def guide(
        self,
        x: torch.Tensor,
        y: torch.Tensor | None = None,
        indices: torch.Tensor | None = None,
        beta: float | torch.Tensor = 1.0,
        num_points: int | None = None,
    ) -> torch.Tensor:
        """q_φ(z | x [, y]): N(μ_φ(x), diag σ²_φ(x)) from the encoder, or the richer family
        built on it.

        ``num_points`` is accepted (and ignored) so that model and guide take the same
        arguments, as ``Predictive`` and ``SVI`` call both with the same ones.
        """
        if x is None:
            raise DataError("the guide q(z|x) needs data x; to generate, run the model alone "
                            "(Predictive(vae.model, num_samples=S)(None, num_points=B))")
        self.check_call(x, y, indices, beta)
        register_module(ENCODER_MODULE, self.encoder)
        if not self.family.is_diagonal:
            register_module(GUIDE_FAMILY_MODULE, self.family)
        batch = self.batch_size(x, y)
        with self.data_plate(batch, indices, observed=True):
            q = self.posterior(x, y)
            with kl_scale(beta):
                return pyro.sample(LATENT_SITE, q)

    # ------------------------------------------------------------------ conveniences
    def posterior(self, x: torch.Tensor, y: torch.Tensor | None = None
                  ) -> dist.TorchDistribution:
        """q_φ(z|x) as a distribution with batch shape (B,) and event shape (L,)."""
        loc, scale = self.encode(x, y)
        return self.family(loc, scale, x, self._onehot(y, x.shape[0]))

    def posterior_mean(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The encoder's μ_φ(x), shape (B, L) (the mean of q for the diagonal Gaussian)."""
        return self.encode(x, y)[0]

    def reconstruction_code(self, x: torch.Tensor, y: torch.Tensor | None = None
                            ) -> torch.Tensor:
        """The code decoded for a reconstruction of x: μ_φ(x)."""
        return self.encode(x, y)[0]

    def prior(self, batch: int, device: torch.device | str = "cpu") -> dist.Normal:
        """p(z) = N(0, I) with batch shape (batch,)."""
        return dist.Normal(torch.zeros(batch, self.latent_dim, device=device), 1.0).to_event(1)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def extra_repr(self) -> str:
        return (f"latent_dim={self.latent_dim}, event_shape={self.event_shape}, "
                f"likelihood={self.likelihood.name!r}, guide={self.family.kind!r}, "
                f"num_data={self.num_data}, "
                f"num_classes={self.num_classes}")


@contextlib.contextmanager
def frozen(*modules: nn.Module):
    """Eval mode, and every trainable parameter of ``modules`` with ``requires_grad`` off (so
    that gradients flow to the latent code only, as MCMC and AIS need); both restored after."""
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    modes = [[(sub, sub.training) for sub in m.modules()] for m in modules]
    for m in modules:
        m.eval()
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)
        for saved in modes:
            for sub, mode in saved:
                sub.training = mode


@contextlib.contextmanager
def evaluating(*modules: nn.Module):
    """Eval mode (batch norm uses running statistics) and no autograd for ``modules``; each
    module's train/eval mode is restored afterwards."""
    mods = [m for m in modules if isinstance(m, nn.Module)]
    modes = [[(sub, sub.training) for sub in m.modules()] for m in mods]
    for m in mods:
        m.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for saved in modes:
            for sub, mode in saved:
                sub.training = mode
