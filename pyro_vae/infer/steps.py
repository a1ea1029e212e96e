"""One optimization step of SVI, three interchangeable ways: eager, Pyro's JIT, compiled whole.

Every strategy does what ``pyro.infer.SVI.step`` does for one mini-batch, with the trainer's
one torch optimizer over every trainable tensor:

1. ``loss = elbo.differentiable_loss(model, guide, *args)`` — any Pyro ELBO whose gradient is
   the estimator (Pyro's, the library's estimators, importance-weighted objectives); an ELBO
   without ``differentiable_loss`` (``TraceGraph_ELBO``) runs its ``loss_and_grads``;
2. its gradient by ``loss.backward()``;
3. a finiteness check of the loss and every gradient entry (:func:`all_finite`): a NaN or
   infinite value never reaches the parameters (:class:`NonFiniteStepError`, parameters and
   optimizer state untouched);
4. ``optimizer.step()``.

:class:`EagerStep` runs them as written. :class:`JitStep` runs step 1 through Pyro's JIT ELBO
(``torch.jit.trace`` of the loss, compiled once per batch size). :class:`CompiledWholeStep`
records steps 1–4 as one TorchInductor program (:mod:`pyro_vae.infer.compiled`). Both traced
strategies freeze every Python value the model and guide read while they were traced; they are
correct only while those values stay as they were. :class:`CapturedState` makes that checked
rather than assumed: before every epoch the trainer compares the Python values reachable from
model and guide (attributes of their modules and objects, closure cells, module globals they
name) with those seen at tracing, and on a change the step re-traces with a one-line warning
naming the value — after :data:`MAX_RETRACES` changes it falls back to eager for good. A model
whose noise scale the user anneals between epochs therefore trains the same numbers as eager.
"""

from __future__ import annotations

import contextlib
import math
import re
import types
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import pyro
import torch
from torch import nn

from pyro_vae.errors import DataError, ModelError, PyroVAEError
from pyro_vae.infer.compiled import AdamUpdate, CompiledStep, NotCompilableError

__all__ = ["MAX_RETRACES", "CapturedState", "CompiledWholeStep", "EagerStep", "JitStep",
           "NonFiniteStepError", "all_finite"]

#: how many times a traced step re-traces after a captured Python value changed before it
#: falls back to the eager step for the rest of the run
MAX_RETRACES = 4


class NonFiniteStepError(Exception):
    """A step's loss or gradient was NaN or infinite; ``args[0]`` is the loss. Nothing was
    updated."""


def all_finite(loss: float, grads: list[torch.Tensor]) -> bool:
    """True when ``loss`` and every gradient entry are finite.

    The gradients are scanned in one pass by the kernel ``torch.amp.GradScaler`` uses to skip
    steps with inf/NaN gradients (``torch._amp_foreach_non_finite_check_and_unscale_``, with a
    scale of exactly 1, which leaves them unchanged): about 10 µs for a small network, against
    60 µs for a total norm. Gradients on several devices or of mixed dtypes, which that kernel
    rejects, are checked through their total 2-norm (finite exactly when every entry is, short
    of overflow past 3e38).
    """
    if not math.isfinite(loss):
        return False
    if not grads:
        return True
    device = grads[0].device
    found_inf = torch.zeros(1, device=device)
    try:
        torch._amp_foreach_non_finite_check_and_unscale_(grads, found_inf,
                                                         torch.ones(1, device=device))
    except RuntimeError:
        return bool(torch.isfinite(torch.nn.utils.get_total_norm(grads)))
    return not found_inf.item()


_OUTSIDE_SUPPORT = re.compile(r"Expected value argument \(Tensor of shape (\([^)]*\))\) to be "
                              r"within the support \((.*?)\) of the distribution (\w+)")


def outside_support(exc: BaseException) -> DataError | None:
    """A one-line :class:`DataError` for Pyro's "value outside the support" failure of a site's
    log-density (``exc``'s message, as torch's distribution validation and Pyro's site context
    word it), or None for any other failure. On the first step this is almost always the data:
    pixel intensities scored by a Bernoulli likelihood, which torch rejects as "invalid values"
    — the same words as a divergence's NaN parameters, so it must be told apart before them."""
    text = str(exc)
    found = _OUTSIDE_SUPPORT.search(text)
    if found is None:
        return None
    shape, support, family = found.groups()
    site = re.search(r"at site '([^']+)'", text)
    where = f"at site {site.group(1)!r} " if site else ""
    return DataError(
        f"the value {where}(shape {shape}) is outside the support {support} of its {family} "
        "distribution: observed data must lie in it (binary values for a Bernoulli likelihood: "
        "binarize pixel intensities with --binarize dynamic or threshold, or score them with a "
        "likelihood for [0, 1] data), and so must a guide's draw of a latent site")


def first_step_failure(exc: BaseException) -> ModelError:
    """The one-line error of a first training step that fails: model, guide and loss have never
    run together on a batch, so the usual cause is a model or guide that does not take a
    mini-batch. The reason is the exception's first line, with the next one when the first only
    names the site (Pyro's "Error while computing log_prob at site 'x':")."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    reason = " ".join(lines[:2]) if len(lines) > 1 and lines[0].endswith(":") else \
        (lines[0] if lines else "")
    return ModelError(
        f"the first training step fails ({type(exc).__name__}: {reason}); check that model and "
        "guide take a mini-batch of the data (an autoguide over local latents needs "
        "--batch-size equal to the data size, or a subsampled data plate with "
        "create_plates=...)")


def step_failure(exc: BaseException, first: bool) -> Exception | None:
    """What a step raises for ``exc`` (None: let it propagate as it is), the same for every
    strategy: a value outside its support → :func:`outside_support`'s :class:`DataError`;
    distribution validation rejecting NaN/inf parameters ("invalid values": the logits of a
    decoder whose weights diverged, an overflowing encoder scale) → a divergence,
    :class:`NonFiniteStepError`; any other failure of the ``first`` step, unless it already is
    one of the library's one-line errors → :func:`first_step_failure`."""
    support = outside_support(exc)
    if support is not None:
        return support
    if isinstance(exc, ValueError) and "invalid values" in str(exc):
        return NonFiniteStepError(float("nan"))
    if first and not isinstance(exc, PyroVAEError):
        return first_step_failure(exc)
    return None


# --------------------------------------------------------------------------- captured state
_SCALARS = (int, float, bool, str, bytes, complex, type(None))
#: modules whose functions and objects hold no user state a step could capture
_LIBRARIES = ("torch", "pyro", "numpy", "builtins", "functools", "typing", "math", "collections",
              "contextlib", "abc", "weakref", "inspect", "dataclasses", "operator", "itertools")
_MAX_ENTRIES = 4000


def _library(obj: Any) -> bool:
    module = getattr(obj, "__module__", None) or type(obj).__module__ or ""
    return module.split(".")[0] in _LIBRARIES


class CapturedState:
    """The Python values a traced step may have frozen, reachable from ``roots`` (the model and
    the guide): for a bound method its object; for a function its closure cells, defaults and
    the module globals its code names (and, recursively, the functions and objects those are);
    for an object its attributes; for an ``nn.Module`` every submodule's non-tensor attributes
    (``training`` included; buffers are the traced program's own business:
    :mod:`~pyro_vae.infer.compiled` refuses a step that updates them). Values are recorded as
    they are (numbers, strings, small tuples);
    a tensor that is not trained as ``(id, version)`` (replaced or changed in place); trainable
    tensors are inputs of the traced program, not captures. Objects of torch, Pyro and the
    standard library are not entered."""

    def __init__(self, *roots: Any, depth: int = 4) -> None:
        self.roots, self.depth = roots, depth

    def snapshot(self) -> dict[str, Any]:
        found: dict[str, Any] = {}
        seen: set[int] = set()
        for i, root in enumerate(self.roots):
            self._visit(root, getattr(root, "__name__", f"arg{i}"), self.depth, found, seen)
        return found

    def _visit(self, obj: Any, path: str, depth: int, found: dict[str, Any],
               seen: set[int]) -> None:
        if len(found) >= _MAX_ENTRIES:
            return
        if isinstance(obj, _SCALARS):
            found[path] = obj
            return
        if isinstance(obj, torch.Tensor):
            if not obj.requires_grad:
                found[path] = (id(obj), obj._version)
            return
        if isinstance(obj, (tuple, list)) and len(obj) <= 16 \
                and all(isinstance(v, _SCALARS) for v in obj):
            found[path] = tuple(obj)
            return
        if depth <= 0 or id(obj) in seen or isinstance(obj, (type, types.ModuleType)):
            return
        seen.add(id(obj))
        if isinstance(obj, types.MethodType):
            self._visit(obj.__self__, path, depth, found, seen)
            self._visit(obj.__func__, path, depth, found, seen)
        elif isinstance(obj, types.FunctionType):
            if _library(obj):
                return
            for name, cell in zip(obj.__code__.co_freevars, obj.__closure__ or (), strict=True):
                with contextlib.suppress(ValueError):  # an empty cell
                    self._visit(cell.cell_contents, f"{path}.<{name}>", depth - 1, found, seen)
            for k, v in enumerate(obj.__defaults__ or ()):
                self._visit(v, f"{path}.<default {k}>", depth - 1, found, seen)
            globs = obj.__globals__
            for name in _names(obj.__code__):
                if name in globs:
                    self._visit(globs[name], f"{obj.__module__}.{name}", depth - 1, found, seen)
        elif isinstance(obj, nn.Module):
            for prefix, module in obj.named_modules(prefix=path):
                if _library(module) and module is not obj and not module._modules:
                    for key in ("training",):
                        found[f"{prefix}.{key}"] = module.training
                    continue
                for key, value in vars(module).items():
                    if not key.startswith("_"):
                        self._visit(value, f"{prefix}.{key}", depth - 1, found, seen)
        elif isinstance(obj, dict):
            if len(obj) <= 64:
                for key, value in obj.items():
                    if isinstance(key, str):
                        self._visit(value, f"{path}[{key!r}]", depth - 1, found, seen)
        elif hasattr(obj, "__dict__") and not _library(obj):
            for key, value in vars(obj).items():
                if not key.startswith("__"):
                    self._visit(value, f"{path}.{key}", depth - 1, found, seen)
            call = vars(type(obj)).get("__call__")
            if isinstance(call, types.FunctionType):
                self._visit(call, f"{path}.__call__", depth - 1, found, seen)

    @staticmethod
    def changed(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
        """``"path: old → new"`` for every captured value that differs."""
        out = []
        for key in before.keys() | after.keys():
            old, new = before.get(key, "<absent>"), after.get(key, "<absent>")
            if old != new and not (isinstance(old, float) and isinstance(new, float)
                                   and math.isnan(old) and math.isnan(new)):
                out.append(f"{key}: {old!r} → {new!r}")
        return sorted(out)


def _names(code: types.CodeType) -> set[str]:
    """Global names a code object and its nested code objects read."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _names(const)
    return names


# --------------------------------------------------------------------------- the strategies
class EagerStep:
    """Steps 1–4 of the module docstring as written. The first call runs with Pyro's
    validation on (every site's arguments and support are checked once), later calls with it
    off, since they meet tensors of the same kind."""

    name = "eager"

    def __init__(self, elbo: Any, model: Callable[..., Any], guide: Callable[..., Any],
                 params: Sequence[torch.Tensor], optimizer: torch.optim.Optimizer) -> None:
        self.elbo, self.model, self.guide = elbo, model, guide
        self.params, self.optimizer = list(params), optimizer
        self.validated = False

    def loss(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        """The differentiable loss of one mini-batch (what DDP backpropagates)."""
        return self.elbo.differentiable_loss(self.model, self.guide, *args, **kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> float:
        checking = contextlib.nullcontext() if not self.validated \
            else pyro.validation_enabled(False)
        self.optimizer.zero_grad(set_to_none=True)
        with checking:
            try:
                if hasattr(self.elbo, "differentiable_loss"):
                    loss = self.loss(*args, **kwargs)
                    loss.backward()
                    value = float(loss.detach())
                else:  # an ELBO that backpropagates itself (TraceGraph_ELBO)
                    value = float(self.elbo.loss_and_grads(self.model, self.guide, *args,
                                                             **kwargs))
            except (ValueError, RuntimeError, TypeError, KeyError, IndexError) as exc:
                failure = step_failure(exc, first=not self.validated)
                if failure is None:
                    raise
                self.optimizer.zero_grad(set_to_none=True)
                raise failure from None
        self.validated = True
        if not all_finite(value, [p.grad for p in self.params if p.grad is not None]):
            self.optimizer.zero_grad(set_to_none=True)
            raise NonFiniteStepError(value)
        self.optimizer.step()
        return value


class _Traced:
    """What the two traced strategies share: the captured-state check (module docstring).

    Around each tracing the step snapshots the reachable Python values before and after; a
    value the traced call itself changed (a messenger's scratch state, written on every call)
    is an output of the step, not a capture, and is left out. :meth:`check` compares the rest
    with their values now; the trainer calls it before every epoch (its loop runs no user code
    within an epoch; a step driven by hand is checked by calling it likewise).
    """

    def __init__(self, fallback: EagerStep | JitStep, roots: Sequence[Any]) -> None:
        self.fallback = fallback
        self.state = CapturedState(*roots)
        self.captured: dict[str, Any] | None = None
        self.written: set[str] = set()
        self._before: dict[str, Any] | None = None
        self.retraces = 0
        #: why the step runs eagerly for good (None while it is traced)
        self.failure: str | None = None

    def begin_trace(self) -> None:
        self._before = self.state.snapshot()

    def end_trace(self) -> None:
        after = self.state.snapshot()
        before = self._before or after
        self.written |= {k for k in after.keys() | before.keys()
                         if before.get(k, "<absent>") != after.get(k, "<absent>")}
        self.captured = {k: v for k, v in after.items() if k not in self.written}

    def check(self) -> None:
        """Re-trace (with a one-line warning naming the values) if a captured Python value has
        changed since tracing; after :data:`MAX_RETRACES` re-tracings, fall back to eager for
        good."""
        inner = self.fallback
        if isinstance(inner, _Traced):
            inner.check()
        if self.failure is not None or self.captured is None:
            return
        now = {k: v for k, v in self.state.snapshot().items() if k not in self.written}
        changes = CapturedState.changed(self.captured, now)
        if not changes:
            return
        self.retraces += 1
        self.captured = None
        shown = "; ".join(changes[:3]) + (f"; and {len(changes) - 3} more"
                                          if len(changes) > 3 else "")
        if self.retraces > MAX_RETRACES:
            self.failure = (f"captured Python values changed {self.retraces} times ({shown}); "
                            "training goes on eagerly")
            warnings.warn(f"{self.name} step: {self.failure}", stacklevel=3)
            return
        warnings.warn(f"{self.name} step: a Python value the traced step froze has changed "
                      f"({shown}); re-tracing", stacklevel=3)
        self.reset()

    def reset(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError


class JitStep(_Traced):
    """Step 1 through Pyro's JIT ELBO (``JitTrace_ELBO`` / ``JitTraceMeanField_ELBO``, traced
    once per batch size); the rest as :class:`EagerStep`. The JIT graph takes tensors only, so
    model and guide get ``(x[, y], indices, beta)`` as tensors and the batch size as a keyword
    (one graph per batch size). Each batch size is traced ahead of its first real step with the
    random state and the modules' buffers restored, so a traced run draws the numbers an
    untraced one does.

    :param make_elbo: builds a fresh JIT ELBO (re-tracing starts from a new one).
    """

    name = "jit"

    def __init__(self, make_elbo: Callable[[], Any], model: Callable[..., Any],
                 guide: Callable[..., Any], params: Sequence[torch.Tensor],
                 optimizer: torch.optim.Optimizer, modules: Sequence[nn.Module] = ()) -> None:
        super().__init__(EagerStep(make_elbo(), model, guide, params, optimizer),
                         (model, guide))
        self.make_elbo = make_elbo
        self.modules = tuple(modules)
        self.traced: set[int] = set()

        def jit_model(x, *rest, batch_size=None):
            return model(*_protocol(x, rest))

        def jit_guide(x, *rest, batch_size=None):
            return guide(*_protocol(x, rest))

        self.step = EagerStep(self.fallback.elbo, jit_model, jit_guide, params, optimizer)

    @property
    def validated(self) -> bool:
        return self.step.validated or self.fallback.validated

    def reset(self) -> None:
        self.step.elbo = self.fallback.elbo = self.make_elbo()
        self.traced.clear()

    def loss(self, x, y, indices, beta) -> torch.Tensor:
        return self.step.loss(*_jit_args(x, y, indices, beta), batch_size=int(x.shape[0]))

    def __call__(self, x, y, indices, beta) -> float:
        if self.failure is not None:
            return self.fallback(x, y, indices, beta)
        args, size = _jit_args(x, y, indices, beta), int(x.shape[0])
        new = size not in self.traced
        if new:
            self.begin_trace()
            try:
                self._trace_ahead(args, size)
            except (ValueError, RuntimeError, TypeError, KeyError, IndexError) as exc:
                # tracing runs model, guide and loss for the first time at this batch size,
                # with validation on at the very first: the eager step's errors, said as it does
                failure = step_failure(exc, first=not self.validated)
                if failure is None:
                    raise
                raise failure from None
        with torch.jit.optimized_execution(False):
            # the traced graph run op by op, so that autograd differentiates it as in eager
            # mode: on CPU faster than the graph executor's own symbolic autodiff
            try:
                return self.step(*args, batch_size=size)
            finally:
                if new:
                    self.end_trace()

    def _trace_ahead(self, args: tuple, size: int) -> None:
        buffers = [b for m in self.modules for b in m.buffers()]
        saved = [b.clone() for b in buffers]
        devices = [args[0].device] if args[0].device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            self.step.loss(*args, batch_size=size)
        with torch.no_grad():
            for b, v in zip(buffers, saved, strict=True):
                b.copy_(v)
        self.traced.add(size)


def _jit_args(x, y, indices, beta) -> tuple[torch.Tensor, ...]:
    b = beta if isinstance(beta, torch.Tensor) else torch.tensor(float(beta), device=x.device)
    return (x, indices, b) if y is None else (x, y, indices, b)


def _protocol(x, rest: tuple) -> tuple:
    """``(x, indices, beta)`` or ``(x, y, indices, beta)`` as the library's four arguments."""
    return (x, None, *rest) if len(rest) == 2 else (x, *rest)


class CompiledWholeStep(_Traced):
    """Steps 1–4 as one TorchInductor program per full batch size
    (:class:`~pyro_vae.infer.compiled.CompiledStep`, Adam's update folded in for a plain
    ``torch.optim.Adam``). A batch of another size, the validating first step, and every step
    after the program could not be built run on ``fallback``; ``failure`` says why, with a
    warning when ``warn`` (``--compile`` asked for explicitly).

    :param elbo: the objective, eager (the compiled program traces Pyro's own Python).
    """

    name = "compiled"

    def __init__(self, elbo: Any, model: Callable[..., Any], guide: Callable[..., Any],
                 params: Sequence[torch.Tensor], optimizer: torch.optim.Optimizer,
                 fallback: EagerStep | JitStep, full_batch: int,
                 modules: Sequence[nn.Module] = (), warn: bool = False,
                 backend: str = "inductor") -> None:
        super().__init__(fallback, (model, guide))
        self.elbo, self.model, self.guide = elbo, model, guide
        self.params, self.optimizer = list(params), optimizer
        self.full_batch, self.modules, self.warn, self.backend = full_batch, tuple(modules), \
            warn, backend
        self.program: CompiledStep | None = None

    def reset(self) -> None:
        self.program = None

    def _build(self) -> CompiledStep:
        elbo, model, guide = self.elbo, self.model, self.guide

        def loss_fn(x, *rest):  # (x, indices, beta) or (x, y, indices, beta): tensors only
            return elbo.differentiable_loss(model, guide, *_protocol(x, rest))

        adam = AdamUpdate.of(self.optimizer)
        if adam is not None and adam.state(self.optimizer, self.params) is None:
            adam = None  # a param without Adam state yet: the optimizer steps it
        return CompiledStep(loss_fn, self.params, modules=self.modules, adam=adam,
                            backend=self.backend)

    def __call__(self, x, y, indices, beta) -> float:
        if self.failure is not None or not self.fallback.validated \
                or x.shape[0] != self.full_batch:
            return self.fallback(x, y, indices, beta)
        args = _jit_args(x, y, indices, beta)
        try:
            new = self.program is None
            if new:
                self.begin_trace()
                self.program = self._build()
            adam = self.program.adam
            state = adam.state(self.optimizer, self.params) if adam is not None else ()
            loss, finite, grads = self.program(self.params, *args, state=state)
            if new:
                self.end_trace()
        except NotCompilableError as exc:
            self.failure = str(exc)
            if self.warn:
                warnings.warn(f"--compile: {exc}; training goes on without it", stacklevel=2)
            return self.fallback(x, y, indices, beta)
        value = float(loss)
        if not bool(finite):  # nothing was updated
            raise NonFiniteStepError(value)
        if adam is not None:  # the update ran inside the program
            return value
        unused = self.program.unused_params(args)
        for i, (p, g) in enumerate(zip(self.params, grads, strict=True)):
            p.grad = None if i in unused else g  # as autograd leaves it: Adam skips it
        self.optimizer.step()
        return value

