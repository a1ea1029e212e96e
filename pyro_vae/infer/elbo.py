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
  :class:`FastJitTraceMeanField_ELBO` runs Pyro's method once and keeps the function it built
  (neither class writes an attribute of Pyro's).
* Every call of a compiled function (:class:`pyro.ops.jit.CompiledFunction`) looks each param up
  with ``pyro.param`` through the effect-handler stack and runs the graph under
  ``poutine.block`` + ``poutine.trace(param_only=True)``; on a small network that plumbing costs
  about 0.3 ms, a fifth of a training step. :class:`DirectCall` hands the param store's tensors
  straight to the compiled graph instead (see there for when it falls back).
"""

from __future__ import annotations

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


class _DirectlyCalled:
    """Mixin of the two JIT ELBOs: the first call goes through Pyro's own method, which compiles
    the loss and keeps it (in Pyro's own attribute, written by Pyro); later calls go to that
    compiled function through :class:`DirectCall`, held in this class's own attribute."""

    _direct: DirectCall | None = None
    #: the attribute in which Pyro's class keeps its compiled function
    _compiled_attribute = ""

    def _call_compiled(self, first: Any, model, guide, args, kwargs):
        compiled = getattr(self, self._compiled_attribute, None)
        if self._direct is None or compiled is None or self._direct.function is not compiled:
            result = first(model, guide, *args, **kwargs)
            self._direct = DirectCall(getattr(self, self._compiled_attribute))
            return result
        kwargs["_pyro_model_id"] = id(model)  # as Pyro's method passes them
        kwargs["_pyro_guide_id"] = id(guide)
        return self._direct(*args, **kwargs)


class FastJitTrace_ELBO(_DirectlyCalled, JitTrace_ELBO):  # noqa: N801 (Pyro's naming)
    """``JitTrace_ELBO`` whose compiled loss is called through :class:`DirectCall`, and whose
    :meth:`differentiable_loss` has the ELBO's gradient.

    Pyro 1.9.2's ``JitTrace_ELBO.differentiable_loss`` returns
    ``loss + (surrogate − surrogate.detach())`` where its compiled ``loss`` sums the sites'
    log-densities *with* their gradients (``Trace_ELBO`` reads them through ``torch_item``, a
    number): for a reparameterized model the result's gradient is twice the ELBO's.
    (``JitTrace_ELBO.loss_and_grads``, what ``SVI`` calls, backpropagates the surrogate only
    and is right.) Here the value is detached: same value, the surrogate's gradient.
    """

    _compiled_attribute = "_loss_and_surrogate_loss"

    def loss_and_surrogate_loss(self, model, guide, *args, **kwargs):
        return self._call_compiled(super().loss_and_surrogate_loss, model, guide, args, kwargs)

    def differentiable_loss(self, model, guide, *args, **kwargs):
        loss, surrogate_loss = self.loss_and_surrogate_loss(model, guide, *args, **kwargs)
        return loss.detach() + (surrogate_loss - surrogate_loss.detach())


class FastJitTraceMeanField_ELBO(_DirectlyCalled, JitTraceMeanField_ELBO):  # noqa: N801
    """``JitTraceMeanField_ELBO`` that compiles once per signature instead of once per step,
    and is called through :class:`DirectCall`: Pyro 1.9.2's method looks its compiled function
    up under ``_loss_and_surrogate_loss`` but stores it under ``_differentiable_loss``, so it
    compiles again on every call; here Pyro's method runs once and its function is kept."""

    _compiled_attribute = "_differentiable_loss"

    def differentiable_loss(self, model, guide, *args, **kwargs):
        return self._call_compiled(super().differentiable_loss, model, guide, args, kwargs)


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
