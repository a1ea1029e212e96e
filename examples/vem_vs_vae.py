"""Non-amortized variational EM next to the amortized VAE, trained side by side.

Both fit the same decoder architecture with the same ELBO (``TraceMeanField_ELBO``), batch size
and learning rate for θ. The VAE learns an encoder q_φ(z|x); vEM keeps λ_n = (μ_n, σ_n) per
training point (E-step: 5 Adam steps on the batch's λ; M-step: one step on θ). After training,
test points get their λ by test-time vEM with θ frozen (``fit_local``), and the VAE's encoder
is scored on the same points.

    python examples/vem_vs_vae.py --dataset circle --epochs 100
    python examples/vem_vs_vae.py --dataset fashion-mnist --max-train 5000 --epochs 20
    python examples/vem_vs_vae.py --smoke

Writes ``vem_vs_vae.png`` (train ELBO against epochs and against seconds) and ``results.md``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import matplotlib
import pyro
import torch

from pyro_vae import Config, Trainer, evaluate_elbo
from pyro_vae.data import prepare_data
from pyro_vae.infer.vem import VariationalEM, fit_local, gaussian_elbo

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from _common import add_run_options


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="circle", choices=("circle", "fashion-mnist", "moons",
                                                           "digits"))
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--max-train", type=int, default=None)
    p.add_argument("--max-test", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=None)
    add_run_options(p, "runs/vem-vs-vae", device=False)
    args = p.parse_args()
    if args.smoke:
        args.epochs, args.max_train, args.max_test, args.batch_size = 2, 300, 50, 100
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    config = Config(dataset=args.dataset, epochs=args.epochs, max_train=args.max_train,
                    max_test=args.max_test, batch_size=args.batch_size, elbo="meanfield",
                    binarize="threshold" if args.dataset in ("fashion-mnist", "digits")
                    else None, seed=args.seed).resolved()
    data = prepare_data(config)
    x_train, x_test = data.x_train, data.x_test
    n = x_train.shape[0]

    pyro.set_rng_seed(args.seed)
    vae_trainer = Trainer.from_config(config, data)
    vae_curve, spent = [], 0.0
    for _ in range(args.epochs):
        m = vae_trainer.train_epoch()
        spent += m["seconds"]
        vae_curve.append((m["epoch"], spent, m["train_elbo"]))
    vae_test = evaluate_elbo(vae_trainer.vae, x_test, num_samples=100)["elbo"].mean

    pyro.set_rng_seed(args.seed)
    pyro.clear_param_store()
    from pyro_vae.models.builder import build_vae

    vem_vae = build_vae(config, data.event_shape)
    vem = VariationalEM(vem_vae, n, e_steps=5, e_lr=3e-2, m_lr=config.lr)
    vem_curve, spent = [], 0.0
    eps = torch.randn(16, n, config.latent_dim, generator=torch.Generator().manual_seed(0))
    for epoch in range(1, args.epochs + 1):
        start = time.perf_counter()
        vem.fit(x_train, None, epochs=1, batch_size=config.batch_size)
        spent += time.perf_counter() - start
        loc, scale = vem.local.values()
        with torch.no_grad():
            elbo = float(gaussian_elbo(vem_vae, x_train, None, loc, scale, eps).mean())
        vem_curve.append((epoch, spent, elbo))
    start = time.perf_counter()
    test_fit = fit_local(vem_vae, x_test, init="zero", max_steps=2000)
    test_seconds = time.perf_counter() - start
    with torch.no_grad():
        eps_t = torch.randn(100, *test_fit.loc.shape)
        vem_test = float(gaussian_elbo(vem_vae, x_test, None, test_fit.loc, test_fit.scale,
                                       eps_t).mean())

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for curve, label in ((vae_curve, "VAE (amortized encoder)"), (vem_curve, "vEM (λ per point)")):
        axes[0].plot([c[0] for c in curve], [c[2] for c in curve], label=label)
        axes[1].plot([c[1] for c in curve], [c[2] for c in curve], label=label)
    axes[0].set_xlabel("epoch")
    axes[1].set_xlabel("training seconds")
    for ax in axes:
        ax.set_ylabel("train ELBO (nats per point)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"vEM vs VAE on {args.dataset} ({n} training points)")
    fig.tight_layout()
    fig.savefig(out / "vem_vs_vae.png", dpi=110)
    results = {
        "dataset": args.dataset, "train_points": n, "epochs": args.epochs,
        "vae": {"train_elbo": vae_curve[-1][2], "test_elbo": vae_test,
                "seconds": vae_curve[-1][1]},
        "vem": {"train_elbo": vem_curve[-1][2], "test_elbo_after_test_time_fit": vem_test,
                "seconds": vem_curve[-1][1], "test_fit_seconds": test_seconds,
                "test_fit_steps": test_fit.steps},
    }
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    table = ["| method | train ELBO | test ELBO | training seconds |",
             "| --- | ---: | ---: | ---: |",
             f"| VAE | {vae_curve[-1][2]:.3f} | {vae_test:.3f} | {vae_curve[-1][1]:.1f} |",
             f"| vEM | {vem_curve[-1][2]:.3f} | {vem_test:.3f} (test-time fit, "
             f"{test_seconds:.1f} s) | {vem_curve[-1][1]:.1f} |"]
    (out / "results.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))


if __name__ == "__main__":
    main()
