"""A linear VAE reaches the closed-form probabilistic-PCA maximum likelihood.

Encoder and decoder without hidden layers (``hidden=()``), a Gaussian likelihood with one learned
σ, trained by plain Pyro ``SVI`` with ``TraceMeanField_ELBO`` (analytic KL) on all the data.
pPCA (Tipping & Bishop 1999) is the same generative model, ``x = W z + μ + σ ε``, and its
maximum likelihood is known in closed form
(``pyro_vae.ppca.ppca_mle``: σ²_ML = mean of the discarded eigenvalues of the sample covariance,
W_ML = U_q (Λ_q - σ²_ML I)^{1/2}). At the optimum the VAE's ELBO equals that log-likelihood: the
exact posterior is Gaussian and, with W_ML's orthogonal columns, diagonal, so q can match it.
The script prints, per point:

* the pPCA maximum log-likelihood,
* the exact log-likelihood of the trained VAE's decoder, log N(x; b, W Wᵀ + σ² I),
* the VAE's ELBO (100 samples per point),

and the principal-angle cosines between the decoder's columns and the top principal directions.

    python examples/linear_vae_ppca.py --dataset digits --latent-dim 2
    python examples/linear_vae_ppca.py --dataset fashion-mnist --latent-dim 10 --max-points 10000
    python examples/linear_vae_ppca.py --smoke
"""

from __future__ import annotations

import argparse
import time

import pyro
import torch
from _common import add_run_options
from pyro.infer import SVI, TraceMeanField_ELBO

from pyro_vae import VAE, MLPDecoder, MLPEncoder, elbo_terms, load_dataset, make_likelihood
from pyro_vae.lab.reporting import write_results
from pyro_vae.models import evaluating
from pyro_vae.models.ppca import gaussian_marginal_log_prob, ppca_mle, principal_cosines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="digits", choices=("digits", "fashion-mnist", "mnist"))
    p.add_argument("--latent-dim", type=int, default=2)
    p.add_argument("--steps", type=int, default=1000, help="full-batch SVI steps")
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--max-points", type=int, default=None, help="use the first N points only")
    add_run_options(p, "runs/linear-vae-ppca")
    args = p.parse_args()
    steps = 5 if args.smoke else args.steps
    data = load_dataset(args.dataset)
    x = torch.cat([data.x_train, data.x_test])[:args.max_points].flatten(1).to(args.device)
    q, dims = args.latent_dim, x.shape[1]

    pyro.set_rng_seed(args.seed)
    vae = VAE(MLPEncoder((dims,), q, hidden=()), MLPDecoder((dims,), q, hidden=()),
              make_likelihood("gaussian-learned", obs_scale=0.3), q, (dims,)).to(args.device)
    # full-batch steps with 4 particles and a decaying step size: the slow directions of a
    # linear VAE's ELBO (Lucas et al. 2019) need small-noise steps to converge
    svi = SVI(vae.model, vae.guide, pyro.optim.ClippedAdam({"lr": args.lr, "lrd": 0.999}),
              TraceMeanField_ELBO(num_particles=4, vectorize_particles=True,
                                  max_plate_nesting=1))
    start = time.perf_counter()
    for _ in range(steps):
        svi.step(x)
    seconds = time.perf_counter() - start

    fit = ppca_mle(x.cpu(), q)
    layer = vae.decoder.net[0]
    weight, bias = layer.weight.detach().cpu(), layer.bias.detach().cpu()
    sigma = float(pyro.param("obs_scale").detach())
    decoder_ll = float(gaussian_marginal_log_prob(x.cpu(), bias, weight, sigma).mean())
    with evaluating(vae):
        elbo = float(elbo_terms(vae, x, num_samples=100)["elbo"].mean())
    cosines = principal_cosines(weight, fit.components)
    write_results(args.out, f"Linear VAE vs pPCA on {args.dataset} ({x.shape[0]} points, "
                  f"D = {dims}, q = {q}; {steps} SVI steps, {seconds:.0f} s)",
                  ["quantity", "value"],
                  [["pPCA maximum log-likelihood (closed form), nats per point",
                    f"{fit.log_likelihood:.4f}"],
                   ["trained VAE decoder, exact log N(x; b, WWᵀ + σ²I)", f"{decoder_ll:.4f}"],
                   ["trained VAE, ELBO (100 samples)", f"{elbo:.4f}"],
                   ["σ_ML (pPCA) / σ (VAE)", f"{fit.sigma:.4f} / {sigma:.4f}"],
                   ["principal-angle cosines, decoder vs top-q PCA directions",
                    ", ".join(f"{c:.4f}" for c in cosines.tolist())]])


if __name__ == "__main__":
    main()
