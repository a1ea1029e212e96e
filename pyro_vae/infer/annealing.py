"""KL-weight schedules β(t) for β-VAEs and KL annealing.

The trainer evaluates the schedule at every optimization step t (0-based) and passes β to the
model and guide, which weight site ``"z"`` by it (:func:`pyro_vae.models.kl_scale`): the
objective becomes ``E_q[log p(x|z)] - β(t) KL(q ‖ p)``. The ramps start at β_max / ramp_steps,
as in Bowman et al. (2016); β = 0 itself is allowed (``--beta 0``) and drops the KL term.

* ``constant``: β(t) = β_max.
* ``linear`` (warm-up, Bowman et al. 2016): β(t) = β_max · min(1, (t + 1) / T_warm).
* ``cyclical`` (Fu et al. 2019): the run is split into C cycles of length P = T / C; within each,
  β rises linearly over the first fraction R of the cycle and stays at β_max for the rest:
  β(t) = β_max · min(1, (t mod P + 1) / (R P)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pyro_vae.errors import ConfigError

if TYPE_CHECKING:
    from pyro_vae.config import Config


@dataclass(frozen=True)
class KLSchedule:
    """β(t) as described in the module docstring; call it with the global step t."""

    kind: str = "constant"
    beta: float = 1.0
    warmup_steps: int = 1
    total_steps: int = 1
    cycles: int = 4
    ramp: float = 0.5

    @classmethod
    def for_run(cls, config: Config, steps_per_epoch: int) -> KLSchedule:
        """The schedule ``config`` asks for, over ``config.epochs`` epochs of
        ``steps_per_epoch`` optimization steps."""
        return cls(config.kl_schedule, config.beta,
                   warmup_steps=config.warmup_epochs * steps_per_epoch,
                   total_steps=steps_per_epoch * max(1, config.epochs), cycles=config.cycles,
                   ramp=config.cycle_ramp)

    def __call__(self, step: int) -> float:
        if self.kind == "constant":
            return self.beta
        if self.kind == "linear":
            return self.beta * min(1.0, (step + 1) / max(1, self.warmup_steps))
        if self.kind == "cyclical":
            period = max(1, math.ceil(self.total_steps / self.cycles))
            ramp_steps = max(1.0, self.ramp * period)
            return self.beta * min(1.0, (step % period + 1) / ramp_steps)
        raise ConfigError(f"unknown --kl-schedule {self.kind!r}; choose constant, linear or "
                          "cyclical")
