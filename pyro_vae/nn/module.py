"""Registering a model's own tensors in Pyro's global param store, so that training never shadows.

``pyro.module(name, net)`` puts ``net``'s parameters into the global
:class:`~pyro.params.param_store.ParamStoreDict` under ``"<name>$$$<param>"``, but only when
the name is new. When the store already holds a *different* tensor under that name (a model
built earlier in the process, a store restored with ``ParamStoreDict.load``), Pyro copies the
store's values into the module and returns; the forward pass then uses the module's own tensors
while ``SVI`` collects — and steps — the store's, which get no gradient: training prints losses
and changes nothing.

:func:`register_module` and :func:`register_param` remove that failure. Before calling
``pyro.module`` / ``pyro.param`` they make the store entry *the model's own tensor*, so the
tensor the forward pass uses is the tensor every optimizer steps. Which *values* it holds:

* the store entry is missing, or is the model's own tensor: nothing changes;
* the store entry is a tensor that a pyro-vae model registered (a second model built or loaded
  in the same process): the registering model's own values win — each model keeps its weights;
* the store entry came from anywhere else (``pyro.get_param_store().load(path)``, ``set_state``,
  a user's ``pyro.param``): its values are copied into the model first, as ``pyro.module``
  itself does, so restoring a saved store restores the model.

A store value of the wrong shape raises :class:`~pyro_vae.errors.ConfigError` in one line.
"""

from __future__ import annotations

import weakref

import pyro
import torch
from pyro.params import param_with_module_name
from torch import nn
from torch.distributions import constraints, transform_to

from pyro_vae.errors import ConfigError

#: what ``pyro.module`` puts between the module's name and a parameter's (``"$$$"``)
_MODULE_DIVIDER = param_with_module_name("", "")

# id(tensor) -> tensor, for every tensor a pyro-vae model placed in the store (weak: a model
# that is garbage-collected leaves no entry)
_OWNED: weakref.WeakValueDictionary[int, torch.Tensor] = weakref.WeakValueDictionary()


def _owned(tensor: torch.Tensor) -> bool:
    return _OWNED.get(id(tensor)) is tensor


def _claim(name: str, unconstrained: torch.Tensor, constraint: constraints.Constraint) -> None:
    """Make ``unconstrained`` the store's tensor for ``name`` (see the module docstring), through
    the store's public ``named_parameters`` / ``__delitem__`` / ``set_state``."""
    store = pyro.get_param_store()
    held = dict(store.named_parameters()).get(name)
    if held is unconstrained:
        return
    if held is not None:
        if not _owned(held):
            if held.shape != unconstrained.shape:
                raise ConfigError(
                    f"Pyro's param store holds {name!r} with shape {tuple(held.shape)}, this "
                    f"model's has shape {tuple(unconstrained.shape)}; call "
                    "pyro.clear_param_store() before using a model of another shape"
                )
            with torch.no_grad():
                unconstrained.copy_(held.to(unconstrained.device, unconstrained.dtype))
        del store[name]
    # set_state stores the given unconstrained tensor itself (``store[name] = v`` would store
    # a transformed copy for a constrained param)
    store.set_state({"params": {name: unconstrained}, "constraints": {name: constraint}})
    _OWNED[id(unconstrained)] = unconstrained


def register_module(name: str, module: nn.Module) -> nn.Module:
    """``pyro.module(name, module)`` with ``module``'s own parameters as the store's tensors."""
    for param_name, value in module.named_parameters():
        if value.requires_grad:
            _claim(param_with_module_name(name, param_name), value, constraints.real)
    return pyro.module(name, module)


def register_param(name: str, unconstrained: torch.Tensor,
                   constraint: constraints.Constraint = constraints.real) -> torch.Tensor:
    """``pyro.param(name)`` whose unconstrained tensor is ``unconstrained`` (a model's
    ``nn.Parameter``); returns the constrained value, as ``pyro.param`` does."""
    _claim(name, unconstrained, constraint)
    return pyro.param(name, lambda: transform_to(constraint)(unconstrained.detach()),
                      constraint=constraint)


def module_of(fn: object) -> nn.Module | None:
    """The ``nn.Module`` behind a model or guide: the object itself, or the module a bound
    method belongs to; ``None`` for a plain function."""
    owner = getattr(fn, "__self__", fn)
    return owner if isinstance(owner, nn.Module) else None


def shadowed_module_params(trace: pyro.poutine.Trace) -> dict[str, torch.Tensor]:
    """The parameters a ``pyro.module`` call in ``trace`` (a ``param_only`` trace) registered
    while the store already held *another* tensor under the same name, by store name: the
    module's forward pass uses its own tensor (the site's ``args[1]``), SVI steps the store's
    (the site's value), which gets no gradient — a second instance of a model registered under
    the same module name, the commonest way a Pyro model silently fails to train."""
    shadowed = {}
    for name, site in trace.nodes.items():
        if site["type"] != "param" or _MODULE_DIVIDER not in name or len(site["args"]) < 2:
            continue
        own = site["args"][1]
        if isinstance(own, nn.Parameter) and own is not site["value"]:
            shadowed[name] = own
    return shadowed


def adopt_module_params(params: dict[str, torch.Tensor]) -> None:
    """Make each module's own tensor the store's under its name (what :func:`register_module`
    does before registering; the store's previous tensor, another instance's, is dropped from
    the store but stays that instance's own weight)."""
    store = pyro.get_param_store()
    for name, own in params.items():
        if name in store:
            del store[name]
        store.set_state({"params": {name: own}, "constraints": {name: constraints.real}})
