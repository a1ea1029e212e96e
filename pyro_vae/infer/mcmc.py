"""The exact posterior p_θ(z | x) of a trained model by NUTS, next to the guide's q(z | x) — for any
model with a data plate and continuous local latents (:mod:`pyro_vae.infer.problem`).

NUTS runs on the joint of *all* local latent sites of the batch in unconstrained space: the
potential is −Σ_n log p(x_n, T(u_n)) − log abs(det ∂T/∂u_n) (:meth:`Problem.log_joint`: each
site's unscaled log-density, so neither a plate's N/B subsampling scale nor a KL weight enters),
handed to :class:`pyro.infer.NUTS` as ``potential_fn``; the draws are mapped back to each site's
support. The model's and the guide's parameters are held fixed (``requires_grad`` off, eval
mode) while NUTS runs: only the latents move.

Reference: Hoffman & Gelman (2014), "The No-U-Turn Sampler".
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from pyro.infer import MCMC, NUTS

from pyro_vae.errors import ConfigError, check_count
from pyro_vae.infer.ais import _check_data, _labels, frozen_program
from pyro_vae.infer.problem import ModelError, describe, program_of

#: the name of the one unconstrained parameter NUTS moves: all latents of the batch, (B, D)
_LATENTS = "latents"


def nuts_samples(vae: Any, x: torch.Tensor, y: torch.Tensor | None = None,
                 num_samples: int = 500, warmup_steps: int = 300, seed: int = 0,
                 progress: bool = False, guide: Callable[..., Any] | None = None,
                 init: str = "guide", **nuts_options: Any) -> dict[str, torch.Tensor]:
    """Draws from the exact posterior p(z | x) of every local latent site of ``vae``'s model
    (any object with ``.model`` and ``.guide``) for every point of ``x`` jointly: a dict site
    name → ``(S, *value_shape)``, the value shape being the site's for the batch (e.g.
    ``(S, B, L)`` for a site of event shape ``(L,)``), in the site's support.

    The chain starts at a draw of the guide (``guide``, default ``vae.guide``; ``init="guide"``:
    a guide that cannot be drawn from per point, such as ``AutoDiagonalNormal``'s joint vector,
    is refused in one line) or of the model's prior (``init="prior"``: the guide is not used)
    and adapts its step size and a diagonal mass matrix during the ``warmup_steps``. The
    global random state is left as it was (the chain runs on a forked generator seeded with
    ``seed``).

    :param nuts_options: passed to :class:`pyro.infer.NUTS` (e.g. ``target_accept_prob``,
        ``max_tree_depth``).
    :raises ModelError: for a discrete latent, a latent outside the data plate (a global one),
        or a model without a plate over the points of ``x``.
    """
    check_count("num_samples", num_samples)
    check_count("warmup_steps", warmup_steps)
    if init not in ("guide", "prior"):
        raise ConfigError(f"unknown NUTS init {init!r}; use guide or prior")
    _check_data(x)
    y = _labels(vae, y)
    model, own_guide = program_of(vae, guide)
    problem = describe(model, None, x, y)  # the model alone: NUTS needs no guide
    problem.require_continuous("NUTS")
    if problem.dim == 0:
        raise ModelError("NUTS needs latent sites inside the data plate; the model has none")
    q = None
    if init == "guide":
        try:  # the guide's draws need it to sample every latent per point
            problem = describe(model, own_guide, x, y)
        except ModelError as err:
            raise ModelError(f"{err}; or start NUTS from the prior: init='prior'") from err
        q = own_guide
    devices = [x.device] if x.device.type == "cuda" else []
    with frozen_program(vae, problem, q), torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        with torch.no_grad():
            draws = problem.guide_draws(x, y, 1) if init == "guide" \
                else problem.prior_draws(x, y, 1)
            start = problem.unconstrain(draws, 1)[0].detach()

        def potential(params: dict[str, torch.Tensor]) -> torch.Tensor:
            return -problem.log_joint(x, y, params[_LATENTS].unsqueeze(0)).sum()

        kernel = NUTS(potential_fn=potential, **nuts_options)
        mcmc = MCMC(kernel, num_samples=num_samples, warmup_steps=warmup_steps,
                    initial_params={_LATENTS: start}, disable_progbar=not progress)
        mcmc.run()
        u = mcmc.get_samples()[_LATENTS].detach()  # (S, B, D)
        with torch.no_grad():
            values, _ = problem.constrain(u)
    return {s.name: values[s.name].reshape(num_samples, *s.value_shape)
            for s in problem.latents}


def nuts_posterior(vae: Any, x: torch.Tensor, y: torch.Tensor | None = None,
                   num_samples: int = 500, warmup_steps: int = 300, seed: int = 0,
                   progress: bool = False, guide: Callable[..., Any] | None = None,
                   **nuts_options: Any) -> torch.Tensor | dict[str, torch.Tensor]:
    """Draws of z ~ p_θ(z | x) for every point of ``x`` jointly (:func:`nuts_samples`).

    For a model with one latent site (the library's VAE: ``"z"``), the draws of that site,
    shape ``(S, B, L)`` as before; for a model with several, the dict of
    :func:`nuts_samples` (site name → ``(S, *value_shape)``) — use :func:`nuts_samples` to
    get the dict always.
    """
    out = nuts_samples(vae, x, y, num_samples, warmup_steps, seed, progress, guide,
                       **nuts_options)
    return next(iter(out.values())) if len(out) == 1 else out
