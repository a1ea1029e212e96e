"""Seconds per training epoch: pyro-vae's trainer against plain PyTorch and against the way
Pyro's own VAE example trains, same network, same loss, measured in one process.

(a) library: ``pyro_vae.Trainer`` (Pyro SVI on ``VAE.model`` / ``VAE.guide``, tensors in memory)
(b) plain PyTorch: the same encoder/decoder modules, the same ELBO written by hand
    (Bernoulli log-likelihood with logits, Monte Carlo or analytic KL), ``torch.optim.Adam``,
    in-memory batching: the floor for this network on this machine
(c) Pyro-example way: ``torch.utils.data.DataLoader`` over a ``TensorDataset``, ``pyro.infer.SVI``
    with ``pyro.optim.Adam`` and ``Trace_ELBO``, on the same model and guide

Epochs alternate a, b, c, a, b, c, ... and the median seconds per epoch is reported with the
ratios a/b and c/a, and each method's test ELBO after the same number of epochs.

    python benchmarks/train_speed.py --epochs 3 --batch-size 256
"""

from __future__ import annotations

import argparse
import statistics
import time

import pyro
import torch
import torch.nn.functional as F
from pyro.infer import SVI, Trace_ELBO, TraceMeanField_ELBO

from pyro_vae import Config, Trainer, build_vae, evaluate_elbo
from pyro_vae.runs import prepare_data


def plain_epoch(vae, opt, x, batch_size, analytic):
    n = x.shape[0]
    for idx in torch.randperm(n).split(batch_size):
        xb = x[idx]
        loc, scale = vae.encoder(xb)
        z = loc + scale * torch.randn_like(loc)
        logits = vae.decoder(z).reshape(xb.shape)
        rec = -F.binary_cross_entropy_with_logits(logits, xb, reduction="none").flatten(1).sum(1)
        if analytic:
            kl = 0.5 * (loc**2 + scale**2 - 1 - 2 * scale.log()).sum(1)
        else:
            q = torch.distributions.Normal(loc, scale)
            p = torch.distributions.Normal(0.0, 1.0)
            kl = (q.log_prob(z) - p.log_prob(z)).sum(1)
        loss = -(rec - kl).sum() * (n / xb.shape[0])
        opt.zero_grad()
        loss.backward()
        opt.step()


def pyro_example_epoch(svi, loader):
    for (xb,) in loader:
        svi.step(xb)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--elbo", default="trace", choices=("trace", "meanfield"))
    p.add_argument("--hidden", default="400")
    p.add_argument("--latent-dim", type=int, default=50)
    args = p.parse_args()
    hidden = tuple(int(h) for h in args.hidden.split(","))
    config = Config(dataset=args.dataset, hidden=hidden, latent_dim=args.latent_dim,
                    activation="softplus", likelihood="bernoulli", binarize="threshold",
                    elbo=args.elbo, batch_size=args.batch_size, lr=1e-3,
                    epochs=args.epochs).resolved()
    data = prepare_data(config)
    x, n = data.x_train, data.x_train.shape[0]
    analytic = args.elbo == "meanfield"

    pyro.set_rng_seed(0)
    lib = Trainer(config, data)
    torch.manual_seed(0)
    plain = build_vae(config, data.event_shape, num_data=n)
    plain_opt = torch.optim.Adam([*plain.encoder.parameters(), *plain.decoder.parameters()],
                                 lr=1e-3)
    example = build_vae(config, data.event_shape, num_data=n)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x),
                                         batch_size=args.batch_size, shuffle=True)
    elbo = (TraceMeanField_ELBO if analytic else Trace_ELBO)()

    times = {"library": [], "plain": [], "pyro-example": []}
    example_svi = SVI(example.model, example.guide, pyro.optim.Adam({"lr": 1e-3}), loss=elbo)
    # (a) and (c) both register "encoder"/"decoder" in Pyro's global param store: keep one
    # store state per method and swap them (the same tensor objects, so optimizers stay valid)
    stores = {"library": pyro.get_param_store().get_state(), "pyro-example": None}

    def switch(to: str, current: str) -> None:
        store = pyro.get_param_store()
        stores[current] = store.get_state()
        store.clear()
        if stores[to] is not None:
            store.set_state(stores[to])

    for _ in range(args.epochs):
        times["library"].append(lib.train_epoch()["seconds"])
        start = time.perf_counter()
        plain_epoch(plain, plain_opt, x, args.batch_size, analytic)
        times["plain"].append(time.perf_counter() - start)
        switch("pyro-example", "library")
        start = time.perf_counter()
        pyro_example_epoch(example_svi, loader)
        times["pyro-example"].append(time.perf_counter() - start)
        switch("library", "pyro-example")

    med = {k: statistics.median(v) for k, v in times.items()}
    test = {"library": evaluate_elbo(lib.vae, data.x_test)["elbo"],
            "plain": evaluate_elbo(plain, data.x_test)["elbo"]}
    switch("pyro-example", "library")
    test["pyro-example"] = evaluate_elbo(example, data.x_test)["elbo"]
    print(f"{args.dataset} MLP {hidden}-{args.latent_dim}, batch {args.batch_size}, "
          f"{args.elbo} ELBO, {args.epochs} epochs each, torch threads {torch.get_num_threads()}")
    print("| method | median s / epoch | test ELBO after the same epochs |")
    print("| --- | ---: | ---: |")
    for k in times:
        print(f"| {k} | {med[k]:.3f} | {test[k].mean:.2f} ± {test[k].stderr:.2f} |")
    print(f"library / plain PyTorch = {med['library'] / med['plain']:.2f}; "
          f"Pyro-example way / library = {med['pyro-example'] / med['library']:.2f}")


if __name__ == "__main__":
    main()
