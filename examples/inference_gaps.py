"""The inference gaps of Cremer, Li & Duvenaud (2018) for a factorized-Gaussian (FFG) encoder
and a flow encoder trained on the same data.

For each data set, two VAEs with the same networks, data, seed and epochs: one with the FFG
guide (``--guide diag``) and one with a planar-flow guide (``--guide planar``). For each trained
model, on the same test points:

* log p̂(x): AIS from the prior (T intermediate distributions, HMC transitions), with the IWAE
  estimates beside it (amortized q and q* as proposals); the report takes per point the best
  (highest value − 2 standard errors). On the circle (one latent dimension) the model's exact
  log p(x) by quadrature is the truth every estimate is checked against.
* L[q*_flow] and L[q*_FFG]: per-point optimization of a planar flow (μ, σ and every step's
  b, u, w free per point) and of a factorized Gaussian, started from the encoder, with a
  learning-rate decay and a stopping rule (``fit_local``); L[q], the encoder's ELBO.
* approximation gap log p̂(x) − L[q*] and amortization gap L[q*] − L[q], with q* of the encoder's
  own family, as in the paper's Table 2.
* BDMC on data simulated from each model: the width of the AIS sandwich at the same settings.

The paper's finding to look for: the amortization gap is the larger one, and the flow encoder's
amortization gap is smaller than the FFG encoder's.

    python examples/inference_gaps.py                     # circle, then Fashion-MNIST
    python examples/inference_gaps.py --dataset circle --eval-points 250
    python examples/inference_gaps.py --smoke

Writes ``results.md`` (one table per data set), ``gaps.json`` and ``gaps.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import matplotlib
import torch

from pyro_vae import Config, quadrature_log_likelihood, train_run
from pyro_vae.distributions.guides import GuideFamily
from pyro_vae.infer.ais import bdmc
from pyro_vae.infer.vem import chunked_local_elbo, fit_local
from pyro_vae.jobs import budget
from pyro_vae.lab.gap import amortization_gap
from pyro_vae.lab.reporting import markdown_table
from pyro_vae.models.vae import evaluating

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from _common import add_run_options

#: per data set: the training options of both models (the guide is added per model)
SETTINGS = {
    "circle": dict(dataset="circle", epochs=500),
    "fashion-mnist": dict(dataset="fashion-mnist", hidden=(200, 200), latent_dim=20,
                          binarize="dynamic", epochs=10),
}
SMOKE = {
    "circle": dict(dataset="circle", epochs=5, max_train=1000, max_test=100),
    "fashion-mnist": dict(dataset="digits", hidden=(32,), latent_dim=4, epochs=2,
                          max_train=128, max_test=64),
}


def flow_q_star_elbo(vae, x, flow_length: int, seed: int, eval_samples: int,
                     max_steps: int) -> torch.Tensor:
    """L[q*_flow] of any model: a planar flow fitted per point (its own b, u, w), started from
    the encoder's Gaussian and a fresh family's near-identity steps."""
    torch.manual_seed(seed)
    family = GuideFamily("planar", vae.event_shape, vae.latent_dim, flow_length).to(x.device)
    if vae.family.kind == "planar" and vae.family.flow_length == flow_length:
        family = vae.family  # the flow encoder: start from its own amortized flow
    fit = fit_local(vae, x, family=family, seed=seed, max_steps=max_steps)
    gen = torch.Generator().manual_seed(seed + 1)
    eps = torch.randn(eval_samples, x.shape[0], vae.latent_dim, generator=gen).to(x.device)
    with evaluating(vae), torch.no_grad():
        return chunked_local_elbo(vae, x, None, family, fit.params, eps)


def mean_se(t: torch.Tensor | None) -> str:
    if t is None:
        return "—"
    t = t.double()
    return f"{float(t.mean()):.2f} ± {float(t.std() / math.sqrt(t.numel())):.2f}"


def study(name: str, options: dict, args: argparse.Namespace, out: Path) -> dict:
    """Train both encoders on one data set and measure every quantity of the table."""
    results = {}
    for guide in ("diag", "planar"):
        config = Config(**options, guide=guide, flow_length=args.flow_length, seed=args.seed,
                        device=args.device)
        start = time.perf_counter()
        run = train_run(config, out / name / guide, progress=False, figures=False)
        train_seconds = time.perf_counter() - start
        vae = run.trainer.vae
        x = run.trainer.data.x_test[: args.eval_points]
        torch.manual_seed(args.seed)
        report = amortization_gap(vae, x, iw_samples=args.iw_samples, seed=args.seed,
                                  eval_samples=args.eval_samples, ais_steps=args.ais_steps,
                                  ais_chains=args.ais_chains, max_steps=args.max_fit_steps,
                                  refine_steps=min(50, args.max_fit_steps),
                                  # SA-VAE's refinement is of a Gaussian's (μ, σ): the FFG's
                                  semi_amortized=args.semi_amortized if guide == "diag" else 0)
        # the flow encoder's own family is the flow: its q* is the report's; the FFG
        # encoder's flow q* is fitted here
        flow_star = flow_q_star_elbo(vae, x, args.flow_length, args.seed, args.eval_samples,
                                     args.max_fit_steps) if guide == "diag" \
            else report.elbo_q_star
        start = time.perf_counter()
        sandwich = bdmc(vae, num_points=args.bdmc_points, num_steps=args.ais_steps,
                        num_chains=args.ais_chains)
        bdmc_seconds = time.perf_counter() - start
        row = {
            "train_seconds": train_seconds,
            "log_px": report.log_px, "ais": report.estimates["ais"],
            "ais_stderr": report.stderrs["ais"], "iwae_q": report.estimates["iwae_q"],
            "elbo_q_star_flow": flow_star,
            "elbo_q_sa": report.elbo_q_sa,
            "gap_seconds": sum(v for k, v in report.seconds.items() if k != "total"),
            "elbo_q_star_ffg": report.elbo_q_star_ffg, "elbo_q": report.elbo_q,
            "elbo_q_star": report.elbo_q_star,
            "ais_seconds_per_point": report.seconds["ais"] / x.shape[0],
            "sandwich_width": sandwich.width, "bdmc_seconds": bdmc_seconds,
            "chosen": report.chosen,
        }
        if vae.latent_dim == 1:
            row["exact"] = quadrature_log_likelihood(vae, x).float()
        results[guide] = row
    return results


def fraction_closed(r: dict) -> str:
    """(L[q_SA] − L[q]) / (L[q*] − L[q]) over the points, ± its delta-method standard error
    (the ratio of two means of paired per-point differences)."""
    if r["elbo_q_sa"] is None:
        return "—"
    gain = (r["elbo_q_sa"] - r["elbo_q"]).double()
    gap = (r["elbo_q_star"] - r["elbo_q"]).double()
    ratio = float(gain.mean() / gap.mean())
    n = gain.numel()
    resid = gain - ratio * gap  # the ratio estimator's linearization
    se = float(resid.std() / math.sqrt(n) / gap.mean().abs())
    return f"{ratio:.3f} ± {se:.3f}"


def table(name: str, results: dict, args: argparse.Namespace) -> str:
    labels = {"diag": "FFG encoder", "planar": f"planar flow encoder (K = {args.flow_length})"}
    header = ["quantity (nats per point, ± se)"] + [labels[g] for g in results]
    keys = [("log p̂(x) (best estimate per point)", "log_px")]
    if "exact" in results["diag"]:
        keys += [("  exact log p(x), quadrature", "exact")]
    keys += [(f"  AIS, T = {args.ais_steps}, {args.ais_chains} chains", "ais"),
             ("  IWAE, amortized q as proposal", "iwae_q"),
             ("L[q*_flow] (planar flow per point)", "elbo_q_star_flow"),
             ("L[q*_FFG] (factorized Gaussian per point)", "elbo_q_star_ffg"),
             ("L[q] (the encoder)", "elbo_q")]
    if args.semi_amortized:
        keys.insert(-1, (f"L[q_SA] (q refined by {args.semi_amortized} SVI steps per point)",
                         "elbo_q_sa"))
    rows = [[label] + [mean_se(r[key]) for r in results.values()] for label, key in keys]
    for label, fn in (("approximation gap log p̂(x) − L[q*] (own family)",
                       lambda r: r["log_px"] - r["elbo_q_star"]),
                      ("amortization gap L[q*] − L[q] (own family)",
                       lambda r: r["elbo_q_star"] - r["elbo_q"])):
        rows.append([label] + [mean_se(fn(r)) for r in results.values()])
    if args.semi_amortized:
        rows.append(["fraction of the amortization gap closed by q_SA"]
                    + [fraction_closed(r) for r in results.values()])
    if "exact" in results["diag"]:
        rows.append(["|AIS − exact| / AIS standard error, median"]
                    + [f"{float(((r['ais'] - r['exact']).abs() / r['ais_stderr']).median()):.2f}"
                       for r in results.values()])
        rows.append(["log p(x) − L[q], exact"]
                    + [mean_se(r["exact"] - r["elbo_q"]) for r in results.values()])
    rows.append(["AIS seconds per point"]
                + [f"{r['ais_seconds_per_point']:.3f}" for r in results.values()])
    rows.append([f"BDMC sandwich width on {args.bdmc_points} simulated points"]
                + [mean_se(r["sandwich_width"]) for r in results.values()])
    rows.append(["training seconds"] + [f"{r['train_seconds']:.0f}" for r in results.values()])
    rows.append(["gap report seconds"] + [f"{r['gap_seconds']:.0f}" for r in results.values()])
    return f"## {name}\n\n" + markdown_table(header, rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", choices=("circle", "fashion-mnist", "both"), default="both")
    p.add_argument("--flow-length", type=int, default=4)
    p.add_argument("--eval-points", type=int, default=200, help="test points scored")
    p.add_argument("--iw-samples", type=int, default=5000)
    p.add_argument("--eval-samples", type=int, default=1000, help="draws per ELBO estimate")
    p.add_argument("--ais-steps", type=int, default=2000)
    p.add_argument("--ais-chains", type=int, default=16)
    p.add_argument("--bdmc-points", type=int, default=50)
    p.add_argument("--semi-amortized", type=int, default=20, metavar="K",
                   help="also score the encoder refined by K SVI steps per point (SA-VAE's "
                        "test-time refinement; 0: not)")
    p.add_argument("--max-fit-steps", type=int, default=5000,
                   help="step limit of each per-point fit (they stop by their decay rule)")
    add_run_options(p, "runs/inference_gaps", "a seconds-long run (circle and digits)")
    args = p.parse_args()
    settings = SMOKE if args.smoke else SETTINGS
    if args.smoke:
        args.eval_points, args.iw_samples, args.eval_samples = 8, 50, 50
        args.ais_steps, args.ais_chains, args.bdmc_points, args.max_fit_steps = 10, 4, 2, 50
        args.semi_amortized = min(args.semi_amortized, 2)
    names = list(settings) if args.dataset == "both" else [args.dataset]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sections, dump = [], {}
    fig, axes = plt.subplots(1, len(names), figsize=(6 * len(names), 4), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        with budget(max_minutes=None):  # no limit; progress lines with ETAs on stderr
            results = study(name, settings[name], args, out)
        sections.append(table(settings[name]["dataset"], results, args))
        dump[name] = {g: {k: (v.tolist() if torch.is_tensor(v) else v) for k, v in r.items()}
                      for g, r in results.items()}
        tallest = 0.0
        for i, r in enumerate(results.values()):
            gaps = [float((r["log_px"] - r["elbo_q_star"]).mean()),
                    float((r["elbo_q_star"] - r["elbo_q"]).mean())]
            tallest = max(tallest, *gaps)
            ax.bar([i - 0.2, i + 0.2], gaps, width=0.4, color=["C0", "C1"],
                   label=["approximation gap", "amortization gap"] if i == 0 else None)
        ax.set_xticks(range(len(results)), ["FFG", "planar flow"])
        ax.set(title=f"{settings[name]['dataset']}: inference gaps", ylabel="nats per point")
        ax.set_ylim(min(0.0, ax.get_ylim()[0]), max(tallest, 1e-3) * 1.35)
        ax.legend(loc="upper left", ncols=2)
    fig.tight_layout()
    fig.savefig(out / "gaps.png", dpi=110)
    text = ("# Inference gaps: FFG and flow encoders\n\n" + "\n".join(sections)
            + (f"\nq_SA: the encoder's Gaussian refined by {args.semi_amortized} SVI steps per "
               "point (SemiAmortizedGuide, test time; a flow's sites are not refined: —)."
               if args.semi_amortized else "")
            + f"\nlog p̂(x), gaps and ELBOs on the first {args.eval_points} test points "
            f"(± standard error over points); {args.iw_samples} IWAE draws, "
            f"{args.eval_samples} draws per ELBO.\n")
    (out / "results.md").write_text(text)
    (out / "gaps.json").write_text(json.dumps(dump) + "\n")
    print(text)


if __name__ == "__main__":
    main()
