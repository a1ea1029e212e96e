"""Image VAEs of the source material: MLP with a 2-D and a 20-D latent, convolutional, CelebA.

* ``--dataset fashion-mnist`` (or ``mnist`` where you have it, or ``digits``, the embedded 8×8
  set): MLP 784-400-L with a Bernoulli likelihood on dynamically binarized pixels, for each L in
  ``--latent-dims`` (default 2 and 20), and with ``--conv`` the convolutional VAE too.
* ``--dataset celeba``: the 64×64 convolutional VAE with batch norm, Gaussian likelihood with a
  learned σ (needs the CelebA files under ``--data-root``; torchvision downloads them where a
  network is reachable with ``--download``).

    python examples/images.py --dataset fashion-mnist --epochs 20 --conv
    python examples/images.py --dataset celeba --data-root ~/data --epochs 10
    python examples/images.py --smoke

Writes for each model ``<name>/figures/``: ``reconstructions.png``, ``samples.png``,
``latent.png`` (scatter of μ(x) by label; PCA for L > 2), ``manifold.png`` (L = 2: decoded
grid over the latent plane), ``interpolation.png`` and ``interpolation.gif``, ``elbo.png``; and
``results.md`` with the test ELBO and an IWAE estimate of log p(x) for each.
"""

from __future__ import annotations

import argparse
import time

from _common import add_run_options

from pyro_vae import Config, iwae_log_likelihood, train_run
from pyro_vae.infer.evaluation import Estimate
from pyro_vae.lab.reporting import write_results


def model_configs(args: argparse.Namespace) -> dict[str, Config]:
    common = dict(dataset=args.dataset, data_root=args.data_root, download=args.download,
                  epochs=args.epochs, max_train=args.max_train, max_test=args.max_test,
                  batch_size=args.batch_size, seed=args.seed, device=args.device)
    if args.dataset == "celeba":
        return {"celeba-conv": Config(arch="conv", **common)}
    configs = {f"mlp-latent{dim}": Config(arch="mlp", latent_dim=dim, **common)
               for dim in args.latent_dims}
    if args.conv:
        configs["conv-latent20"] = Config(arch="conv", latent_dim=20, likelihood="bernoulli",
                                          binarize="dynamic", **common)
    return configs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="fashion-mnist",
                   choices=("fashion-mnist", "mnist", "digits", "celeba"))
    p.add_argument("--data-root", default=None)
    p.add_argument("--download", action="store_true")
    p.add_argument("--latent-dims", default="2,20",
                   type=lambda s: [int(v) for v in s.split(",")])
    p.add_argument("--conv", action="store_true", help="also train the convolutional VAE")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--max-train", type=int, default=None)
    p.add_argument("--max-test", type=int, default=None)
    p.add_argument("--iw-samples", type=int, default=1000)
    p.add_argument("--iw-points", type=int, default=1000,
                   help="test points for the IWAE estimate (default 1000)")
    add_run_options(p, "runs/images", "a seconds-long run (digits by default)")
    args = p.parse_args()
    if args.smoke:
        if args.dataset not in ("digits", "celeba"):
            args.dataset = "digits"
        args.epochs, args.max_train, args.max_test, args.batch_size = 1, 64, 32, 2
        args.iw_samples, args.iw_points = 10, 8

    rows = []
    for name, config in model_configs(args).items():
        start = time.perf_counter()
        run = train_run(config, f"{args.out}/{name}", progress=False)
        seconds = time.perf_counter() - start
        data, vae, last = run.trainer.data, run.trainer.vae, run.history[-1]
        iwae = iwae_log_likelihood(vae, data.x_test[:args.iw_points], num_samples=args.iw_samples)
        rows.append([name, config.epochs, f"{seconds:.0f}",
                     f"{last['test_elbo']:.2f} ± {last['test_elbo_se']:.2f}",
                     str(Estimate.of(iwae)), last["test_recon"], last["test_kl"]])
    write_results(args.out, f"Image VAEs on {args.dataset}",
                  ["model", "epochs", "seconds (incl. evaluation)", "test ELBO",
                   f"test IWAE (K={args.iw_samples}, {args.iw_points} points)",
                   "E[log p(x|z)]", "KL"], rows,
                  notes="Nats per image; Bernoulli models are scored on binarized test images "
                        "(one fixed draw). Figures in <model>/figures/.")


if __name__ == "__main__":
    main()
