"""The compiled whole step (:mod:`pyro_vae.infer.compiled`) against the eager ELBO it traces:
same draws, same loss and gradients; Adam's update against ``torch.optim.Adam``; non-finite
steps change nothing; the trainer's automatic choice and fallbacks."""

from __future__ import annotations

import warnings

import pyro
import pyro.infer.trace_elbo
import pyro.infer.util
import pytest
import torch
from torch import nn

from pyro_vae import Config, Trainer
from pyro_vae.errors import ConfigError
from pyro_vae.infer.compiled import (
    AdamUpdate,
    CompiledStep,
    NotCompilableError,
    relu_backward_as_sign,
    traceable_pyro,
)
from pyro_vae.infer.elbo import make_elbo
from pyro_vae.infer.importance import ImportanceWeightedELBO
from pyro_vae.infer.trainer import COMPILE_MIN_STEPS, trainable_params
from tests.common import make_batch, small_vae


def _setup(elbo, obs_scale=None):
    """A small VAE (learned σ unless ``obs_scale``), its params, a loss function of
    (x, idx, β) and a batch."""
    vae = small_vae(num_data=64, obs_scale=obs_scale)
    x, idx = make_batch(8), torch.arange(8)
    params = list(trainable_params(vae.model, vae.guide, x).values())

    def loss_fn(x, idx, beta):
        with vae.trusted_inputs():  # as the trainer runs it: no value checks of the batch
            return elbo.differentiable_loss(vae.model, vae.guide, x, None, idx, beta)

    return vae, params, loss_fn, (x, idx, torch.tensor(0.7))


def _eager(loss_fn, params, args, seed):
    pyro.set_rng_seed(seed)
    with pyro.validation_enabled(False):
        loss = loss_fn(*args)
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return loss.detach(), [torch.zeros_like(p) if g is None else g for p, g in
                           zip(params, grads, strict=True)]


def _assert_matches_eager(step, loss_fn, params, args, seeds, grad_atol=1e-6, rtol=1e-5):
    """``step``'s loss, flag and gradients against the eager loss under each seed."""
    for seed in seeds:
        want_loss, want_grads = _eager(loss_fn, params, args, seed)
        pyro.set_rng_seed(seed)
        loss, finite, grads = step(params, *args)
        assert bool(finite)
        torch.testing.assert_close(loss, want_loss, rtol=rtol / 10, atol=1e-5)
        for g, w in zip(grads, want_grads, strict=True):
            torch.testing.assert_close(g, w, rtol=rtol, atol=grad_atol)


ELBOS = {
    "trace": lambda: make_elbo("trace"),
    "meanfield": lambda: make_elbo("meanfield"),
    "iwae-dreg": lambda: ImportanceWeightedELBO("iwae", 4, estimator="dreg"),
    "piwae": lambda: ImportanceWeightedELBO("piwae", 3, num_groups=2),
}


@pytest.mark.parametrize("name", list(ELBOS))
def test_traced_step_equals_the_eager_elbo_on_the_same_draws(name):
    """The traced graph run op by op ('aten'): Pyro's ELBO (or the IW ELBO) as the eager code
    computes it — loss and every gradient, for three seeds, from one trace."""
    vae, params, loss_fn, args = _setup(ELBOS[name]())
    step = CompiledStep(loss_fn, params, modules=[vae], backend="aten")
    _assert_matches_eager(step, loss_fn, params, args, seeds=(1, 2, 3))
    assert len(step.graphs) == 1


def test_tracing_leaves_params_random_state_and_pyro_helpers_as_they_were():
    _vae, params, loss_fn, args = _setup(make_elbo("trace"))
    before = [p.detach().clone() for p in params]
    item, warn = pyro.infer.trace_elbo.torch_item, pyro.infer.trace_elbo.warn_if_nan
    pyro.set_rng_seed(9)
    state = torch.get_rng_state()
    CompiledStep(loss_fn, params, backend="aten").trace(params, args)
    assert torch.equal(torch.get_rng_state(), state)
    for p, b in zip(params, before, strict=True):
        assert torch.equal(p.detach(), b)
    assert pyro.infer.trace_elbo.torch_item is item is pyro.infer.util.torch_item
    assert pyro.infer.trace_elbo.warn_if_nan is warn
    with traceable_pyro():
        t = torch.ones((), requires_grad=True) * 2
        value = pyro.infer.trace_elbo.torch_item(t)
        assert isinstance(value, torch.Tensor) and not value.requires_grad and value == 2


def test_adam_folded_into_the_step_equals_torch_adam():
    """Three steps: the program's in-place Adam against torch's fused Adam on the same
    gradients (same draws), including the learning rate changed between steps."""
    elbo = make_elbo("trace")
    vae, params, loss_fn, args = _setup(elbo)
    twin = [p.detach().clone().requires_grad_() for p in params]
    opt = torch.optim.Adam(params, lr=1e-2)
    ref = torch.optim.Adam(twin, lr=1e-2)
    for p, t in zip(params, twin, strict=True):  # one plain step creates the state
        p.grad = t.grad = torch.ones_like(p)
    opt.step()
    ref.step()
    adam = AdamUpdate.of(opt)
    assert adam is not None
    step = CompiledStep(loss_fn, params, modules=[vae], adam=adam, backend="aten")
    for seed, lr in ((1, 1e-2), (2, 3e-3), (3, 3e-3)):
        for group in (*opt.param_groups, *ref.param_groups):
            group["lr"] = lr
        _, grads = _eager(loss_fn, params, args, seed)  # at the current params
        for t, g in zip(twin, grads, strict=True):
            t.grad = g
        ref.step()
        pyro.set_rng_seed(seed)
        _, finite, none = step(params, *args, state=adam.state(opt, params))
        assert bool(finite) and none == []
        for p, t in zip(params, twin, strict=True):
            torch.testing.assert_close(p.detach(), t.detach(), rtol=1e-5, atol=1e-7)
            for key in ("exp_avg", "exp_avg_sq", "step"):
                torch.testing.assert_close(opt.state[p][key], ref.state[t][key])


def test_a_non_finite_step_changes_nothing():
    _vae, params, loss_fn, args = _setup(make_elbo("trace"))
    opt = torch.optim.Adam(params, lr=1e-2)
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    adam = AdamUpdate.of(opt)
    step = CompiledStep(loss_fn, params, adam=adam, backend="aten")
    step(params, *args, state=adam.state(opt, params))  # trace on finite data
    x_bad = args[0].clone()
    x_bad[0, 0] = float("nan")
    state = adam.state(opt, params)
    before = [t.clone() for t in (*params, *state[:-1])]
    _, finite, _ = step(params, x_bad, *args[1:], state=state)
    assert not bool(finite)
    for t, b in zip((*params, *state[:-1]), before, strict=True):
        assert torch.equal(t.detach(), b)


def test_relu_backward_rewrite_is_exact():
    from torch.fx.experimental.proxy_tensor import make_fx

    w = torch.randn(5, 5, requires_grad=True)

    def f(w, a):
        out = torch.relu(a @ w).square().sum()
        return torch.autograd.grad(out, [w])[0]

    a = torch.randn(7, 5)
    graph = make_fx(f)(w, a)
    assert relu_backward_as_sign(graph) == 1
    assert not any(n.target is torch.ops.aten.threshold_backward.default
                   for n in graph.graph.nodes)
    torch.testing.assert_close(graph(w, a), f(w, a), rtol=0, atol=0)


def test_a_param_missing_from_the_inputs_is_refused():
    _vae, params, loss_fn, args = _setup(make_elbo("trace"))
    with pytest.raises(NotCompilableError, match="not among the params"):
        CompiledStep(loss_fn, params[1:], backend="aten").trace(params[1:], args)


def test_a_step_that_updates_buffers_is_refused_one_that_reads_them_is_not():
    norm, weight = nn.BatchNorm1d(3, affine=False), nn.Parameter(torch.ones(3))
    x = torch.randn(8, 3)
    before = norm.running_mean.clone()
    with pytest.raises(NotCompilableError, match="buffers"):
        CompiledStep(lambda x: (norm(x) * weight).sum(), [weight], modules=[norm],
                     backend="aten").trace([weight], [x])
    assert torch.equal(norm.running_mean, before)  # restored
    norm.eval()  # running statistics only read
    step = CompiledStep(lambda x: (norm(x) * weight).sum(), [weight], modules=[norm],
                        backend="aten")
    loss, _, grads = step([weight], x)
    torch.testing.assert_close(loss, (norm(x) * weight).sum().detach())
    torch.testing.assert_close(grads[0], norm(x).sum(0).detach())


def test_adam_update_only_for_plain_adam():
    p = [nn.Parameter(torch.zeros(2))]
    assert AdamUpdate.of(torch.optim.Adam(p)) == AdamUpdate(0.9, 0.999, 1e-8)
    assert AdamUpdate.of(torch.optim.Adam(p, weight_decay=0.1)) is None
    assert AdamUpdate.of(torch.optim.Adam(p, amsgrad=True)) is None
    assert AdamUpdate.of(torch.optim.SGD(p, lr=0.1)) is None


# --------------------------------------------------------------------------- the trainer
def _data(n=96):
    from pyro_vae.data import DataSet

    x = torch.rand(n + 32, 6)
    return DataSet("file", x[:n], x[n:], None, None, "vector")


def test_trainer_compiled_run_follows_the_uncompiled_one():
    """Same seed, two epochs (the last, smaller batch of each epoch on the uncompiled path):
    the compiled run's losses and test ELBO follow the JIT run's to float rounding. This is the
    suite's TorchInductor test (the traced graph itself is checked op by op, 'aten', above): a
    lowered program whose loss or gradient differed from the eager one would leave the JIT
    run's trajectory within the first steps. One compile only: a cold one costs 15–25 s."""
    from torch._dynamo.utils import counters

    counters.clear()
    runs = {}
    for compile_ in (False, True):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        vae = small_vae(num_data=96)
        trainer = Trainer(vae, _data(), Config(dataset="file", batch_size=40, epochs=2,
                                               compile=compile_, lr=1e-2))
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message="--compile")  # no fallback
            trainer.fit()
        assert trainer.step_path == ("compiled" if compile_ else "jit")
        runs[compile_] = trainer.history
    for a, b in zip(runs[False], runs[True], strict=True):
        assert b["step_path"] == ("compiled")
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        assert a["test_elbo"] == pytest.approx(b["test_elbo"], rel=1e-4)
    # the program went through Inductor's on-disk cache (found or stored), not around it: a
    # bypassed cache recompiles the same step in every process
    cache = counters["inductor"]
    assert cache["fxgraph_cache_bypass"] == 0
    assert cache["fxgraph_cache_hit"] + cache["fxgraph_cache_miss"] == 1


def test_a_cached_program_computes_with_the_constants_of_its_own_graph():
    """Inductor's cache serves a program by the graph's structure and shapes: two graphs that
    differ only in a tensor constant's value (a flow's mask, a fixed σ held as a tensor) share
    one cached program, which must read the constant at run time — the second call has to
    compute with 3, not with the cached graph's 2."""
    from torch._dynamo.utils import counters

    from pyro_vae.infer.compiled import CompiledProgram

    def affine(value):
        constant = torch.full((5,), value)
        return lambda x: (x * constant + 1,)

    x = torch.ones(5)
    counters.clear()
    outs = [CompiledProgram(affine(value))(x)[0] for value in (2.0, 3.0)]
    assert torch.equal(outs[0], torch.full((5,), 3.0))
    assert torch.equal(outs[1], torch.full((5,), 4.0))
    assert counters["inductor"]["fxgraph_cache_hit"] >= 1  # the second graph was served


def test_automatic_choice_and_refusals():
    data = _data()
    short = Trainer(small_vae(num_data=96), data, Config(dataset="file", epochs=2, batch_size=32))
    assert short.config.compile is None and short.step_path == "jit"
    epochs = COMPILE_MIN_STEPS // short.steps_per_epoch + 1
    pyro.clear_param_store()
    long = Trainer(small_vae(num_data=96), data, Config(dataset="file", epochs=epochs,
                                                         batch_size=32))
    assert long.step_path == "compiled"
    with pytest.raises(ConfigError, match="--compile cannot train this configuration"):
        Config(dataset="moons", estimator="score-avg", compile=True).resolved()
    with pytest.raises(ConfigError, match="compile must be True, False or None"):
        Config(dataset="moons", compile="yes").resolved()


def test_explicit_compile_falls_back_with_a_warning():
    """A model whose step cannot be traced (Python branch on a tensor's value) trains on the
    uncompiled path, with a one-line warning naming the reason."""
    pyro.set_rng_seed(0)
    vae = small_vae(num_data=96)
    model = vae.model

    def branching_model(x, y=None, indices=None, beta=1.0, num_points=None):
        if float(x.sum()) > -1:  # data-dependent control flow
            return model(x, y, indices, beta, num_points)
        return None

    trainer = Trainer(branching_model, _data(), Config(dataset="file", batch_size=32, epochs=1,
                                                       compile=True), guide=vae.guide)
    with pytest.warns(UserWarning, match="--compile: the step could not be traced"):
        trainer.fit()
    assert trainer.step_path == "eager" and trainer.compile_failure
    assert all(h["train_loss"] == h["train_loss"] for h in trainer.history)


@pytest.mark.parametrize("estimator", ["score", "score-nn"])
def test_traced_score_function_step_equals_the_eager_one(estimator):
    """TraceGraph_ELBO's score-function surrogate (with the neural baseline's own loss for
    score-nn) traced: same loss and gradients as the eager ELBO, every parameter."""
    from pyro_vae.infer.estimators import svi_objective

    vae = small_vae(num_data=64)
    guide, elbo = svi_objective(vae, estimator)
    x, idx = make_batch(8), torch.arange(8)
    params = list(trainable_params(vae.model, guide, x).values())

    def loss_fn(x, idx, beta):
        with vae.trusted_inputs():
            return elbo.differentiable_loss(vae.model, guide, x, None, idx, beta)

    args = (x, idx, torch.tensor(1.0))
    step = CompiledStep(loss_fn, params, backend="aten")
    _assert_matches_eager(step, loss_fn, params, args, seeds=(1, 2), grad_atol=1e-5)


def test_compiling_does_not_print_torchs_cuda_probe():
    """On a CPU-only machine with a CUDA directory, importing torch's C++-extension helper (the
    first Inductor compile in a process does) logs "No CUDA runtime is found": silenced while the
    step compiles, restored after."""
    import logging

    from pyro_vae.infer.compiled import _quiet_cuda_probe

    class Records(logging.Handler):
        def __init__(self):
            super().__init__(logging.DEBUG)
            self.messages = []

        def emit(self, record):
            self.messages.append(record.getMessage())

    logger, handler = logging.getLogger("torch.utils.cpp_extension"), Records()
    logger.addHandler(handler)
    try:
        with _quiet_cuda_probe():
            logger.warning("No CUDA runtime is found, using CUDA_HOME='/usr/local'")
        logger.warning("after")
    finally:
        logger.removeHandler(handler)
    assert handler.messages == ["after"]
