"""Memory budgets checked *before* allocation: every size a user controls is compared with what
it will allocate, so an absurd option is a one-line error naming it, not a process that
allocates until the kernel kills it.

The budget is the memory the machine has available now (``MemAvailable`` of ``/proc/meminfo``,
else the physical memory), capped by what an address-space limit (``RLIMIT_AS``) leaves;
``$PYRO_VAE_MEMORY_BUDGET`` (bytes) overrides it. The estimates are deliberately rough (a
factor of two either way): they catch options that are off by orders of magnitude, not tune
batch sizes.

:func:`per_sample_elements` is the memory one draw of z costs in a forward pass through the
decoder — its hidden activations as well as the likelihood's parameters — which is what
importance sampling, AIS and the gap report chunk by (on low-dimensional data the hidden
activations dominate: 128 × 3 hidden units against 2 data dimensions on moons).
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Iterable

from torch import nn

from pyro_vae.errors import ConfigError

#: bytes per float32 element
FLOAT_BYTES = 4
#: elements one evaluation chunk may hold by default (64 MiB of float32)
CHUNK_ELEMENTS = 2**24


def memory_budget() -> int:
    """Bytes this process may allocate (module docstring)."""
    override = os.environ.get("PYRO_VAE_MEMORY_BUDGET")
    if override:
        try:
            return max(1, int(float(override)))
        except ValueError:
            raise ConfigError(f"PYRO_VAE_MEMORY_BUDGET={override!r} is not a number of bytes; "
                              "unset it or give e.g. 8e9") from None
    available = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    if available is None:
        try:
            available = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            available = 8 * 2**30
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft not in (resource.RLIM_INFINITY, -1) and soft > 0:
            available = min(available, max(0, soft - _address_space_in_use()))
    except (ImportError, ValueError, OSError):
        pass
    return available


def _address_space_in_use() -> int:
    """The process's virtual size (``VmSize``), which an ``RLIMIT_AS`` limit counts."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def gib(num_bytes: float) -> str:
    return f"{num_bytes / 2**30:.3g} GiB"


def check_memory(what: str, num_bytes: float, fix: str) -> None:
    """Raise :class:`ConfigError` when ``what`` would need more than the budget."""
    budget = memory_budget()
    if not math.isfinite(num_bytes) or num_bytes > budget:
        raise ConfigError(f"{what} would need about {gib(num_bytes)}, more than the "
                          f"{gib(budget)} this machine has available; {fix}")


def mlp_parameters(widths: Iterable[int]) -> int:
    """Weights and biases of a chain of linear layers through ``widths``."""
    w = list(widths)
    return sum(a * b + b for a, b in itertools.pairwise(w))


def per_sample_elements(vae: nn.Module) -> int:
    """Float elements one draw of z occupies in a forward pass of the decoder: every linear or
    convolutional layer's output, plus the likelihood's parameters per data point."""
    total = math.prod(getattr(vae, "event_shape", (1,))) * getattr(
        getattr(vae, "likelihood", None), "num_params", 1)
    decoder = getattr(vae, "decoder", vae)
    for module in decoder.modules() if isinstance(decoder, nn.Module) else ():
        if isinstance(module, nn.Linear):
            total += 2 * module.out_features  # pre- and post-activation
        elif isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
            total += 2 * module.out_channels * 32 * 32  # a generous spatial size
    return total


def samples_per_chunk(vae: nn.Module, num_points: int, limit: int = CHUNK_ELEMENTS) -> int:
    """How many draws of z per data point fit a chunk of ``limit`` elements for ``num_points``
    points at once (at least 1)."""
    return max(1, limit // max(1, num_points * per_sample_elements(vae)))


def points_per_chunk(vae: nn.Module, draws: int, limit: int = CHUNK_ELEMENTS) -> int:
    """How many data points fit a chunk of ``limit`` elements with ``draws`` draws of z each
    (at least 1)."""
    return max(1, limit // max(1, draws * per_sample_elements(vae)))


def check_draws(vae: nn.Module, draws: int, what: str, option: str) -> None:
    """One chunk must hold at least one point's ``draws`` draws (AIS chains, say) at once;
    ``what`` names them in the error (``"--ais-chains 16 (+ 4 pilot chains)"``)."""
    need = draws * per_sample_elements(vae) * FLOAT_BYTES * 3  # values, gradients, temporaries
    check_memory(what, need, f"lower {option}")

