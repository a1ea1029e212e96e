"""The ELBO estimators the trainer offers, and a fix for Pyro 1.9's ``JitTraceMeanField_ELBO``.

=============  =========================================================================
``trace``      :class:`pyro.infer.Trace_ELBO`: Monte Carlo estimate of
               ``E_q[log p(x, z) - log q(z|x)]``, the KL term included in the sample average.
``meanfield``  :class:`pyro.infer.TraceMeanField_ELBO`: ``E_q[log p(x|z)] - KL(q(z|x) ‖ p(z))``
               with the KL in closed form. Correct here because the guide is mean-field
               (one site ``z`` whose dependence on the model is only through ``x``) and
               the Gaussian-Gaussian KL is registered in ``torch.distributions``.
=============  =========================================================================

Both are unbiased for the same ELBO (tested in ``tests/infer/test_elbo.py``); the analytic KL
removes the variance of the KL part. ``num_particles > 1`` averages that many samples of z,
vectorized over a particle plate (``vectorize_particles=True``).

With ``jit=True`` the JIT-compiled variants are used, with two changes to Pyro 1.9.2's classes
that leave the compiled graph (Pyro's own ELBO, traced by :func:`pyro.ops.jit.trace`) as it is:

* Pyro's ``JitTraceMeanField_ELBO`` looks up its cache under ``_loss_and_surrogate_loss`` but
  stores it under ``_differentiable_loss``, so it recompiles on every step;
  :class:`FastJitTraceMeanField_ELBO` checks the attribute it actually stores.
* Every call of a compiled function (:class:`pyro.ops.jit.CompiledFunction`) looks each param up
  with ``pyro.param`` through the effect-handler stack and runs the graph under
  ``poutine.block`` + ``poutine.trace(param_only=True)``; on a small network that plumbing costs
  about 0.3 ms, a fifth of a training step. :class:`DirectCall` hands the param store's tensors
  straight to the compiled graph instead (see there for when it falls back).
"""

from __future__ import annotations

import weakref
from typing import Any

import pyro
import pyro.ops.jit
from pyro.infer import ELBO, JitTrace_ELBO, JitTraceMeanField_ELBO, Trace_ELBO, TraceMeanField_ELBO
from pyro.poutine.runtime import am_i_wrapped

from pyro_vae.errors import ConfigError


class DirectCall:
    """Calls the graphs of a :class:`pyro.ops.jit.CompiledFunction` without its per-call plumbing.

    A compiled graph takes the unconstrained value of every param it read while it was traced,
    then the positional arguments: ``graph(*params, *args)``. ``CompiledFunction.__call__``
    fetches those params with ``pyro.param`` (one trip through the handler stack and one
    constraint transform each) and then traces the call for params created after compilation,
    which a traced graph, running no Python, never creates. This wrapper reads the same
    tensors from the param store (:meth:`~pyro.params.param_store.ParamStoreDict.named_parameters`
    yields the unconstrained ones) and calls the graph: the same numbers and gradients.

    The call goes through the wrapped ``CompiledFunction`` itself when it has to: the first
    call for a signature (which compiles), a call under any effect handler (which must see the
    ``pyro.param`` statements), unhashable keyword arguments, or a param the store no longer
    holds.
    """

    def __init__(self, function: pyro.ops.jit.CompiledFunction) -> None:
        self.function = function

    @property
    def compiled(self) -> dict:
        """The compiled graphs by call signature (``CompiledFunction.compiled``)."""
        return self.function.compiled

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        graph = None
        if not am_i_wrapped():
            try:  # CompiledFunction's cache key for hashable keyword arguments
                graph = self.function.compiled.get((len(args), tuple(sorted(kwargs.items()))))
            except TypeError:
                graph = None
        if graph is None:
            return self.function(*args, **kwargs)
        store = dict(pyro.get_param_store().named_parameters())
        try:
            params = [store[name] for name in self.function._param_names]
        except KeyError:
            return self.function(*args, **kwargs)
        return graph(*params, *args)


class FastJitTrace_ELBO(JitTrace_ELBO):  # noqa: N801 (Pyro's naming)
    """``JitTrace_ELBO`` whose compiled loss is called through :class:`DirectCall`, and whose
    :meth:`differentiable_loss` has the ELBO's gradient.

    Pyro 1.9.2's ``JitTrace_ELBO.differentiable_loss`` returns
    ``loss + (surrogate − surrogate.detach())`` where its compiled ``loss`` sums the sites'
    log-densities *with* their gradients (``Trace_ELBO`` reads them through ``torch_item``, a
    number): for a reparameterized model the result's gradient is twice the ELBO's.
    (``JitTrace_ELBO.loss_and_grads``, what ``SVI`` calls, backpropagates the surrogate only
    and is right.) Here the value is detached: same value, the surrogate's gradient.
    """

    def loss_and_surrogate_loss(self, model, guide, *args, **kwargs):
        result = super().loss_and_surrogate_loss(model, guide, *args, **kwargs)
        if not isinstance(self._loss_and_surrogate_loss, DirectCall):
            self._loss_and_surrogate_loss = DirectCall(self._loss_and_surrogate_loss)
        return result

    def differentiable_loss(self, model, guide, *args, **kwargs):
        loss, surrogate_loss = self.loss_and_surrogate_loss(model, guide, *args, **kwargs)
        return loss.detach() + (surrogate_loss - surrogate_loss.detach())


class FastJitTraceMeanField_ELBO(JitTraceMeanField_ELBO):  # noqa: N801 (Pyro's naming)
    """``JitTraceMeanField_ELBO`` that compiles once per signature instead of once per step,
    and is called through :class:`DirectCall`."""

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

            self._differentiable_loss = DirectCall(differentiable_loss)
        return self._differentiable_loss(*args, **kwargs)


def particle_options(num_particles: int) -> dict:
    """Options every pyro-vae ELBO shares: particles vectorized over a particle plate, and
    ``max_plate_nesting=1`` (the only plate of a pyro-vae model is ``"data"``)."""
    return dict(num_particles=num_particles, vectorize_particles=num_particles > 1,
                max_plate_nesting=1)


#: name → (eager class, JIT class): the ELBOs :func:`make_elbo` and ``--elbo`` offer.
ELBO_REGISTRY: dict[str, tuple[type[ELBO], type[ELBO]]] = {
    "trace": (Trace_ELBO, FastJitTrace_ELBO),
    "meanfield": (TraceMeanField_ELBO, FastJitTraceMeanField_ELBO),
}
ELBOS = tuple(ELBO_REGISTRY)


def make_elbo(kind: str = "trace", num_particles: int = 1, jit: bool = False) -> ELBO:
    """Build the ELBO named ``kind`` (:data:`ELBO_REGISTRY`), JIT-compiled or not."""
    try:
        eager, compiled = ELBO_REGISTRY[kind]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown --elbo {kind!r}; choose one of: {', '.join(ELBOS)}"
                          ) from None
    kwargs = particle_options(num_particles)
    if jit:
        kwargs["ignore_jit_warnings"] = True
    return (compiled if jit else eager)(**kwargs)
