"""The SVI trainer: learning, KL schedules, LR schedules, JIT paths, NaN handling, resume."""

from __future__ import annotations

import math

import pyro
import pytest
import torch

from pyro_vae import Config, KLSchedule, TrainingDivergedError, train_run
from pyro_vae.checkpoint import load_checkpoint
from pyro_vae.data import prepare_data
from pyro_vae.data.datasets import DataSet
from pyro_vae.infer.trainer import Trainer

SMALL = dict(dataset="digits", hidden=(32,), latent_dim=2, max_train=256, max_test=64,
             batch_size=64, lr=3e-3)


def small_config(**changes) -> Config:
    return Config(**{**SMALL, **changes}).resolved()


def fit(config: Config, epochs: int) -> Trainer:
    pyro.set_rng_seed(config.seed)
    trainer = Trainer.from_config(config, prepare_data(config))
    for _ in range(epochs):
        trainer.train_epoch()
    return trainer


def test_training_improves_the_test_elbo_and_records_every_metric():
    trainer = fit(small_config(epochs=15), 15)
    first, last = trainer.history[0], trainer.history[-1]
    assert last["test_elbo"] > first["test_elbo"] + 1.0
    for key in ("train_loss", "train_elbo", "train_recon", "train_kl", "test_elbo",
                "test_recon", "test_kl", "test_elbo_se", "beta", "lr", "seconds"):
        assert math.isfinite(last[key]), key
    assert last["test_elbo"] == pytest.approx(last["test_recon"] - last["test_kl"], abs=1e-4)


@pytest.mark.parametrize("elbo", ["trace", "meanfield"])
def test_jit_and_eager_paths_take_the_same_steps(elbo):
    """Same seed, same draws, same updates: the JIT-compiled ELBO (default) and Pyro's eager
    one agree step for step, β annealing included (β is a tensor input of the graph)."""
    options = dict(epochs=3, elbo=elbo, kl_schedule="linear", warmup_epochs=2)
    jit = fit(small_config(jit=True, **options), 3)
    eager = fit(small_config(jit=False, **options), 3)
    for a, b in zip(jit.history, eager.history, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        assert a["test_elbo"] == pytest.approx(b["test_elbo"], rel=1e-4)
    assert jit.history[-1]["test_elbo"] > jit.history[0]["test_elbo"]


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 64, 64)])
def test_conv_jit_and_eager_paths_take_the_same_steps(shape):
    """The conv networks compile too (every network tensor reaches the traced graph as an
    input, none is baked in as a constant; the 64×64 one has batch norm, whose running
    statistics the graph updates in place) and the compiled ELBO takes the eager steps."""
    gen = torch.Generator().manual_seed(0)
    images = torch.bernoulli(torch.rand(48, *shape, generator=gen), generator=gen)
    data = DataSet("random-images", images[:32], images[32:], None, None, "image")
    histories, buffers = [], []
    for jit in (True, False):
        config = Config(arch="conv", latent_dim=4, batch_size=16, epochs=2, jit=jit,
                        likelihood="bernoulli", binarize="none").resolved()
        pyro.set_rng_seed(0)
        trainer = Trainer.from_config(config, data)
        histories.append([trainer.train_epoch() for _ in range(2)])
        buffers.append(trainer.vae.encoder.state_dict())
    for a, b in zip(*histories, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        assert a["test_elbo"] == pytest.approx(b["test_elbo"], rel=1e-4)
    for key, value in buffers[0].items():  # batch norm's statistics move in the graph too
        if "running_mean" in key:
            assert value.abs().max() > 0.01
            torch.testing.assert_close(value, buffers[1][key], rtol=0, atol=5e-3, msg=key)


def test_particles_optimizer_and_lr_schedules():
    trainer = fit(small_config(epochs=3, num_particles=4, optimizer="clipped-adam",
                               lr_schedule="exponential", lr_decay=0.5), 3)
    assert trainer.current_lr() == pytest.approx(3e-3 * 0.5**3)
    trainer = fit(small_config(epochs=4, lr_schedule="cosine"), 2)
    assert trainer.current_lr() == pytest.approx(0.5 * 3e-3 * (1 + math.cos(math.pi * 2 / 4)))


def test_kl_schedules():
    assert KLSchedule("constant", 0.5)(123) == 0.5
    warm = KLSchedule("linear", 2.0, warmup_steps=10)
    assert [warm(t) for t in (0, 4, 9, 50)] == pytest.approx([0.2, 1.0, 2.0, 2.0])
    cyc = KLSchedule("cyclical", 1.0, total_steps=40, cycles=4, ramp=0.5)
    assert [cyc(t) for t in (0, 4, 5, 9, 10, 14)] == pytest.approx([0.2, 1.0, 1.0, 1.0, 0.2, 1.0])
    assert min(cyc(t) for t in range(40)) > 0


def test_annealed_beta_reaches_the_model_and_guide():
    trainer = fit(small_config(epochs=4, kl_schedule="linear", warmup_epochs=2, jit=False), 1)
    assert trainer.history[0]["beta"] == pytest.approx(0.5)  # 4 of 8 warm-up steps done
    seen = []
    original = trainer.vae.model

    def spy(x, y=None, indices=None, beta=1.0):
        seen.append(float(beta))
        return original(x, y, indices, beta)

    trainer.step.model = spy  # the eager step's model (jit=False)
    trainer.train_epoch()
    assert seen == pytest.approx([5 / 8, 6 / 8, 7 / 8, 1.0])


def test_nan_loss_stops_with_the_epoch_named(monkeypatch):
    trainer = fit(small_config(epochs=3, jit=False), 1)
    calls = {"n": 0}
    real = trainer.elbo.differentiable_loss

    def flaky(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)  # the loss and every gradient become NaN at call 2
        return loss * float("nan") if calls["n"] == 2 else loss

    monkeypatch.setattr(trainer.elbo, "differentiable_loss", flaky)
    before = {k: v.detach().clone() for k, v in pyro.get_param_store().items()}
    with pytest.raises(TrainingDivergedError, match="epoch 2, step 2"):
        trainer.train_epoch()
    # the step before the NaN was applied, the NaN step was not: all params still finite
    assert all(torch.isfinite(v).all() for v in pyro.get_param_store().values())
    assert any(not torch.equal(before[k], v) for k, v in pyro.get_param_store().items())


def test_finite_loss_with_a_nan_gradient_is_caught(monkeypatch):
    trainer = fit(small_config(epochs=3, jit=False), 1)
    real = trainer.elbo.differentiable_loss
    weight = trainer.vae.encoder.parameters().__next__()

    class NaNGrad(torch.autograd.Function):
        @staticmethod
        def forward(ctx, p):
            return p.new_zeros(())

        @staticmethod
        def backward(ctx, grad):
            return torch.full_like(weight, float("nan"))

    def flaky(*args, **kwargs):
        return real(*args, **kwargs) + NaNGrad.apply(weight)

    monkeypatch.setattr(trainer.elbo, "differentiable_loss", flaky)
    before = weight.detach().clone()
    with pytest.raises(TrainingDivergedError, match="epoch 2, step 1"):
        trainer.train_epoch()
    assert torch.equal(weight.detach(), before)


def test_skip_nonfinite_counts_skipped_steps(monkeypatch):
    # the eager step's objective (the JIT step runs the same step on its own ELBO)
    trainer = fit(small_config(epochs=3, skip_nonfinite=True, jit=False), 1)
    calls = {"n": 0}
    real = trainer.elbo.differentiable_loss

    def flaky(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("inf") if calls["n"] in (1, 3) else loss

    monkeypatch.setattr(trainer.elbo, "differentiable_loss", flaky)
    metrics = trainer.train_epoch()
    assert metrics["skipped_steps"] == 2 and math.isfinite(metrics["train_loss"])


def test_nan_during_a_run_keeps_the_last_good_checkpoint(tmp_path):
    config = small_config(epochs=4, checkpoint_every=1)  # a checkpoint after every epoch

    def poison(metrics):
        if metrics["epoch"] == 2:  # corrupt the decoder after epoch 2 was checkpointed
            for name, value in pyro.get_param_store().items():
                if name.startswith("decoder"):
                    value.data.fill_(float("nan"))

    with pytest.raises(TrainingDivergedError, match=r"epoch 3, step 1.*epoch 2"):
        train_run(config, tmp_path / "run", progress=False, on_epoch=poison, figures=False)
    state = load_checkpoint(tmp_path / "run")
    assert state["epoch"] == 2
    assert all(torch.isfinite(t).all() for t in state["model"].values())


def _comparable(history):
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history]


@pytest.mark.parametrize("changes", [{}, {"dataset": "moons", "hidden": (16,)},
                                     {"elbo": "meanfield", "likelihood": "continuous-bernoulli",
                                          "binarize": "none", "kl_schedule": "cyclical",
                                          "lr_schedule": "exponential"}])
def test_resume_gives_the_same_numbers_as_an_uninterrupted_run(tmp_path, changes):
    changes = {**changes, "checkpoint_every": 1}  # the crash after epoch 2 finds it saved
    full = train_run(small_config(epochs=4, **changes), tmp_path / "full", progress=False,
                     figures=False)

    class CrashError(Exception):
        pass

    def crash_after_epoch_2(metrics):
        if metrics["epoch"] == 2:
            raise CrashError

    with pytest.raises(CrashError):
        train_run(small_config(epochs=4, **changes), tmp_path / "part", progress=False,
                  figures=False, on_epoch=crash_after_epoch_2)
    assert load_checkpoint(tmp_path / "part")["epoch"] == 2
    resumed = train_run(small_config(epochs=4, **changes), tmp_path / "part", resume=True,
                        progress=False, figures=False)
    assert _comparable(resumed.history) == _comparable(full.history)
    a = load_checkpoint(tmp_path / "full")["model"]
    b = load_checkpoint(tmp_path / "part")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_learned_obs_scale_is_trained_and_checkpointed(tmp_path):
    config = Config(dataset="moons", hidden=(32, 32), epochs=3, max_train=500, max_test=100,
                    likelihood="gaussian-learned").resolved()
    result = train_run(config, tmp_path / "m", progress=False, figures=False)
    state = load_checkpoint(tmp_path / "m")
    sigma = math.exp(float(state["model"]["obs_scale_unconstrained"]))
    assert sigma == pytest.approx(result.history[-1]["obs_scale"])
    assert sigma != pytest.approx(0.1)
