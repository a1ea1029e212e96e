"""What the mutation run of ``infer/vem.py`` (issue 28) found untested: the row-wise Adam of
the E-step against torch's Adam, vEM's KL modes and defaults, a scalar latent per point, and a
data set of one point."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

from pyro_vae.infer.trainer import ModelGuide
from pyro_vae.infer.vem import LocalGuide, RowAdam, VariationalEM
from tests.common import small_vae


def test_row_adam_on_the_rows_of_a_batch_is_torch_adam_on_those_rows():
    """Rows 0 and 2 take three steps, row 1 none: the stepped rows follow torch's Adam exactly
    (its bias corrections counted per row), the other row does not move."""
    torch.manual_seed(0)
    p = torch.randn(3, 4)
    grads = [torch.randn(3, 4) for _ in range(3)]
    rows = torch.tensor([0, 2])
    mine = RowAdam([p.clone()], lr=0.1)
    ref = p[rows].clone().requires_grad_()
    opt = torch.optim.Adam([ref], lr=0.1)
    for g in grads:
        mine.step(rows, [g])
        ref.grad = g[rows].clone()
        opt.step()
    # torch divides by √v̂ + ε in another order: float rounding apart, the same steps
    torch.testing.assert_close(mine.params[0][rows], ref.detach(), rtol=1e-4, atol=1e-5)
    assert torch.equal(mine.params[0][1], p[1])


def test_the_kl_modes_and_defaults_of_variational_em():
    vem = VariationalEM(small_vae(num_data=8), num_data=8)
    assert vem.kl == "analytic" and vem.e_lr == 1e-2 and vem.m_lr == 1e-3 and vem.e_steps == 5
    assert isinstance(vem.elbo, TraceMeanField_ELBO)
    mc = VariationalEM(small_vae(num_data=8), num_data=8, kl="mc")
    assert isinstance(mc.elbo, Trace_ELBO) and not isinstance(mc.elbo, TraceMeanField_ELBO)


def _scalar_latent_program(n: int):
    w = torch.nn.Linear(1, 2)

    def model(x, y=None, indices=None):
        pyro.module("mutants_vem_w", w)
        with pyro.plate("data", n, subsample=indices):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))  # one scalar per point: event_dim 0
            pyro.sample("x", dist.Normal(w(z.unsqueeze(-1)), 1.0).to_event(1), obs=x)

    def guide(x, y=None, indices=None):
        with pyro.plate("data", n, subsample=indices):
            pyro.sample("z", dist.Normal(0.0, 1.0))

    return ModelGuide(model, guide)


def test_a_scalar_latent_per_point_gets_its_local_gaussian_and_trains():
    """A site of event dim 0 is given a Normal of event shape () (the local Gaussian's (1,)
    reshaped): vEM trains it, the ELBO rising."""
    pyro.set_rng_seed(0)
    x = torch.randn(16, 2) + 1.0
    vem = VariationalEM(_scalar_latent_program(16), num_data=16)
    history = vem.fit(x, None, epochs=30, batch_size=16)
    assert history[-1]["train_elbo"] > history[0]["train_elbo"] + 0.5


def test_a_data_set_of_one_point():
    guide = LocalGuide(_scalar_latent_program(1), num_data=1)
    assert guide.num_data == 1
    pyro.set_rng_seed(0)
    vem = VariationalEM(_scalar_latent_program(1), num_data=1)
    assert len(vem.fit(torch.randn(1, 2), None, epochs=2, batch_size=1)) == 2


def test_the_per_point_stopping_rule_counts_checks_and_steps_exactly():
    """With an unreachable tolerance every check fails to improve, so each point stops after
    exactly ``patience`` checks; with a patience longer than the run, every point runs to
    ``max_steps`` exactly."""
    from pyro_vae.infer.vem import fit_local
    from tests.common import make_batch

    x = make_batch(4)
    stuck = fit_local(small_vae(), x, tol=1e9, patience=2, check_every=5, max_steps=1000)
    assert stuck.point_steps.tolist() == [10] * 4
    moving = fit_local(small_vae(), x, patience=1000, check_every=5, max_steps=7)
    assert moving.point_steps.tolist() == [7] * 4


def test_the_local_elbo_error_is_the_draws_standard_error():
    from pyro_vae.infer.vem import local_elbo, local_log_weights, model_problem
    from tests.common import make_batch

    vae, x = small_vae(), make_batch(3)
    problem = model_problem(vae, x)
    params = {"loc": torch.zeros(3, problem.dim), "log_scale": torch.zeros(3, problem.dim)}
    eps = torch.randn(64, 3, problem.dim, generator=torch.Generator().manual_seed(0))
    mean, se = local_elbo(vae, x, None, None, params, eps, problem, return_stderr=True)
    values = local_log_weights(problem, x, None, None, params, eps)
    torch.testing.assert_close(se, values.std(0) / 8)
    torch.testing.assert_close(mean, values.mean(0))


def test_guide_moments_match_a_narrow_gaussian_guide():
    """A guide of scale 0.05: the moments are its own (the floor of 1e-4 on σ only guards a
    point mass)."""
    from pyro_vae.infer.vem import guide_moments

    def model(x, y=None, indices=None):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(x.shape[0], 2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)

    def guide(x, y=None, indices=None):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x, 0.05).to_event(1))

    x = torch.randn(3, 2)
    pyro.set_rng_seed(0)
    loc, scale = guide_moments(ModelGuide(model, guide), None, x, num_samples=4096)
    torch.testing.assert_close(loc, x, atol=0.01, rtol=0)
    torch.testing.assert_close(scale, torch.full_like(x, 0.05), atol=0.005, rtol=0)


def test_fit_records_the_per_point_elbo_and_the_epochs_seconds(monkeypatch):
    """The epoch's train ELBO is the mean per-point ELBO: each step's loss is the data set's
    (N / B scaled), weighted by its batch's share."""
    vem = VariationalEM(small_vae(num_data=8), num_data=8)
    monkeypatch.setattr(VariationalEM, "step", lambda self, x, y, idx: 8 * 2.5)
    row = vem.fit(torch.zeros(8, 6), None, epochs=1, batch_size=3)[0]
    assert row["train_elbo"] == -2.5
    assert 0 <= row["seconds"] < 60


def test_alternating_mode_takes_its_e_steps_before_each_m_step(monkeypatch):
    calls = []
    monkeypatch.setattr(RowAdam, "step", lambda self, rows, grads: calls.append(len(rows)))
    x = torch.randn(8, 6)
    for mode, e_steps in (("alternating", 3), ("joint", 1)):
        calls.clear()
        pyro.clear_param_store()
        VariationalEM(small_vae(num_data=8), num_data=8, mode=mode, e_steps=3).step(
            x, None, torch.arange(8))
        assert calls == [8] * e_steps, mode


def test_row_adam_divides_by_the_root_plus_epsilon_for_tiny_gradients():
    """Gradients of 1e-9, where √v̂ is below Adam's ε = 1e-8: the step is lr·m̂/(√v̂ + ε), small
    and in the gradient's direction, as torch's Adam takes it."""
    torch.manual_seed(1)
    p = torch.randn(2, 3)
    rows = torch.tensor([0, 1])
    mine = RowAdam([p.clone()], lr=0.1)
    ref = p.clone().requires_grad_()
    opt = torch.optim.Adam([ref], lr=0.1)
    for _ in range(3):
        g = torch.full((2, 3), 1e-9)
        mine.step(rows, [g])
        ref.grad = g.clone()
        opt.step()
    moved = p - mine.params[0]
    assert bool((moved > 0.01).all()) and bool((moved < 0.05).all()), moved
    torch.testing.assert_close(mine.params[0], ref.detach(), rtol=1e-4, atol=1e-5)


def _two_site_program(n: int):
    """Two latent sites per point, of 2 and 3 dimensions, in the data plate."""
    w = torch.nn.Linear(5, 2)

    def model(x, y=None, indices=None):
        pyro.module("mutants_vem_two_site_w", w)
        with pyro.plate("data", n, subsample=indices):
            a = pyro.sample("a", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            b = pyro.sample("b", dist.Normal(torch.zeros(3), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(w(torch.cat([a, b], -1)), 1.0).to_event(1), obs=x)

    return ModelGuide(model, lambda x, y=None, indices=None: None)


def test_each_latent_site_of_the_local_guide_gets_its_own_columns():
    """Site a reads columns 0–1 of λ, site b columns 2–4 (the order of the model's sites)."""
    from pyro import poutine

    n = 4
    loc = torch.arange(n * 5, dtype=torch.float).reshape(n, 5)
    guide = LocalGuide(_two_site_program(n), num_data=n, prefix="two_site",
                       init_loc=loc, init_scale=torch.full((n, 5), 1e-3))
    pyro.clear_param_store()
    trace = poutine.trace(guide.guide).get_trace(torch.zeros(n, 2))
    torch.testing.assert_close(trace.nodes["a"]["fn"].mean, loc[:, :2])
    torch.testing.assert_close(trace.nodes["b"]["fn"].mean, loc[:, 2:])


def test_the_history_numbers_epochs_from_one():
    pyro.set_rng_seed(0)
    vem = VariationalEM(_scalar_latent_program(8), num_data=8)
    history = vem.fit(torch.randn(8, 2), None, epochs=3, batch_size=8)
    assert [row["epoch"] for row in history] == [1, 2, 3]


def test_the_local_elbo_is_the_mean_over_draws_per_point():
    from pyro_vae.infer.vem import local_elbo, local_log_weights, model_problem
    from tests.common import make_batch

    vae, x = small_vae(), make_batch(3)
    problem = model_problem(vae, x)
    params = {"loc": torch.zeros(3, problem.dim), "log_scale": torch.zeros(3, problem.dim)}
    eps = torch.randn(16, 3, problem.dim, generator=torch.Generator().manual_seed(0))
    value = local_elbo(vae, x, None, None, params, eps, problem)
    assert value.shape == (3,)
    torch.testing.assert_close(value, local_log_weights(problem, x, None, None, params, eps)
                               .mean(0))


def test_fit_local_checks_every_50_steps_on_256_fixed_draws_by_default():
    """The documented defaults: with a tolerance no check can meet and a patience of one, every
    point stops at the first check, after 50 steps; the start's ELBO is the one on the 256
    draws of ``fixed_draws`` (here from the prior); the curve holds the start and every
    check's mean."""
    from pyro_vae.infer.vem import chunked_local_elbo, fit_local, fixed_draws, model_problem
    from tests.common import make_batch

    vae, x = small_vae(), make_batch(4)
    fit = fit_local(vae, x, init="zero", tol=1e9, patience=1)
    assert fit.point_steps.tolist() == [50] * 4
    problem = model_problem(vae, x)
    prior = {"loc": torch.zeros(4, problem.dim), "log_scale": torch.zeros(4, problem.dim)}
    start = chunked_local_elbo(vae, x, None, None, prior, fixed_draws(problem, x, 0, 256),
                               problem)
    torch.testing.assert_close(fit.start_elbo, start.detach())
    assert fit.curve == [float(fit.start_elbo.mean()), float(fit.elbo.mean())]
    stuck = fit_local(vae, x, tol=1e9, patience=3, check_every=5)
    assert len(stuck.curve) == 1 + 3  # the start, then each of the three checks


def test_a_learning_rate_decay_above_one_is_refused():
    import pytest

    from pyro_vae.errors import ConfigError
    from pyro_vae.infer.vem import fit_local
    from tests.common import make_batch

    with pytest.raises(ConfigError, match="lr_decay"):
        fit_local(small_vae(), make_batch(2), lr_decay=1.5)


def _offset_model(name: str):
    """z ~ N(0, 1), x | z ~ N(z + b, 1) per point, written as ``model(x)`` (no subsample
    indices); returns the learned offset b and the model."""
    b = torch.nn.Parameter(torch.zeros(()))

    def model(x):
        pyro.module(name, torch.nn.ParameterList([b]))
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z + b, 1.0), obs=x.squeeze(-1))

    return b, model


def test_a_model_without_subsample_indices_keeps_each_points_own_local_parameters():
    """``model(x)`` (no indices: fitted on the whole data set, which ``fit`` shuffles every
    epoch), and a model that takes indices on batches as large as the data set (where Pyro's
    plate does not reorder a param of ``event_dim`` by a full subsample): λ's row n must stay
    point n's. z ~ N(0, 1), x | z ~ N(z + b, 1) has the posterior
    mean (x − b)/2 per point; a λ row that saw a different point each epoch ends near the
    average of all points' means instead."""
    b, model = _offset_model("mutants_vem_offset")

    def model_with_indices(x, y=None, indices=None):
        pyro.module("mutants_vem_offset", torch.nn.ParameterList([b]))
        with pyro.plate("data", 8, subsample=indices):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z + b, 1.0), obs=x.squeeze(-1))

    x = torch.linspace(-3.0, 3.0, 8).unsqueeze(-1)
    for program in (ModelGuide(model, lambda x: None),
                    ModelGuide(model_with_indices, lambda x, y=None, indices=None: None)):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        vem = VariationalEM(program, num_data=8, e_lr=5e-2, m_lr=1e-3)
        vem.fit(x, None, epochs=60, batch_size=8)
        loc, _ = vem.local.values()
        # one-draw E-steps at e_lr 5e-2 leave noise of ~0.2 per point; rows paired with
        # shuffled points sit ~1 nat-scale unit off on average
        assert float((loc - (x - b.detach()) / 2).abs().mean()) < 0.2, loc


def test_fit_local_stops_a_point_after_four_checks_without_progress_by_default():
    from pyro_vae.infer.vem import fit_local
    from tests.common import make_batch

    fit = fit_local(small_vae(), make_batch(3), init="zero", tol=1e9, check_every=5)
    assert fit.point_steps.tolist() == [20] * 3


def test_fit_local_starts_from_the_moments_of_256_guide_draws():
    """init='encoder': the start is the diagonal Gaussian of 256 draws of the guide (the same
    seed gives the same draws, so the same start ELBO to float rounding)."""
    from pyro_vae.infer.vem import (
        chunked_local_elbo,
        fit_local,
        fixed_draws,
        guide_moments,
        model_problem,
    )
    from tests.common import make_batch

    vae, x = small_vae(), make_batch(4)
    pyro.set_rng_seed(5)
    fit = fit_local(vae, x, max_steps=1)
    problem = model_problem(vae, x)
    pyro.set_rng_seed(5)
    loc, scale = guide_moments(vae, None, x, num_samples=256, problem=problem)
    start = chunked_local_elbo(vae, x, None, None, {"loc": loc, "log_scale": scale.log()},
                               fixed_draws(problem, x, 0, 256), problem)
    torch.testing.assert_close(fit.start_elbo, start.detach())



def test_mini_batches_of_a_model_without_subsample_indices_are_one_library_error():
    """``model(x)`` cannot scale its plate to N on a batch: the ELBO would mix a guide scaled by
    N/B with an unscaled model (it trained silently, with a train ELBO six times too high)."""
    import pytest

    from pyro_vae.errors import ModelError

    _, model = _offset_model("mutants_vem_offset_batches")

    vem = VariationalEM(ModelGuide(model, lambda x: None), num_data=8)
    with pytest.raises(ModelError, match=r"takes no subsample indices.*batch_size=8"):
        vem.fit(torch.randn(8, 1), None, epochs=1, batch_size=4)
    assert len(vem.fit(torch.randn(8, 1), None, epochs=1, batch_size=8)) == 1


def test_chunks_of_a_conditional_model_keep_each_points_label():
    """Scored in chunks of 2 points or all at once, a conditional model's per-point ELBOs are
    the same: each chunk takes the labels of its own points."""
    from unittest import mock

    from pyro_vae.infer import vem
    from tests.common import make_batch

    vae, x = small_vae(num_classes=3), make_batch(5)
    y = torch.tensor([0, 2, 1, 1, 0])
    problem = vem.model_problem(vae, x, y)
    params = {"loc": torch.randn(5, problem.dim), "log_scale": torch.zeros(5, problem.dim)}
    eps = torch.randn(16, 5, problem.dim, generator=torch.Generator().manual_seed(0))
    whole = vem.local_elbo(vae, x, y, None, params, eps, problem)
    with mock.patch.object(vem, "_chunk", lambda vae, draws: 2):
        chunked = vem.chunked_local_elbo(vae, x, y, None, params, eps)
    torch.testing.assert_close(chunked, whole.detach())
