"""Where a default training step's time goes: the README run's JIT step split into its phases,
timed on the trainer's own objects, with the per-epoch evaluation beside it.

The default path (:class:`pyro_vae.infer.steps.JitStep`) is, per mini-batch: the batch
(``MiniBatches.batch``: gather the points, draw the dynamic binarization), the loss (Pyro's
``JitTrace_ELBO``: the traced forward graph, replayed with Pyro's parameter bookkeeping), the
backward pass (autograd over that graph), the finiteness check, ``Adam.step`` and
``zero_grad``. This script calls exactly those objects in that order, timing each, so the
phases add up to the step (the check printed at the end compares their sum with
``Trainer.train_epoch``'s own seconds on the same trainer). A torch-profiler table of aten ops
(self time) follows with ``--ops``.

    python benchmarks/step_profile.py                   # digits, the README's run, 1 thread
    python benchmarks/step_profile.py --dataset moons --epochs 20 --ops
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

import pyro
import torch

from pyro_vae import Config, Trainer
from pyro_vae.data import prepare_data
from pyro_vae.infer.steps import JitStep, all_finite


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", default="digits")
    p.add_argument("--epochs", type=int, default=20, help="timed epochs (after 2 warm-up ones)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--ops", action="store_true", help="also print the aten ops' self times")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    config = Config(dataset=args.dataset, compile=False).resolved()
    pyro.set_rng_seed(0)
    trainer = Trainer.from_config(config, prepare_data(config))
    for _ in range(2):
        trainer.train_epoch()
    jit = trainer.step
    assert isinstance(jit, JitStep), type(jit)
    step, optimizer = jit.step, jit.step.optimizer
    phases: dict[str, float] = defaultdict(float)
    steps, evaluation = 0, 0.0

    def timed(name: str, fn, *a, **k):
        start = time.perf_counter()
        out = fn(*a, **k)
        phases[name] += time.perf_counter() - start
        return out

    for _ in range(args.epochs):
        it = iter(trainer.batches.epoch())
        while True:
            batch = timed("batch (gather + binarize)", next, it, None)
            if batch is None:
                break
            x, y, idx = batch.args
            beta = trainer.schedule(trainer.global_step)
            with trainer._trusted(), torch.jit.optimized_execution(False):
                timed("zero_grad", optimizer.zero_grad, set_to_none=True)
                loss = timed("loss: JIT forward graph + Pyro's replay bookkeeping", jit.loss,
                             x, y, idx, beta)
                timed("backward (autograd)", loss.backward)
                value = timed("loss to Python", float, loss.detach())
                ok = timed("finiteness check", all_finite, value,
                           [q.grad for q in step.params if q.grad is not None])
                assert ok
                timed("Adam.step (fused)", optimizer.step)
            trainer.global_step += 1
            steps += 1
        start = time.perf_counter()
        trainer.evaluate()
        evaluation += time.perf_counter() - start
    step_total = sum(phases.values())
    print(f"{config.dataset}: {steps} steps of batch {config.batch_size}, {args.threads} "
          f"thread(s); per step:")
    for name, seconds in sorted(phases.items(), key=lambda kv: -kv[1]):
        print(f"  {name:55s} {seconds / steps * 1e3:7.3f} ms  ({seconds / step_total:5.1%})")
    print(f"  {'sum':55s} {step_total / steps * 1e3:7.3f} ms")
    per_epoch = steps / args.epochs
    print(f"per epoch: steps {step_total / args.epochs * 1e3:.1f} ms ({per_epoch:.0f} steps), "
          f"evaluation {evaluation / args.epochs * 1e3:.1f} ms")
    seconds = [trainer.train_epoch()["seconds"] for _ in range(5)]
    print(f"check: Trainer.train_epoch's own step time {min(seconds) * 1e3:.1f}–"
          f"{max(seconds) * 1e3:.1f} ms per epoch")
    if args.ops:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(3):
                trainer.train_epoch()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))


if __name__ == "__main__":
    main()
