"""Issue 27's contract: one loop whose every step strategy trains what it names.

* a captured Python value (an annealed noise scale, a flag a Python branch reads) that changes
  between epochs reaches the JIT and compiled steps: their losses equal eager's;
* a second and third instance of a model registered with plain ``pyro.module`` trains;
* the JIT, compiled, distributed and semi-supervised paths take the eager reference's first
  steps (losses and gradients) for the objectives and estimators the CLI accepts.
"""

from __future__ import annotations

import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO
from torch import nn

from pyro_vae import Config, ModelGuide
from pyro_vae.data.datasets import DataSet
from pyro_vae.infer.trainer import Trainer
from tests.common import assert_one_line_error

D, L = 4, 2


def gaussian_data(n: int = 96, seed: int = 0) -> DataSet:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(L, D, generator=g)
    x = torch.randn(2 * n, L, generator=g) @ w + 0.3 * torch.randn(2 * n, D, generator=g)
    return DataSet("toy", x[:n], x[n:], None, None, "vector")


class Annealed(nn.Module):
    """A user's VAE whose noise scale (and, with ``student``, likelihood family) are plain
    Python attributes the user changes between epochs."""

    def __init__(self) -> None:
        super().__init__()
        self.dec = nn.Linear(L, D)
        self.enc = nn.Linear(D, 2 * L)
        self.noise = 1.0
        self.student = False

    def model(self, x):
        pyro.module("annealed_dec", self.dec)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([L]).to_event(1))
            loc = self.dec(z)
            obs = dist.StudentT(3.0, loc, self.noise) if self.student \
                else dist.Normal(loc, self.noise)
            pyro.sample("x", obs.to_event(1), obs=x)

    def guide(self, x):
        pyro.module("annealed_enc", self.enc)
        loc, log_scale = self.enc(x).chunk(2, -1)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))


SCHEDULES = {"noise": [("noise", 1.0), ("noise", 0.5), ("noise", 0.2)],
             "branch": [("student", False), ("student", True), ("student", False)]}


def train_with_schedule(schedule, **options):
    pyro.clear_param_store()
    torch.manual_seed(0)
    user = Annealed()
    trainer = Trainer(user, gaussian_data(), Config(epochs=3, batch_size=32, lr=1e-2,
                                                     **options))
    losses = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for attr, value in schedule:
            setattr(user, attr, value)
            losses.append(trainer.train_epoch()["train_loss"])
    return losses, trainer, [str(w.message) for w in caught]


@pytest.mark.parametrize("kind", sorted(SCHEDULES))
@pytest.mark.parametrize("path", ["jit", "compiled"])
def test_a_changed_python_value_reaches_the_traced_steps(kind, path, monkeypatch):
    monkeypatch.setattr(Trainer, "compile_backend", "aten")  # the guard is the backend's twin
    schedule = SCHEDULES[kind]
    eager, _, _ = train_with_schedule(schedule, jit=False, compile=False)
    traced, trainer, messages = train_with_schedule(
        schedule, jit=path == "jit", compile=path == "compiled")
    assert trainer.step_path == path
    assert traced == pytest.approx(eager, rel=1e-5)
    # the second and third epochs trained a different objective from the first
    assert abs(eager[1] - eager[0]) > 0.05 * abs(eager[0])
    retraced = [m for m in messages if "re-tracing" in m]
    assert len(retraced) == 2
    assert all((kind == "noise" and "noise" in m) or (kind == "branch" and "student" in m)
               for m in retraced)


def test_too_many_changes_fall_back_to_eager(monkeypatch):
    monkeypatch.setattr(Trainer, "compile_backend", "aten")
    schedule = [("noise", 1.0 - 0.1 * k) for k in range(7)]
    eager, _, _ = train_with_schedule(schedule, jit=False, compile=False)
    traced, trainer, messages = train_with_schedule(schedule, jit=False, compile=True)
    assert traced == pytest.approx(eager, rel=1e-5)
    assert trainer.step_path == "eager"
    assert any("training goes on eagerly" in m for m in messages)


class PlainModule(nn.Module):
    """The Pyro tutorial's way: networks registered with plain ``pyro.module`` under fixed
    names, so every instance shares the names."""

    def __init__(self) -> None:
        super().__init__()
        self.dec, self.enc = nn.Linear(L, D), nn.Linear(D, 2 * L)

    def model(self, x):
        pyro.module("decoder", self.dec)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([L]).to_event(1))
            pyro.sample("x", dist.Normal(self.dec(z), 0.5).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("encoder", self.enc)
        loc, log_scale = self.enc(x).chunk(2, -1)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))


def test_second_and_third_instances_of_a_plain_pyro_module_model_train():
    pyro.clear_param_store()
    data = gaussian_data()
    torch.manual_seed(0)
    first = PlainModule()
    Trainer(first, data, Config(epochs=2, batch_size=32, lr=1e-2)).fit()
    for _ in range(2):  # the store holds the previous instance's tensors under these names
        user = PlainModule()
        before = [p.detach().clone() for p in user.parameters()]
        with pytest.warns(UserWarning, match=r"pyro.module 'decoder', 'encoder'.*own tensors"):
            trainer = Trainer(user, data, Config(epochs=8, batch_size=32, lr=1e-2))
        history = trainer.fit()
        moved = [float((p.detach() - b).abs().max()) for p, b in zip(user.parameters(), before,
                                                                       strict=True)]
        assert min(moved) > 1e-3
        assert history[-1]["test_elbo"] > history[0]["test_elbo"] + 0.5
        # and the store's tensors are this instance's own
        store = dict(pyro.get_param_store().named_parameters())
        assert store["decoder$$$weight"] is user.dec.weight


# --------------------------------------------------------------------------- same first steps
def first_steps(config: Config, data: DataSet, steps: int = 2):
    """Losses of the first steps and the parameters after them, eager on the same seed."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    trainer = Trainer.from_config(config, data)
    batches = trainer.batches.epoch()
    losses = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(steps):
            batch = next(batches)
            with trainer.vae.trusted_inputs():  # as the loop calls it
                losses.append(trainer.step(*batch.args, 0.7))
    assert not [w for w in caught if "step" in str(w.message)]  # no re-tracing, no fallback
    return losses, {k: v.detach().clone() for k, v in trainer.params.items()}, trainer.step_path


SMALL = dict(dataset="digits", hidden=(16,), latent_dim=2, max_train=128, max_test=32,
             batch_size=32, lr=1e-2, epochs=1)
COMBOS = [dict(), dict(elbo="meanfield"), dict(objective="iwae", num_particles=3),
          dict(objective="iwae", estimator="dreg", num_particles=3),
          dict(objective="iwae", estimator="stl", num_particles=3),
          dict(objective="miwae", num_particles=2, num_groups=2),
          dict(objective="ciwae", num_particles=3), dict(objective="piwae", num_particles=3),
          dict(estimator="stl"), dict(estimator="score"), dict(estimator="score-nn")]
#: the distributed module takes every combination the single-process trainer does
DDP_COMBOS = [*COMBOS, dict(estimator="score-avg"),
              *(dict(latent="bernoulli", estimator=e, latent_dim=3,
                     num_particles=2 if e in ("rloo", "vimco") else 1)
                for e in ("score-nn", "vimco", "enum", "arm", "disarm", "rloo", "relaxed"))]


def combo_id(combo: dict) -> str:
    return "-".join(map(str, combo.values())) or "elbo"


@pytest.fixture(scope="module")
def digits():
    from pyro_vae.data import prepare_data

    return prepare_data(Config(**SMALL).resolved())


@pytest.mark.parametrize("combo", COMBOS, ids=combo_id)
def test_compiled_and_jit_take_the_eager_first_steps(combo, digits, monkeypatch):
    monkeypatch.setattr(Trainer, "compile_backend", "aten")
    reference = first_steps(Config(**SMALL, **combo, jit=False, compile=False), digits, 3)
    paths = {"compiled": dict(compile=True, jit=False)}
    if not Config(**SMALL, **combo).uses_custom_objective():
        paths["jit"] = dict(jit=True, compile=False)
    assert reference[2] == "eager"
    for path, options in paths.items():
        losses, params, step_path = first_steps(Config(**SMALL, **combo, **options), digits, 3)
        assert step_path == path
        assert losses == pytest.approx(reference[0], rel=1e-5)
        for name, value in params.items():
            assert torch.allclose(value, reference[1][name], atol=1e-5), name


@pytest.mark.parametrize("combo", DDP_COMBOS, ids=combo_id)
def test_the_distributed_module_trains_the_configured_objective(combo, digits):
    """DDP's training_step returns the loss the single-process trainer steps: same seed, same
    batch, same value and gradients (before this design it always trained Trace_ELBO)."""
    pytest.importorskip("lightning")
    from pyro_vae.infer.distributed import VAELightningModule

    config = Config(**{**SMALL, **combo}, strategy="ddp", jit=False).resolved()
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    module = VAELightningModule(config, digits)
    idx = torch.arange(32)
    batch = module.batch(idx)
    torch.manual_seed(1)
    loss = module.core.loss(*batch.args, 0.7)
    grads = torch.autograd.grad(loss, list(module.trained.values()), allow_unused=True)
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    single = Trainer.from_config(config.replace(strategy="single"), digits)
    torch.manual_seed(1)
    expected = single.step.loss(*batch.args, 0.7)
    expected_grads = torch.autograd.grad(expected, list(single.params.values()),
                                         allow_unused=True)
    assert float(loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-6)
    assert type(module.core.elbo) is type(single.elbo)
    for a, b in zip(grads, expected_grads, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            assert torch.allclose(a, b, atol=1e-6)


def test_semi_supervised_steps_are_the_eager_objective(digits):
    """M2 runs through the same loop and step: one step's loss is the sum of its three ELBO
    terms computed by hand on the same draws."""
    config = Config(**{**SMALL, "hidden": (16,)}, model="m2", labels=20).resolved()
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    trainer = Trainer.from_config(config, digits)
    batch = next(trainer.batches.epoch())
    x_u, pos_u, x_l, y_l, pos_l = batch.args
    vae = trainer.vae
    torch.manual_seed(3)
    value = trainer.step(*batch.args, 1.0)
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    again = Trainer.from_config(config, digits)
    torch.manual_seed(3)
    from pyro.infer import TraceEnum_ELBO

    parts = TraceEnum_ELBO(max_plate_nesting=1).differentiable_loss(
        again.vae.model, again.vae.guide, x_u, None, pos_u, 1.0)
    parts = parts + Trace_ELBO().differentiable_loss(again.vae.model, again.vae.guide, x_l, y_l,
                                                     pos_l, 1.0)
    parts = parts + Trace_ELBO().differentiable_loss(again.vae.classify_model,
                                                     again.vae.classify_guide, x_l, y_l, pos_l)
    assert value == pytest.approx(float(parts.detach()), rel=1e-5)
    assert vae is not again.vae


def test_a_pyro_elbo_and_optimizer_train_a_user_model():
    """Trainer(model, guide, loss, optim, data): the loss a Pyro ELBO, the optimizer a Pyro one."""
    pyro.clear_param_store()
    torch.manual_seed(0)
    user = PlainModule()
    trainer = Trainer(user.model, user.guide, Trace_ELBO(num_particles=2),
                      pyro.optim.Adam({"lr": 2e-2}), gaussian_data(),
                      Config(epochs=6, batch_size=32))
    assert isinstance(trainer.optimizer, torch.optim.Adam)
    assert trainer.optimizer.param_groups[0]["lr"] == 2e-2
    history = trainer.fit()
    assert history[-1]["test_elbo"] > history[0]["test_elbo"] + 0.5
    assert isinstance(trainer.vae, ModelGuide)


def test_an_autonormal_guide_trains_through_the_trainer():
    """An autoguide takes ``*args`` and passes them to the model: it gets what the model takes
    (as SVI gives both the same arguments), and it sizes its per-point parameters from the
    full batch the trainer discovers its parameters on."""
    from pyro.infer.autoguide import AutoNormal

    pyro.clear_param_store()
    torch.manual_seed(0)
    data = gaussian_data(n=64)
    dec = nn.Linear(L, D)

    def model(x):
        pyro.module("autonormal_dec", dec)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(L), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(dec(z), 0.5).to_event(1), obs=x)

    trainer = Trainer(model, AutoNormal(model), Trace_ELBO(), pyro.optim.Adam({"lr": 5e-2}),
                      data, Config(epochs=80, batch_size=64))
    trainer.evaluate = lambda: {}  # per-point parameters of the training points only
    history = trainer.fit()
    assert history[-1]["train_loss"] < history[0]["train_loss"] - 1.0


@pytest.mark.parametrize("path", ["pyro-elbo", "jit"])
def test_a_first_step_that_fails_is_one_library_error(path):
    """A model whose observation site has the wrong width: one ModelError that carries Pyro's
    reason (not only its "Error while computing log_prob at site 'x':" line), on the eager step
    and on the JIT step, whose first run is its tracing."""
    pyro.clear_param_store()

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([3]).to_event(1))
            pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)  # 3 ≠ D: a shape error

    def guide(x):
        loc = pyro.param("loc", torch.zeros(3))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, 1.0).to_event(1))

    from pyro_vae import ModelError

    if path == "jit":
        trainer = Trainer(ModelGuide(model, guide), gaussian_data(n=64),
                          Config(epochs=1, batch_size=32, jit=True))
    else:
        trainer = Trainer(model, guide, Trace_ELBO(), pyro.optim.Adam({"lr": 1e-2}),
                          gaussian_data(n=64), Config(epochs=1, batch_size=32))
    assert trainer.step.name == ("jit" if path == "jit" else "eager")
    error = assert_one_line_error(trainer.fit)
    assert isinstance(error, ModelError)
    assert str(error).startswith("the first training step fails (ValueError: Error while computing "
                              "log_prob at site 'x': Value is not broadcastable")


@pytest.mark.parametrize("jit", [True, False])
def test_data_outside_the_likelihoods_support_is_a_data_error_not_a_divergence(jit):
    """Pixel intensities scored by a user's Bernoulli model: torch rejects them with "invalid
    values", the words of a diverged decoder's NaN logits — which the eager step used to report
    as "the loss became nan ... lower --lr", and the JIT step's tracing as Pyro's raw error."""
    from pyro_vae import DataError
    from pyro_vae.models.two_layer import TwoLayerVAE

    data = gaussian_data(n=64)
    data = DataSet("toy", torch.sigmoid(data.x_train), torch.sigmoid(data.x_test), None, None,
                   "vector")
    pyro.clear_param_store()
    vae = TwoLayerVAE((D,), latent_dims=(2, 1), hidden=((8,), (4,)), num_data=64)
    trainer = Trainer(vae, data, Config(epochs=1, batch_size=32, jit=jit))
    error = assert_one_line_error(trainer.fit)
    assert isinstance(error, DataError)
    message = str(error)
    assert message.startswith("the value at site 'x' (shape (32, 4)) is outside the support "
                              "Boolean() of its Bernoulli distribution")
    assert "--binarize" in message


def test_the_readme_run_on_its_default_path_follows_eager_epoch_by_epoch():
    """The README's run (the digits' defaults: 12 steps per epoch, dynamic binarization) on the
    path it takes by default (JIT) and eagerly, same seed and batch order: the per-epoch
    training loss and test ELBO agree to 1e-6 relative over four epochs (48 steps; after 200
    epochs the two still end at the same test ELBO to four decimals,
    ``benchmarks/strategy_equivalence.py``)."""
    from pyro_vae.data import prepare_data

    histories = {}
    for options in (dict(), dict(jit=False)):
        config = Config(dataset="digits", epochs=4, **options).resolved()
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        trainer = Trainer.from_config(config, prepare_data(config))
        trainer.fit()
        histories[trainer.step_path] = trainer.history
    assert set(histories) == {"jit", "eager"}
    for jit, eager in zip(histories["jit"], histories["eager"], strict=True):
        assert jit["train_loss"] == pytest.approx(eager["train_loss"], rel=1e-6)
        assert jit["test_elbo"] == pytest.approx(eager["test_elbo"], rel=1e-6)
