"""The ELBO estimators the trainer offers, and a fix for Pyro 1.9's ``JitTraceMeanField_ELBO``.

=============  =========================================================================
``trace``      :class:`pyro.infer.Trace_ELBO`: Monte Carlo estimate of
               ``E_q[log p(x, z) - log q(z|x)]``, the KL term included in the sample average.
``meanfield``  :class:`pyro.infer.TraceMeanField_ELBO`: ``E_q[log p(x|z)] - KL(q(z|x) ‖ p(z))``
               with the KL in closed form. Correct here because the guide is mean-field
               (one site ``z`` whose dependence on the model is only through ``x``) and
               the Gaussian-Gaussian KL is registered in ``torch.distributions``.
=============  =========================================================================

Both are unbiased for the same ELBO (tested in ``tests/test_elbo.py``); the analytic KL removes
the variance of the KL part. ``num_particles > 1`` averages that many samples of z, vectorized
over a particle plate (``vectorize_particles=True``).

With ``jit=True`` the JIT-compiled variants are used. Pyro 1.9.2's ``JitTraceMeanField_ELBO``
looks up its cache under ``_loss_and_surrogate_loss`` but stores it under
``_differentiable_loss``, so it recompiles on every step; :class:`FixedJitTraceMeanField_ELBO`
checks the attribute it actually stores.
"""

from __future__ import annotations

import weakref

import pyro
import pyro.ops.jit
from pyro.infer import ELBO, JitTrace_ELBO, JitTraceMeanField_ELBO, Trace_ELBO, TraceMeanField_ELBO

from pyro_vae.errors import ConfigError


class FixedJitTraceMeanField_ELBO(JitTraceMeanField_ELBO):  # noqa: N801 (Pyro's naming)
    """``JitTraceMeanField_ELBO`` that compiles once per signature instead of once per step."""

    def differentiable_loss(self, model, guide, *args, **kwargs):
        kwargs["_pyro_model_id"] = id(model)
        kwargs["_pyro_guide_id"] = id(guide)
        if getattr(self, "_differentiable_loss", None) is None:
            weakself = weakref.ref(self)

            @pyro.ops.jit.trace(
                ignore_warnings=self.ignore_jit_warnings, jit_options=self.jit_options
            )
            def differentiable_loss(*args, **kwargs):
                kwargs.pop("_pyro_model_id")
                kwargs.pop("_pyro_guide_id")
                self = weakself()
                loss = 0.0
                for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
                    _, loss_particle = self._differentiable_loss_particle(
                        model_trace, guide_trace
                    )
                    loss = loss + loss_particle / self.num_particles
                return loss

            self._differentiable_loss = differentiable_loss
        return self._differentiable_loss(*args, **kwargs)


def particle_options(num_particles: int) -> dict:
    """Options every pyro-vae ELBO shares: particles vectorized over a particle plate, and
    ``max_plate_nesting=1`` (the only plate of a pyro-vae model is ``"data"``)."""
    return dict(num_particles=num_particles, vectorize_particles=num_particles > 1,
                max_plate_nesting=1)


def make_elbo(kind: str = "trace", num_particles: int = 1, jit: bool = False) -> ELBO:
    """Build the ELBO named ``kind`` (``"trace"`` or ``"meanfield"``)."""
    kwargs = particle_options(num_particles)
    if kind == "trace":
        cls = JitTrace_ELBO if jit else Trace_ELBO
    elif kind == "meanfield":
        cls = FixedJitTraceMeanField_ELBO if jit else TraceMeanField_ELBO
    else:
        raise ConfigError(f"unknown --elbo {kind!r}; choose trace or meanfield")
    if jit:
        kwargs["ignore_jit_warnings"] = True
    return cls(**kwargs)
