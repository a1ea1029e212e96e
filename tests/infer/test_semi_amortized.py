"""Semi-amortized inference (issue 32): the refinement reaches the closed-form optimum of its
family and improves with every step, in training and at test time; both variants train through
SVI and the trainer (user functions and the library's VAE) with the gradients their math says
(closed forms, finite differences); guides it cannot refine, and a JIT step it cannot run
under, are refused in one line. Every model here has an exact posterior (linear-Gaussian)."""

from __future__ import annotations

import itertools
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO
from torch import nn

from pyro_vae import Config, ConfigError, ModelError, ModelGuide, Trainer, evaluate_elbo
from pyro_vae.data.datasets import DataSet
from pyro_vae.infer import SemiAmortizedGuide
from pyro_vae.infer.semi_amortized import ENCODER_SITE
from tests.zoo import SIGMA as ZOO_SIGMA
from tests.zoo import make_case

SIGMA = 0.5


class LinearGaussian(nn.Module):
    """z ~ N(0, I_L), x | z ~ N(W z + b, σ² I_D), written as Pyro's VAE example writes a model,
    with an amortized diagonal Gaussian guide q(z | x) = N(E x + e, diag exp(F x + f)²)."""

    def __init__(self, D: int = 6, L: int = 3, dtype: torch.dtype = torch.float32,
                 bad_encoder: bool = True, seed: int = 1) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.L = L
        self.dec = nn.Linear(L, D, dtype=dtype)
        self.enc = nn.Linear(D, 2 * L, dtype=dtype)
        with torch.no_grad():
            self.dec.weight.copy_(0.5 * torch.randn(D, L, generator=g))
            self.dec.bias.copy_(torch.randn(D, generator=g))
            if bad_encoder:  # loc off by up to 2, every scale 1 (the optimum's are 0.3-0.8)
                self.enc.weight.zero_()
                self.enc.bias.copy_(torch.tensor([2.0, -2.0, 1.5, 0.0, 0.0, 0.0])[:2 * L])
            else:
                self.enc.weight.copy_(0.3 * torch.randn(2 * L, D, generator=g))
                self.enc.bias.copy_(0.3 * torch.randn(2 * L, generator=g))

    def model(self, x):
        pyro.module("lg_decoder", self.dec)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], self.L), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(self.dec(z), SIGMA).to_event(1), obs=x)

    def encode(self, x):
        loc, log_scale = self.enc(x).chunk(2, -1)
        return loc, log_scale.exp()

    def guide(self, x):
        pyro.module("lg_encoder", self.enc)
        loc, scale = self.encode(x)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    def sample(self, n: int, seed: int = 2) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            z = torch.randn(n, self.L, generator=g, dtype=self.dec.weight.dtype)
            noise = torch.randn(n, self.dec.out_features, generator=g, dtype=z.dtype)
            return self.dec(z) + SIGMA * noise

    # ---- closed forms (float64, differentiable in the decoder's weights)
    def posterior(self, x):
        """Mean (B, L) and precision Λ = I + WᵀW / σ² of p(z | x), and log p(x) (B,)."""
        W, b = self.dec.weight.double(), self.dec.bias.double()
        precision = torch.eye(self.L, dtype=W.dtype) + W.T @ W / SIGMA**2
        mean = (x.double() - b) @ W @ torch.linalg.inv(precision) / SIGMA**2
        cov_x = SIGMA**2 * torch.eye(W.shape[0], dtype=W.dtype) + W @ W.T
        log_px = torch.distributions.MultivariateNormal(b, cov_x).log_prob(x.double())
        return mean, precision, log_px

    def elbo(self, x, loc, scale):
        """ELBO of q = N(loc, diag scale²) per point: log p(x) − KL(q ‖ p(z | x))."""
        mean, precision, log_px = self.posterior(x)
        return log_px - ffg_kl(loc, scale, mean, precision)


def ffg_kl(loc, scale, mean, precision):
    """KL(N(loc, diag scale²) ‖ N(mean, precision⁻¹)) per point."""
    d = loc.double() - mean
    var = scale.double() ** 2
    return 0.5 * ((precision.diagonal(dim1=-2, dim2=-1) * var).sum(-1)
                  + ((d.unsqueeze(-2) @ precision).squeeze(-2) * d).sum(-1) - d.shape[-1]
                  - torch.logdet(precision) - var.log().sum(-1))


def ffg_optimum(mean, precision):
    """The best factorized Gaussian for N(mean, precision⁻¹): its mean, precision diag Λ."""
    diag = precision.diagonal(dim1=-2, dim2=-1)
    return mean, diag.rsqrt().expand_as(mean)


def svi_gradients(model, guide, x, params, num_particles):
    """−ELBO as ``Trace_ELBO`` forms it for reparameterized sites (model − guide log-densities,
    the guide's factor included), over vectorized particles, its gradient in ``params``, and the
    guide trace (whose sites hold the refined Normal)."""
    with pyro.plate("particles", num_particles, dim=-2):
        guide_tr = poutine.trace(guide).get_trace(x)
        model_tr = poutine.trace(poutine.replay(model, trace=guide_tr)).get_trace(x)
    loss = -(model_tr.log_prob_sum() - guide_tr.log_prob_sum()) / num_particles
    return loss, torch.autograd.grad(loss, params), guide_tr


# --------------------------------------------------------------------------- 1. the optimum
@pytest.mark.parametrize("case", ["linear", "hierarchy"])
def test_refinement_reaches_the_closed_form_ffg_optimum_and_improves_with_steps(case):
    """From a deliberately bad encoder (an ELBO 29 nats below the optimum per point; the
    hierarchy's random guide, 6 nats), K steps of the
    refinement approach the best factorized Gaussian q*, mean μ* and precision diag(Σ*⁻¹):
    after 300 steps its mean within 0.03, its scales within 3 %, its closed-form ELBO within
    0.005 nats of q*'s at every point; every shorter refinement is worse. The two-site
    hierarchy (z2, z1 | z2) is refined as one mean-field Gaussian over both sites."""
    if case == "linear":
        lg = LinearGaussian()
        x = lg.sample(16)
        model, guide, sites = lg.model, lg.guide, ("z",)
        mean, precision, log_px = (t.detach() for t in lg.posterior(x))
    else:
        zoo = make_case("hierarchy_topdown", guide_init="random")
        x, model, guide, sites = zoo.x, zoo.model, zoo.guide, ("z2", "z1")
        post = zoo.exact_posterior(x)
        mean, precision, log_px = post.mean, torch.linalg.inv(post.cov), zoo.exact_log_px(x)
    opt_loc, opt_scale = ffg_optimum(mean, precision)
    opt_elbo = log_px - ffg_kl(opt_loc, opt_scale, mean, precision)
    gaps = {}
    for steps in (0, 3, 10, 30, 300):
        pyro.set_rng_seed(0)
        sa = SemiAmortizedGuide(model, guide, steps=steps, lr=0.05, momentum=0.0,
                                num_samples=1024)
        params = sa.refine(x).params()
        loc = torch.cat([params[s][0] for s in sites], -1).double()
        scale = torch.cat([params[s][1] for s in sites], -1).double()
        gaps[steps] = opt_elbo - (log_px - ffg_kl(loc, scale, mean, precision))
    assert float(gaps[0].mean()) > 5  # the encoder is far from q*
    means = [float(g.mean()) for g in gaps.values()]
    assert all(a > 2 * b for a, b in itertools.pairwise(means)), means  # monotone improvement
    assert float(gaps[300].max()) < 0.005 and float(gaps[300].min()) > -1e-9
    assert float((loc - opt_loc).abs().max()) < 0.03
    assert float((scale / opt_scale - 1).abs().max()) < 0.03


def test_refined_guide_scores_near_the_optimum_at_test_time():
    """Under the evaluation tools (no autograd outside), the wrapped guide's Monte Carlo ELBO is
    the refined q's: within 0.02 nats of q*'s closed form, the encoder's 20 below it."""
    lg = LinearGaussian()
    x = lg.sample(16)
    mean, precision, log_px = (t.detach() for t in lg.posterior(x))
    opt = float((log_px - ffg_kl(*ffg_optimum(mean, precision), mean, precision)).mean())
    vae = ModelGuide(lg.model, lg.guide)
    sa = SemiAmortizedGuide(lg.model, lg.guide, steps=300, lr=0.05, momentum=0.0,
                            num_samples=256)
    refined = evaluate_elbo(vae, x, num_samples=2000, guide=sa)["elbo"]
    amortized = evaluate_elbo(vae, x, num_samples=2000)["elbo"]
    assert abs(refined.mean - opt) < 0.02, (refined, opt)
    assert amortized.mean < opt - 20


# --------------------------------------------------------------------------- 2. gradients
def test_stop_gradient_variant_trains_decoder_at_refined_and_encoder_by_its_own_elbo():
    """differentiable=False: the decoder's gradient is ∂θ of the ELBO at the (fixed) refined
    λ_K, the encoder's is ∇φ of the encoder's own ELBO at λ_0(φ), both against closed forms;
    the loss value is −ELBO(λ_K) (the encoder's factor is valued 0). With
    encoder_objective="kl" the encoder's gradient is exactly ∇φ KL(q_λK ‖ q_λ0(φ))."""
    lg = LinearGaussian(dtype=torch.float64, bad_encoder=False)
    x = lg.sample(8)
    sa = SemiAmortizedGuide(lg.model, lg.guide, steps=2, lr=0.05, momentum=0.0,
                            num_samples=8192)
    enc, dec = list(lg.enc.parameters()), list(lg.dec.parameters())
    loss, grads, guide_tr = svi_gradients(lg.model, sa, x, enc + dec, num_particles=8192)
    fn = guide_tr.nodes["z"]["fn"].base_dist
    loc_k, scale_k = fn.loc[0].detach(), fn.scale[0].detach()  # the particles share λ_K
    factor = guide_tr.nodes[ENCODER_SITE]["fn"].log_factor.detach()
    assert float(factor.abs().max()) == 0
    refined_elbo = lg.elbo(x, loc_k, scale_k).sum()
    assert float(loss.detach()) == pytest.approx(-float(refined_elbo.detach()), abs=0.15)
    dec_ref = torch.autograd.grad(-refined_elbo, dec)
    enc_ref = torch.autograd.grad(-lg.elbo(x, *lg.encode(x)).sum(), enc)
    for got, ref in zip(grads, enc_ref + dec_ref, strict=True):
        assert float((got - ref).norm()) < 0.03 * float(ref.norm()) + 1e-3, (got, ref)

    kl_guide = SemiAmortizedGuide(lg.model, lg.guide, steps=2, lr=0.05, momentum=0.0, num_samples=8,
                                  encoder_objective="kl")
    _, grads, guide_tr = svi_gradients(lg.model, kl_guide, x, enc, num_particles=4)
    fn = guide_tr.nodes["z"]["fn"].base_dist
    loc0, scale0 = lg.encode(x)
    kl = torch.distributions.kl_divergence(dist.Normal(fn.loc[0].detach(), fn.scale[0].detach()),
                                           dist.Normal(loc0, scale0)).sum()
    for got, ref in zip(grads, torch.autograd.grad(kl, enc), strict=True):
        torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-10)


def test_differentiable_variant_gradient_is_the_derivative_of_the_refined_elbo():
    """differentiable=True: with every draw fixed (one seed per evaluation), the loss is a smooth
    function of the weights; its autograd gradient through K = 3 momentum steps equals central
    finite differences, for encoder and decoder weights alike (float64)."""
    lg = LinearGaussian(dtype=torch.float64, bad_encoder=False)
    x = lg.sample(5)
    sa = SemiAmortizedGuide(lg.model, lg.guide, steps=3, lr=0.1, momentum=0.5, num_samples=2,
                            differentiable=True)

    def loss():
        pyro.set_rng_seed(7)
        return Trace_ELBO().differentiable_loss(lg.model, sa, x)

    params = [lg.enc.weight, lg.enc.bias, lg.dec.weight]
    grads = torch.autograd.grad(loss(), params)
    h = 1e-3  # the five-point stencil: truncation O(h⁴), rounding (measured) ~1e-6
    for p, g in zip(params, grads, strict=True):
        flat, gflat = p.view(-1), g.reshape(-1)
        for i in range(0, flat.numel(), max(1, flat.numel() // 5)):
            values = []
            with torch.no_grad():
                for step in (2, 1, -1, -2):
                    flat[i] += step * h
                    values.append(float(loss()))
                    flat[i] -= step * h
            fd = (-values[0] + 8 * values[1] - 8 * values[2] + values[3]) / (12 * h)
            assert float(gflat[i]) == pytest.approx(fd, rel=1e-5, abs=1e-5), (p.shape, i)
    # the stop-gradient variant's encoder gradient is another one (its own ELBO's)
    sa.differentiable = False
    stop = torch.autograd.grad(loss(), [lg.enc.weight])[0]
    assert float((stop - grads[0]).norm()) > 0.05 * float(grads[0].norm())


def test_on_a_subsampled_plate_with_beta_the_loss_and_encoder_gradient_are_pyros():
    """The library's protocol (plate of N = 64 subsampled by B = 8 indices, KL weight β = 0.5):
    the refined site sits in the guide's plate with its scale N/B · β = 4 and the guide's
    subsample indices reach the model; with K = 0 the loss is −(N/B) Σ_n [E_q log p(x_n | z)
    − β KL(q ‖ p)] and the stop-gradient encoder term's gradient is its φ-gradient, both
    against the closed form of the linear-Gaussian model."""
    zoo = make_case("subsampled_library_protocol", guide_init="random")
    encoder, decoder = zoo.modules["encoder"], zoo.modules["decoder"]
    x, beta, scale = zoo.x, 0.5, 64 / 8
    args = (x, None, zoo.kwargs["indices"], beta)
    sa = SemiAmortizedGuide(zoo.model, zoo.guide, steps=0, num_samples=4096)
    tr = poutine.trace(sa).get_trace(*args)
    assert tr.nodes["z"]["scale"] == pytest.approx(scale * beta)
    assert [f.name for f in tr.nodes["z"]["cond_indep_stack"]] == ["data"]
    assert torch.equal(tr.nodes["data"]["value"], zoo.kwargs["indices"])

    loc, sd = encoder(x)
    W, b = decoder.linear.weight, decoder.linear.bias
    resid = x - loc @ W.T - b
    expected_loglik = -0.5 * x.shape[-1] * math.log(2 * math.pi * ZOO_SIGMA**2) \
        - 0.5 * ((resid**2).sum(-1) + sd**2 @ (W**2).sum(0)) / ZOO_SIGMA**2
    kl = 0.5 * (sd**2 + loc**2 - 1 - (sd**2).log()).sum(-1)
    exact = -scale * (expected_loglik - beta * kl).sum()
    enc = list(encoder.parameters())  # loc weight, loc bias, log-scale weight, log-scale bias
    exact_grads = torch.autograd.grad(exact, enc)
    elbo = Trace_ELBO(num_particles=4096, vectorize_particles=True, max_plate_nesting=1)
    loss = elbo.differentiable_loss(zoo.model, sa, *args)
    grads = torch.autograd.grad(loss, enc)
    assert float(loss.detach()) == pytest.approx(float(exact.detach()), rel=0.01)
    for got, ref in zip(grads[:2], exact_grads[:2], strict=True):  # the log-scale ones: noisier
        assert float((got - ref).norm()) < 0.01 * float(ref.norm()), (got, ref)


# --------------------------------------------------------------------------- 3. training
def _moved(modules, before):
    return [not torch.equal(p, q) for m, b in zip(modules, before, strict=True)
            for p, q in zip(m.parameters(), b, strict=True)]


@pytest.mark.parametrize("name", ["hierarchy_topdown", "code_site"])
@pytest.mark.parametrize("differentiable", [False, True], ids=["stop-gradient", "unrolled"])
def test_svi_trains_user_models_through_the_wrapper(name, differentiable):
    """SVI(model, SemiAmortizedGuide(...), Adam, Trace_ELBO()) trains a hierarchy (two local
    sites, guide q(z2|x) q(z1|x,z2)) and a model with its own names (plate "batch", sites
    "code" and "pixels" of event shape (2, 2)) from a random guide: every weight moves, the
    refined guide's ELBO rises, and so do the exact log p(x) (the decoder learns) and the
    encoder's own exact ELBO (the encoder learns). The unrolled variant's encoder learns an
    initialization for the refinement: the refined ELBO ends well above the encoder's own."""
    zoo = make_case(name, guide_init="random")
    sa = SemiAmortizedGuide(zoo.model, zoo.guide, steps=3, lr=0.05, momentum=0.5,
                            num_samples=1, differentiable=differentiable)
    vae = ModelGuide(zoo.model, zoo.guide)

    def scores():
        pyro.set_rng_seed(1)
        refined = evaluate_elbo(vae, zoo.x, num_samples=500, guide=sa)["elbo"].mean
        return refined, float(zoo.exact_elbo(zoo.x).mean()), float(zoo.exact_log_px(zoo.x).mean())

    modules = list(zoo.modules.values())
    before = [[p.detach().clone() for p in m.parameters()] for m in modules]
    start = scores()
    svi = SVI(zoo.model, sa, pyro.optim.Adam({"lr": 3e-2}), Trace_ELBO())
    for _ in range(60):
        svi.step(zoo.x)
    refined, amortized, log_px = scores()
    assert all(_moved(modules, before))
    assert refined > start[0] + 0.5 and amortized > start[1] + 2.0 and log_px > start[2] + 0.1, \
        (start, (refined, amortized, log_px))
    if differentiable:
        assert refined > amortized + 0.3, (refined, amortized)


@pytest.mark.parametrize("differentiable", [False, True], ids=["stop-gradient", "unrolled"])
def test_trainer_trains_a_model_function_with_the_wrapper(differentiable):
    """Trainer(model, sa_guide, Trace_ELBO(), pyro.optim.Adam, data, Config): the test ELBO
    (scored with the refined guide) rises, and encoder and decoder both move."""
    lg = LinearGaussian(D=4, L=2, bad_encoder=False)
    x = lg.sample(128)
    data = DataSet("lg", x[:96], x[96:], None, None, "vector")
    with torch.no_grad():  # a decoder to learn: start it away from the data's
        lg.dec.weight.mul_(0.2)
        lg.dec.bias.zero_()
    before = [[p.detach().clone() for p in m.parameters()] for m in (lg.enc, lg.dec)]
    sa = SemiAmortizedGuide(lg.model, lg.guide, steps=3, lr=0.05, momentum=0.0, num_samples=1,
                            differentiable=differentiable)
    trainer = Trainer(lg.model, sa, Trace_ELBO(), pyro.optim.Adam({"lr": 3e-2}), data,
                      Config(epochs=4, batch_size=32))
    history = trainer.fit()
    assert history[-1]["test_elbo"] > history[0]["test_elbo"] + 1.0, history
    assert all(_moved([lg.enc, lg.dec], before))


def test_the_library_vae_trains_with_the_wrapper_and_a_jit_step_is_refused():
    """The library's VAE with the wrapper as its guide: a user's guide makes the trainer's
    default step eager, which trains, with the library's ``(x, y, indices, beta)`` calls; an
    explicit JIT step cannot record the guide's inner gradients and is refused in one line
    naming the fix."""
    from tests.common import small_vae

    x = torch.rand(160, 6)
    data = DataSet("file", x[:128], x[128:], None, None, "vector")
    vae = small_vae(num_data=128)
    sa = SemiAmortizedGuide(vae.model, vae.guide, steps=2, lr=0.02, momentum=0.0, num_samples=1)
    config = Config(dataset="file", epochs=3, batch_size=32, lr=2e-2)
    with pytest.raises(ConfigError, match=r"jit=False") as info:
        Trainer(vae, data, config.replace(jit=True), guide=sa).fit()
    assert "\n" not in str(info.value)
    pyro.clear_param_store()
    vae = small_vae(num_data=128)
    sa = SemiAmortizedGuide(vae.model, vae.guide, steps=2, lr=0.02, momentum=0.0, num_samples=1)
    before = evaluate_elbo(vae, data.x_test, num_samples=50, guide=sa)["elbo"].mean
    trainer = Trainer(vae, data, config, guide=sa)
    history = trainer.fit()
    assert trainer.step_path == "eager"
    assert history[-1]["test_elbo"] > before + 0.5, (before, history)


# --------------------------------------------------------------------------- 4. refusals
def _guide_with(site_dist):
    lg = LinearGaussian(D=4, L=2)

    def guide(x):
        pyro.module("lg_encoder", lg.enc)
        loc, scale = lg.encode(x)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", site_dist(loc, scale))

    return lg, guide


@pytest.mark.parametrize("family", ["StudentT", "MultivariateNormal", "Laplace"])
def test_a_non_normal_local_site_is_refused_in_one_line(family):
    make = {"StudentT": lambda m, s: dist.StudentT(3.0, m, s).to_event(1),
            "MultivariateNormal": lambda m, s: dist.MultivariateNormal(m, scale_tril=torch.
                                                                       diag_embed(s)),
            "Laplace": lambda m, s: dist.Laplace(m, s).to_event(1)}[family]
    lg, guide = _guide_with(make)
    sa = SemiAmortizedGuide(lg.model, guide, steps=2)
    x = lg.sample(4)
    with pytest.raises(ModelError, match=f"guide site 'z' is a .*{family}.*Normal") as info:
        SVI(lg.model, sa, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO()).step(x)
    assert "\n" not in str(info.value)
    assert "Normal(...).to_event(n)" in str(info.value)


def test_bad_options_are_refused():
    lg = LinearGaussian()
    for options in (dict(steps=-1), dict(lr=0.0), dict(momentum=1.0), dict(num_samples=0),
                    dict(encoder_objective="mse")):
        with pytest.raises(ConfigError):
            SemiAmortizedGuide(lg.model, lg.guide, **options)


def test_zero_steps_is_the_amortized_guide():
    """K = 0: the refined Normal is the encoder's, for both variants."""
    lg = LinearGaussian(bad_encoder=False)
    x = lg.sample(4)
    loc, scale = lg.encode(x)
    for differentiable in (False, True):
        out = SemiAmortizedGuide(lg.model, lg.guide, steps=0,
                                 differentiable=differentiable).refine(x)
        got_loc, got_scale = out.params()["z"]
        torch.testing.assert_close(got_loc, loc)
        torch.testing.assert_close(got_scale, scale)
    assert math.isfinite(Trace_ELBO().loss(lg.model, SemiAmortizedGuide(lg.model, lg.guide,
                                                                         steps=0), x))


# ------------------------------------------------------------ pyro-vae train --refine-steps
def test_a_run_trained_semi_amortized_is_evaluated_with_its_refinement(tmp_path, capsys):
    """``--refine-steps K``: the trainer steps eagerly through the refined guide, the run folder
    rebuilds that guide (K, step size, whether the encoder is trained through it), and the
    evaluation tools use it: the refined test ELBO is above the encoder's own, paired per
    point, by more than four standard errors."""
    from pyro_vae.cli import main as cli_main
    from pyro_vae.runs import load_run

    out = tmp_path / "run"
    assert cli_main(["train", "--dataset", "moons", "--hidden", "16", "--max-train", "256",
                     "--max-test", "64", "--epochs", "3", "--refine-steps", "4",
                     "--refine-lr", "0.05", "--refine-through", "--no-figures",
                     "--no-progress", "--out", str(out)]) == 0
    run = load_run(out)
    assert isinstance(run.guide, SemiAmortizedGuide)
    assert (run.guide.steps, run.guide.lr, run.guide.differentiable) == (4, 0.05, True)
    assert run.history[-1]["step_path"] == "eager"
    x = run.data.x_test
    from pyro_vae.infer.evaluation import elbo_terms

    amortized = elbo_terms(run.vae, x, num_samples=64)["elbo"].detach()
    refined = elbo_terms(run.vae, x, num_samples=64, guide=run.guide)["elbo"].detach()
    gain = refined - amortized
    assert float(gain.mean()) > 4 * float(gain.std()) / math.sqrt(gain.numel()), gain
    capsys.readouterr()
    assert cli_main(["evaluate", str(out), "--iw-samples", "8", "--elbo-samples", "64",
                     "--json", "--no-progress"]) == 0
    import json

    reported = json.loads(capsys.readouterr().out)["test_elbo"]
    # the command's ELBO is the refined guide's, not the encoder's
    assert abs(reported - float(refined.mean())) < abs(reported - float(amortized.mean()))


@pytest.mark.parametrize("options, match", [
    (dict(guide="planar"), "--guide diag"),
    (dict(objective="iwae"), "--objective elbo"),
    (dict(estimator="score"), "--estimator reparam"),
    (dict(jit=True), "drop --jit"),
    (dict(compile=True), "--compile cannot train"),
    (dict(strategy="ddp"), "--strategy single"),
    (dict(latent="bernoulli", estimator="disarm"), "--latent gaussian"),
])
def test_refinement_options_it_cannot_train_are_one_line_errors(options, match):
    with pytest.raises(ConfigError, match=match):
        Config(dataset="moons", refine_steps=3, **options).resolved()
    assert Config(dataset="moons", refine_steps=3).resolved().jit is False
