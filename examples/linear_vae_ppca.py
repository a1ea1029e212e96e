"""A linear VAE reaches the closed-form probabilistic-PCA maximum likelihood.

Encoder and decoder without hidden layers (``hidden=()``), a Gaussian likelihood with one learned
σ, trained by SVI with the analytic KL. pPCA (Tipping & Bishop 1999) is the same generative
model, ``x = W z + μ + σ ε``, and its maximum likelihood is known in closed form
(``pyro_vae.ppca.ppca_mle``: σ²_ML = mean of the discarded eigenvalues of the sample covariance,
W_ML = U_q (Λ_q - σ²_ML I)^{1/2}). At the optimum the VAE's ELBO equals that log-likelihood: the
exact posterior is Gaussian and, with W_ML's orthogonal columns, diagonal, so q can match it.
The script prints, per point on the training data:

* the pPCA maximum log-likelihood,
* the exact log-likelihood of the trained VAE's decoder, log N(x; b, W Wᵀ + σ² I),
* the VAE's ELBO (100 samples per point),

and the principal-angle cosines between the decoder's columns and the top principal directions.

    python examples/linear_vae_ppca.py --dataset digits --latent-dim 2
    python examples/linear_vae_ppca.py --dataset fashion-mnist --latent-dim 10 --epochs 30
    python examples/linear_vae_ppca.py --smoke
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from pyro_vae import Config, elbo_terms, train_run
from pyro_vae.evaluation import evaluating
from pyro_vae.ppca import gaussian_marginal_log_prob, ppca_mle, principal_cosines
from pyro_vae.reporting import write_results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="digits", choices=("digits", "fashion-mnist", "mnist"))
    p.add_argument("--latent-dim", type=int, default=2)
    p.add_argument("--epochs", type=int, default=300)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="runs/linear-vae-ppca")
    p.add_argument("--smoke", action="store_true", help="a seconds-long run")
    args = p.parse_args()
    epochs = 3 if args.smoke else args.epochs
    config = Config(dataset=args.dataset, hidden=(), latent_dim=args.latent_dim,
                    likelihood="gaussian-learned", obs_scale=0.3, elbo="meanfield",
                    num_particles=4, epochs=epochs, lr=args.lr, batch_size=128,
                    lr_schedule="cosine", seed=args.seed, device=args.device)
    out = Path(args.out)

    start = time.perf_counter()
    run = train_run(config, out / "run", progress=False, figures=False)
    seconds = time.perf_counter() - start
    vae, data = run.trainer.vae, run.trainer.data
    x = data.x_train.reshape(data.x_train.shape[0], -1)
    fit = ppca_mle(x.cpu(), args.latent_dim)
    layer = vae.decoder.net[0]
    weight, bias = layer.weight.detach().cpu(), layer.bias.detach().cpu()
    sigma = float(run.history[-1]["obs_scale"])
    decoder_ll = float(gaussian_marginal_log_prob(x.cpu(), bias, weight, sigma).mean())
    with evaluating(vae):
        elbo = float(elbo_terms(vae, data.x_train, num_samples=100)["elbo"].mean())
    cosines = principal_cosines(weight, fit.components)
    write_results(out, f"Linear VAE vs pPCA on {config.dataset} (training data, "
                  f"{x.shape[0]} points, D = {x.shape[1]}, q = {args.latent_dim}; {epochs} "
                  f"epochs, {seconds:.0f} s)",
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
