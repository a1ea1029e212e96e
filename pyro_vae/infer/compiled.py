"""A training step compiled whole: an ELBO's loss, its gradient and a finiteness check as one
TorchInductor program.

The library's other fast path (:mod:`pyro_vae.infer.elbo`, Pyro's ``JitTrace_ELBO``) compiles
the *forward* loss with ``torch.jit.trace`` and leaves the backward pass to autograd, op by op.
On the small networks VAEs are often studied with, that op-by-op execution is the step: Pyro's
traced ELBO for the moons model is 134 aten ops forward and about as many backward, each a few
microseconds of dispatch around a few hundred flops. :class:`CompiledStep` instead records the
whole step::

    loss, ∇loss, finite = ELBO.differentiable_loss(model, guide, *args), its gradient with respect
    to every trainable tensor, and isfinite(loss) ∧ isfinite(∇loss) (one flag),

as one flat aten graph (``torch.fx.experimental.proxy_tensor.make_fx`` with real tensors: the
modern form of what ``torch.jit.trace`` does for ``JitTrace_ELBO``), and hands that graph to
TorchInductor, which fuses the elementwise work around the matrix products into a few dozen C++
loops. With the trainer's plain ``torch.optim.Adam``, Adam's update is folded into the same
program (:class:`AdamUpdate`), writing the optimizer's own state tensors in place, so checkpoints
and learning-rate schedules are unchanged; any other optimizer (``ClippedAdam``) takes the
returned gradients and steps as usual.

**What is compiled is Pyro's own ELBO** (``Trace_ELBO``, ``TraceMeanField_ELBO`` or the library's
:class:`~pyro_vae.infer.importance.ImportanceWeightedELBO`) run on the unchanged ``model`` and
``guide``: the tracer executes that Python once and keeps the tensor operations it performed.
While tracing, Pyro's two loss-value helpers that read a tensor into Python are replaced
(:func:`traceable_pyro`): ``torch_item(x)`` returns ``x.detach()`` (the same value, still
outside autograd, as a number is) and ``warn_if_nan`` does nothing (the step's own finiteness
flag replaces it: a non-finite step is never applied).

**When it is correct** — the conditions of ``JitTrace_ELBO``, stated there in Pyro's docs:

* the model and guide have static structure for a given input shape (the same sites,
  distributions and Python branches on every call; no control flow on tensor *values*);
* every input that changes between steps is a tensor argument (data, indices, β) or a
  trainable tensor; other Python values (the data size N, fixed likelihood scales) are frozen
  into the graph;
* no module buffer is updated by the step (batch-norm statistics): refused (buffers that are
  only read, like a flow's masks, are constants of the graph);
* random draws are graph operations (``aten.normal`` and friends) that Inductor leaves to
  torch's own generator, so each call draws fresh numbers in the same order as the eager ELBO —
  same seed, same draws, same loss and gradients up to float rounding
  (``tests/infer/test_compiled.py``).

A graph is compiled per input signature (shapes and dtypes); the trainer compiles the full
batch size only and runs a smaller last batch on its other path.

One rewrite is applied before Inductor sees the graph: ReLU's backward
``threshold_backward(g, relu(a), 0)`` becomes ``g · sign(relu(a))`` — equal for every value
``relu`` can return (0 → 0, positive → 1, NaN → NaN where the original passes g; a NaN is
flagged as non-finite either way). Without it, Inductor computes the comparison ``relu(a) ≤ 0``
in the forward kernel and stores it as a ``bool`` tensor, and on this project's machines (Intel
Xeon, AVX-512, torch 2.13) Inductor's byte-mask stores run at about 13 ns per element: 220 µs
for a 128 × 128 mask against 18 µs for the same kernel storing floats, which made the compiled
moons step slower than the eager one (``benchmarks/compiled_step.py`` measures both).
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pyro
import torch
from torch import fx, nn

__all__ = ["AdamUpdate", "CompiledProgram", "CompiledStep", "NotCompilableError",
           "relu_backward_as_sign", "traceable_pyro"]


#: TorchInductor options of the compiled step: its Python wrapper skips the per-call checks of
#: every input's size, stride and alignment (about 80 checks a step on the moons network, 5 % of
#: the step); the trainer calls each graph only with the shapes it was compiled for
INDUCTOR_OPTIONS = {"size_asserts": False, "alignment_asserts": False}


class NotCompilableError(RuntimeError):
    """The step cannot be compiled (the reason is the message); callers fall back to their
    uncompiled path."""


def _detached(x: Any) -> Any:
    return x.detach() if isinstance(x, torch.Tensor) else x


def _no_nan_warning(value: Any, *args: Any, **kwargs: Any) -> Any:
    return value


@contextlib.contextmanager
def traceable_pyro() -> Iterator[None]:
    """Inside, Pyro's ``torch_item`` returns ``x.detach()`` and ``warn_if_nan`` is a no-op, in
    every loaded ``pyro`` module that imported them: the two places where Pyro's ELBOs read a
    tensor's value into Python, which a graph tracer cannot follow. Restored on exit."""
    import pyro.infer.util
    import pyro.util

    stand_ins = {"torch_item": (pyro.infer.util.torch_item, _detached),
                 "warn_if_nan": (pyro.util.warn_if_nan, _no_nan_warning)}
    saved = []
    for name, module in list(sys.modules.items()):
        if module is None or not (name == "pyro" or name.startswith("pyro.")):
            continue
        for attr, (original, stand_in) in stand_ins.items():
            if getattr(module, attr, None) is original:
                saved.append((module, attr, original))
                setattr(module, attr, stand_in)
    try:
        yield
    finally:
        for module, attr, original in saved:
            setattr(module, attr, original)


def relu_backward_as_sign(graph_module: fx.GraphModule) -> int:
    """Rewrite ``threshold_backward(g, r, 0)`` as ``g · sign(r)`` where ``r = relu(a)`` (or a
    detached view of it, as autograd saves it), in place (module docstring: exact for every
    value of ``r``); returns the number rewritten."""
    aten = torch.ops.aten
    graph, count = graph_module.graph, 0
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target is not aten.threshold_backward.default:
            continue
        grad, out, threshold = node.args
        source = out
        while isinstance(source, fx.Node) and source.op == "call_function" \
                and source.target is aten.detach.default:  # autograd's saved output
            source = source.args[0]
        if threshold != 0 or not isinstance(source, fx.Node) or source.op != "call_function" \
                or source.target is not aten.relu.default:
            continue
        with graph.inserting_before(node):
            sign = graph.call_function(aten.sign.default, (out,))
            product = graph.call_function(aten.mul.Tensor, (grad, sign))
        node.replace_all_uses_with(product)
        graph.erase_node(node)
        count += 1
    if count:
        graph.lint()
        graph_module.recompile()
    return count


def _origin(exc: BaseException) -> str:
    """``file:line`` of the innermost frame of ``exc`` outside torch (where a model read a
    tensor's value, typically)."""
    import os
    import traceback

    torch_dir = os.path.dirname(torch.__file__)
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if not f.filename.startswith(torch_dir)]
    return f"{os.path.basename(frames[-1].filename)}:{frames[-1].lineno}" if frames else "?"


def _signature(args: Sequence[Any]) -> tuple:
    return tuple((tuple(a.shape), a.dtype, a.device) if isinstance(a, torch.Tensor) else
                 ("value", a) for a in args)


@dataclasses.dataclass(frozen=True)
class AdamUpdate:
    """Adam's update folded into the compiled step, on the state of a ``torch.optim.Adam``
    (the same tensors, updated in place, so checkpoints and the optimizer are unchanged).

    With gradient g_t at step t (counted per parameter, as torch does) and learning rate η:
    m_t = β₁ m_{t−1} + (1 − β₁) g_t, v_t = β₂ v_{t−1} + (1 − β₂) g_t²,
    θ_t = θ_{t−1} − η/(1 − β₁ᵗ) · m_t / (√v_t / √(1 − β₂ᵗ) + ε) — torch's Adam without
    weight decay, AMSGrad or maximize (Kingma & Ba 2015, Algorithm 1, ε outside the bias
    correction as torch places it). A step whose loss or gradient is not finite changes
    nothing, counters included. A parameter the loss does not reach is left alone, as torch
    skips a parameter whose ``.grad`` is ``None``.
    """

    beta1: float
    beta2: float
    eps: float

    @classmethod
    def of(cls, optimizer: torch.optim.Optimizer) -> AdamUpdate | None:
        """The update of ``optimizer`` if it is a plain ``torch.optim.Adam`` with one parameter
        group (no weight decay, AMSGrad, maximize, differentiable or complex parameters), else
        None."""
        if type(optimizer) is not torch.optim.Adam or len(optimizer.param_groups) != 1:
            return None
        group = optimizer.param_groups[0]
        if group["weight_decay"] or group["amsgrad"] or group["maximize"] \
                or group["differentiable"] or isinstance(group["lr"], torch.Tensor) \
                or any(torch.is_complex(p) for p in group["params"]):
            return None
        beta1, beta2 = group["betas"]
        return cls(float(beta1), float(beta2), float(group["eps"]))

    def state(self, optimizer: torch.optim.Optimizer, params: Sequence[torch.Tensor]
              ) -> list[torch.Tensor] | None:
        """``[*m, *v, *steps, lr]`` for ``params`` (None while some parameter has no state yet,
        i.e. before the optimizer's first step on it)."""
        states = [optimizer.state.get(p) for p in params]
        if any(not st or "exp_avg" not in st or not isinstance(st["step"], torch.Tensor)
               for st in states):
            return None
        lr = torch.tensor(float(optimizer.param_groups[0]["lr"]), device=params[0].device)
        return [*(st["exp_avg"] for st in states), *(st["exp_avg_sq"] for st in states),
                *(st["step"] for st in states), lr]

    def apply(self, params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor],
              state: Sequence[torch.Tensor], finite: torch.Tensor, skip: frozenset[int]) -> None:
        """The update in place (written for tracing: no Python branch on tensor values)."""
        n = len(params)
        exp_avgs, exp_avg_sqs, steps, lr = state[:n], state[n:2 * n], state[2 * n:3 * n], \
            state[3 * n]
        b1, b2, eps = self.beta1, self.beta2, self.eps
        with torch.no_grad():
            for i, (p, g, m, v, t) in enumerate(zip(params, grads, exp_avgs, exp_avg_sqs, steps,
                                                     strict=True)):
                if i in skip:
                    continue
                t_new = t + 1
                m_new = m + (1 - b1) * (g - m)
                v_new = b2 * v + (1 - b2) * g * g
                step_size = lr / (1 - b1 ** t_new)
                denom = v_new.sqrt() / (1 - b2 ** t_new).sqrt() + eps
                p_new = p - step_size * m_new / denom
                for old, new in ((p, p_new), (m, m_new), (v, v_new), (t, t_new)):
                    old.copy_(torch.where(finite, new, old))


class CompiledProgram:
    """Any function of tensors that returns a tuple of tensors and may update some of its
    inputs in place (a whole optimization step), traced with ``make_fx`` and compiled by
    TorchInductor, one graph per input signature: the inputs' values and the random state are
    restored after tracing (which runs ``fn`` once for real), ReLU's backward is rewritten
    (:func:`relu_backward_as_sign`). :class:`CompiledStep` is one loss and its gradient on top
    of it; :class:`~pyro_vae.infer.vem.VariationalEM` compiles its E- and M-steps with it.

    The conditions of the module docstring apply: static structure, every changing value an
    input tensor. Refused (:class:`NotCompilableError`): reading a trainable tensor that is not
    an input, and changing a buffer of ``modules`` (batch-norm statistics), which a compiled
    graph would hold fixed; buffers only read (an autoregressive flow's masks) are fine.

    :param backend: ``"inductor"`` (default) or ``"aten"``, the traced graph run op by op
        without Inductor (for tests: it shows what tracing alone does).
    """

    def __init__(self, fn: Callable[..., tuple[torch.Tensor, ...]],
                 backend: str = "inductor", modules: Sequence[nn.Module] = ()) -> None:
        if backend not in ("inductor", "aten"):
            raise ValueError(f"backend must be 'inductor' or 'aten', got {backend!r}")
        self.fn, self.backend = fn, backend
        self.buffers = [b for m in modules for b in m.buffers()]
        self.graphs: dict[tuple, Callable[..., Any]] = {}

    def __call__(self, *inputs: torch.Tensor, key: tuple | None = None
                 ) -> tuple[torch.Tensor, ...]:
        """Run (compiling first for a new signature). ``key``: the signature when the caller
        knows which inputs can change shape (default: every input's shape, dtype and device)."""
        key = _signature(inputs) if key is None else key
        if key not in self.graphs:
            self.graphs[key] = _compile(self.trace(inputs), inputs, self.backend)
        with torch.no_grad():
            return tuple(self.graphs[key](*inputs))

    def trace(self, inputs: Sequence[torch.Tensor]) -> fx.GraphModule:
        """``fn`` as an aten graph (inputs, buffers and random state left as they were)."""
        before = [b.clone() for b in self.buffers]
        graph = _trace(self.fn, inputs)
        changed = any(not torch.equal(b, v) for b, v in zip(self.buffers, before, strict=True))
        with torch.no_grad():
            for b, v in zip(self.buffers, before, strict=True):
                b.copy_(v)
        if changed:  # a buffer the step updates would be a constant of the graph
            raise NotCompilableError("the step updates module buffers (batch-norm statistics), "
                                     "which a compiled graph would hold fixed")
        return graph


class CompiledStep:
    """``loss_fn``'s value, its gradient with respect to ``params`` and a finiteness flag, as
    one :class:`CompiledProgram` per input signature (module docstring for when this is
    correct); with ``adam``, the optimizer's update too.

    :param loss_fn: ``loss_fn(*args)`` returns a scalar tensor whose gradient is the estimator,
        e.g. ``lambda x, idx, beta: elbo.differentiable_loss(model, guide, x, None, idx, beta)``.
    :param params: the trainable tensors, in the order the gradients are returned. At each call
        the tensors passed to :meth:`__call__` are used, so params replaced in place of
        others of the same shapes (a restored checkpoint) need no recompiling.
    :param modules: the networks ``loss_fn`` runs (their buffers: :class:`CompiledProgram`).
    :param adam: fold this Adam update into the program (:class:`AdamUpdate`); then each call
        takes the optimizer's state (:meth:`AdamUpdate.state`) and returns no gradients.
    :param backend: as :class:`CompiledProgram`'s.

    Calling it returns ``(loss, finite, grads)``: the loss as a 0-dim tensor, ``finite`` a
    0-dim bool tensor, the gradients a list (zeros for a tensor the loss does not reach:
    :meth:`unused_params`; empty with ``adam``, whose update is already applied).
    """

    def __init__(self, loss_fn: Callable[..., torch.Tensor], params: Sequence[torch.Tensor],
                 modules: Sequence[nn.Module] = (), adam: AdamUpdate | None = None,
                 backend: str = "inductor") -> None:
        self.loss_fn, self.adam = loss_fn, adam
        self.program = CompiledProgram(self._step, backend, modules)
        self.num_params = len(params)
        self.num_state = 3 * len(params) + 1 if adam is not None else 0
        self._unused: dict[tuple, frozenset[int]] = {}
        self._unused_at_trace: frozenset[int] = frozenset()

    @property
    def graphs(self) -> dict[tuple, Callable[..., Any]]:
        """The compiled programs by input signature."""
        return self.program.graphs

    def _step(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        n, k = self.num_params, self.num_state
        params, state, args = list(inputs[:n]), inputs[n:n + k], inputs[n + k:]
        loss = self.loss_fn(*args)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        unused = self._unused_at_trace = frozenset(i for i, g in enumerate(grads) if g is None)
        grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads,
                                                                          strict=True)]
        finite = torch.isfinite(loss)
        for g in grads:
            finite = finite & torch.isfinite(g).all()
        if self.adam is None:
            return (loss.detach(), finite, *grads)
        self.adam.apply(params, grads, state, finite, unused)
        return loss.detach(), finite

    def trace(self, params: Sequence[torch.Tensor], args: Sequence[Any],
              state: Sequence[torch.Tensor] = ()) -> fx.GraphModule:
        """The step as an aten graph (random state, params and optimizer state left as they
        were: tracing runs the step once for real)."""
        return self.program.trace([*params, *state, *args])

    def __call__(self, params: Sequence[torch.Tensor], *args: Any,
                 state: Sequence[torch.Tensor] = ()
                 ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        if len(state) != self.num_state:
            raise ValueError(f"this step takes {self.num_state} optimizer-state tensors, got "
                             f"{len(state)}")
        key = _signature(args)  # params and state keep their shapes: the batch decides
        new = key not in self.program.graphs
        loss, finite, *grads = self.program(*params, *state, *args, key=key)
        if new:  # tracing recorded which params the loss reaches
            self._unused[key] = self._unused_at_trace
        return loss, finite, grads

    def unused_params(self, args: Sequence[Any]) -> frozenset[int]:
        """Positions of the params the loss does not reach for the signature of ``args``
        (their returned gradients are zeros; autograd would leave them ``None``)."""
        return self._unused.get(_signature(args), frozenset())


def _trace(fn: Callable[..., Any], inputs: Sequence[torch.Tensor]) -> fx.GraphModule:
    """``fn`` as an aten graph; the inputs' values and the random state as they were."""
    from torch.fx.experimental.proxy_tensor import make_fx

    devices = [t.device for t in inputs if t.device.type == "cuda"][:1]
    saved = [t.detach().clone() for t in inputs]
    try:
        with torch.random.fork_rng(devices=devices), pyro.validation_enabled(False), \
                traceable_pyro():
            graph = make_fx(fn, tracing_mode="real")(*inputs)
    except RuntimeError as exc:
        raise NotCompilableError(f"the step could not be traced ({_origin(exc)}): "
                                 f"{str(exc).splitlines()[0]}") from exc
    finally:
        with torch.no_grad():
            for t, value in zip(inputs, saved, strict=True):
                t.copy_(value)
    _check_constants(graph, [t for t in inputs if t.requires_grad])
    relu_backward_as_sign(graph)
    return graph


def _check_constants(graph: fx.GraphModule, params: Sequence[torch.Tensor]) -> None:
    """Refuse a graph that froze a trainable tensor as a constant (a param the loss reads that
    was not passed among the inputs): it would never see the updates."""
    trained = {p.untyped_storage().data_ptr() for p in params}
    for node in graph.graph.nodes:
        if node.op != "get_attr":
            continue
        value = getattr(graph, node.target)
        if isinstance(value, torch.Tensor) and value.numel() and (
                value.requires_grad or value.untyped_storage().data_ptr() in trained):
            raise NotCompilableError(
                f"the loss reads a trainable tensor of shape {tuple(value.shape)} that is "
                "not among the params given; pass every trainable tensor")


@contextlib.contextmanager
def _quiet_cuda_probe() -> Iterator[None]:
    """Silence ``torch.utils.cpp_extension``'s "No CUDA runtime is found, using CUDA_HOME=…"
    while Inductor builds a CPU program (it is logged on a CPU-only machine that has a CUDA
    directory, and says nothing about the program)."""
    import logging

    logger = logging.getLogger("torch.utils.cpp_extension")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _compile(graph: fx.GraphModule, inputs: Sequence[torch.Tensor], backend: str
             ) -> Callable[..., Any]:
    """``graph`` lowered by TorchInductor, through its on-disk caches.

    Inductor keys its FX-graph cache (and AOTAutograd's) on the graph and the shapes of its
    inputs, but looks a graph up only when a tracing context with a shape environment is active —
    which ``torch.compile`` sets up and a graph traced by ``make_fx`` lacks: without one the cache
    is bypassed ("No shape env") and every run regenerates and recompiles the same C++ (7 s for
    the digits step on this project's CPUs). The context given here holds static shapes only (a
    graph is compiled per input signature), so a later process that traces the same step loads
    it from the cache (2.6 s, most of it importing Inductor and probing the CPU's vector ISA).
    """
    if backend == "aten":
        return graph
    from torch._guards import TracingContext, tracing
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import ShapeEnv

    try:
        with torch.no_grad(), tracing(TracingContext(FakeTensorMode(shape_env=ShapeEnv()))), \
                _quiet_cuda_probe():
            return torch._inductor.compile(graph, [t.detach() for t in inputs],
                                           options=INDUCTOR_OPTIONS)
    except Exception as exc:  # no C++ compiler, an unsupported op, ...
        raise NotCompilableError(
            f"TorchInductor could not compile the step: {str(exc).splitlines()[0]}") from exc
