"""Burda, Grosse & Salakhutdinov (2016), Table 1's ordering on Fashion-MNIST at a CPU's size:
one against two stochastic layers, each trained with the ELBO (VAE, k = 1) and with the IWAE
bound (k = 5), scored by the IWAE bound with K = 5000 on held-out images.

The paper's architectures, tanh units: one layer 784-200-200-50 (encoder and decoder mirror);
two layers :class:`~pyro_vae.models.two_layer.TwoLayerVAE` with z1 of 100 and z2 of 50
(hidden 100-100 below z1, 50-50 between z1 and z2), its bottom-up guide. Dynamically binarized
Fashion-MNIST (``apt-get install -y dataset-fashion-mnist``), Adam 1e-3, batch 100, the same
epochs for every model; the paper trains 3280 epochs with a decaying step on MNIST, this one a
few. Every model goes through the library's one training loop (``Trainer(model, data,
loss=..., optim=..., config=...)``) and the same evaluation (``iwae_log_likelihood``).

    OMP_NUM_THREADS=1 python benchmarks/burda_two_layer.py              # ~8 min on the 2-core VM
    python benchmarks/burda_two_layer.py --max-train 2000 --epochs 1 --eval-points 50   # seconds

Prints a Markdown table (test log p(x) ± se over images, the paired differences the ordering
rests on, training seconds) and writes it to ``--out``/results.md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pyro
import torch

from pyro_vae import Config, Trainer, iwae_log_likelihood
from pyro_vae.data import prepare_data
from pyro_vae.infer.elbo import make_elbo
from pyro_vae.infer.importance import ImportanceWeightedELBO
from pyro_vae.lab.reporting import markdown_table
from pyro_vae.models import build_vae
from pyro_vae.models.two_layer import TwoLayerVAE


def model(layers: int, event_shape, num_data: int):
    if layers == 2:
        return TwoLayerVAE(event_shape, latent_dims=(100, 50), hidden=((100, 100), (50, 50)),
                           num_data=num_data)
    config = Config(dataset="fashion-mnist", hidden=(200, 200), latent_dim=50,
                    activation="tanh").resolved()
    return build_vae(config, event_shape, num_data=num_data)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--max-train", type=int, default=20000)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--k", type=int, default=5, help="IWAE samples in training")
    p.add_argument("--eval-points", type=int, default=500)
    p.add_argument("--iw-samples", type=int, default=5000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/burda_two_layer")
    args = p.parse_args()
    config = Config(dataset="fashion-mnist", max_train=args.max_train, epochs=args.epochs,
                    batch_size=100, binarize="dynamic", seed=args.seed, eval_samples=1)
    data = prepare_data(config.resolved())
    gen = torch.Generator().manual_seed(args.seed)
    x_test = torch.bernoulli(data.x_test[:args.eval_points], generator=gen)
    results = {}
    for layers in (1, 2):
        for name, loss in (("ELBO (VAE, k = 1)", make_elbo("trace")),
                           (f"IWAE, k = {args.k}", ImportanceWeightedELBO("iwae", args.k))):
            pyro.clear_param_store()
            pyro.set_rng_seed(args.seed)
            net = model(layers, data.event_shape, data.x_train.shape[0])
            trainer = Trainer(net, data, loss=loss, optim=pyro.optim.Adam({"lr": 1e-3}),
                              config=config)
            start = time.perf_counter()
            trainer.fit()
            seconds = time.perf_counter() - start
            pyro.set_rng_seed(args.seed)
            ll = iwae_log_likelihood(net, x_test, num_samples=args.iw_samples).detach()
            label = f"{layers} layer{'s' if layers == 2 else ''}, {name}"
            results[label] = (ll, seconds)
            print(f"{label}: test log p(x) {float(ll.mean()):.2f}, {seconds:.0f} s", flush=True)
    labels = list(results)
    rows = [[label, f"{float(ll.mean()):.2f} ± {float(ll.std() / len(ll) ** 0.5):.2f}",
             f"{seconds:.0f}"] for label, (ll, seconds) in results.items()]
    table = markdown_table(["model, training objective", "test log p(x), K = "
                            f"{args.iw_samples}", "training s"], rows)

    def diff(a: str, b: str) -> str:
        d = results[a][0] - results[b][0]
        return f"| {a} − {b} | {float(d.mean()):+.2f} ± {float(d.std() / len(d) ** 0.5):.2f} |"

    pairs = [(labels[2], labels[0]), (labels[3], labels[1]), (labels[1], labels[0]),
             (labels[3], labels[2])]
    text = (f"{table}\n\nPaired differences over the same {len(x_test)} test images:\n\n"
            "| difference | nats ± se |\n| --- | ---: |\n"
            + "\n".join(diff(a, b) for a, b in pairs)
            + f"\n\n{args.max_train} training images, {args.epochs} epochs, batch 100, Adam "
            "1e-3, dynamic binarization.\n")
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text(text)
    (out / "results.json").write_text(json.dumps(
        {k: {"log_px": v[0].tolist(), "seconds": v[1]} for k, v in results.items()}) + "\n")


if __name__ == "__main__":
    main()
