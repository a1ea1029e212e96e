"""The exact posterior p_θ(z | x) of a trained decoder by NUTS, next to the encoder's q(z | x).

``vae.local_model(x)`` is the model of exactly the points x — plate ``"data"`` of size B, no
subsampling, no N/B scale — whose log-density is log p(z) + log p_θ(x | z); Pyro's HMC/NUTS
refuse subsampled plates, so this view, not ``vae.model``, is the one MCMC takes. The decoder's
weights are held fixed (``requires_grad`` off) while NUTS runs: only z moves.

Reference: Hoffman & Gelman (2014), "The No-U-Turn Sampler".
"""

from __future__ import annotations

from typing import Any

import torch
from pyro.infer import MCMC, NUTS

from pyro_vae.errors import check_count
from pyro_vae.models.discrete_vae import require_gaussian
from pyro_vae.models.vae import frozen
from pyro_vae.sites import LATENT_SITE


def nuts_posterior(vae: Any, x: torch.Tensor, y: torch.Tensor | None = None,
                   num_samples: int = 500, warmup_steps: int = 300, seed: int = 0,
                   progress: bool = False, **nuts_options: Any) -> torch.Tensor:
    """Draws of z ~ p_θ(z | x) for every point of ``x`` jointly, shape ``(S, B, L)``.

    The global random state is left as it was (the chain runs on a forked generator seeded
    with ``seed``).

    :param nuts_options: passed to :class:`pyro.infer.NUTS` (e.g. ``target_accept_prob``).
    """
    require_gaussian(vae, "NUTS on z")
    check_count("num_samples", num_samples)
    check_count("warmup_steps", warmup_steps)
    devices = [x.device] if x.device.type == "cuda" else []
    with frozen(vae), torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        mcmc = MCMC(NUTS(vae.local_model, **nuts_options), num_samples=num_samples,
                    warmup_steps=warmup_steps, disable_progbar=not progress)
        mcmc.run(x, y)
    return mcmc.get_samples()[LATENT_SITE].detach()
