"""The ``pyro-vae`` command: ``train``, ``evaluate``, ``sample`` and ``plot``.

Every error the library raises on purpose is printed as one line, ``pyro-vae: error: ...``, and
exits with status 2 (as argparse does for a bad option); Ctrl-C during training finishes the
current epoch, writes the checkpoint and exits with status 130.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
import warnings
from pathlib import Path

from pyro_vae.config import (
    COMPONENTS,
    Config,
    flag,
    option_choices,
    parse_float,
    parse_int,
    parse_path,
    train_estimators,
)
from pyro_vae.errors import ConfigError, PyroVAEError
from pyro_vae.infer.importance import OBJECTIVES
from pyro_vae.jobs import DEFAULT_MAX_MINUTES, budget
from pyro_vae.lab.discrete import DISCRETE_TOY

#: The source of every option's default: the CLI states none of its own.
_DEFAULT = Config()
TRAIN_ESTIMATORS = train_estimators()
_float, _int, _path = parse_float, parse_int, parse_path


def _nonnegative(text: str) -> int:
    """An integer ≥ 0 (a number of warm-up steps, say)."""
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer ≥ 0, got {text!r}")
    return value


def _count(text: str) -> int:
    """An integer ≥ 1 (a number of samples, points, steps or repeats)."""
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer ≥ 1, got {text!r}")
    return value


def _add_config_option(group: argparse._ArgumentGroup, f: dataclasses.Field) -> None:
    """The option of configuration field ``f``, as its metadata defines it
    (:func:`~pyro_vae.config.option`). Its default is argparse's ``SUPPRESS``: an option not
    given leaves no attribute, so that a configuration file's value (or else the field's
    default) applies."""
    meta = f.metadata
    text = meta["help"].replace("%(default)s", str(f.default).replace("%", "%%"))
    kwargs: dict = {"dest": f.name, "default": argparse.SUPPRESS, "help": text}
    if meta["negatable"]:
        kwargs["action"] = argparse.BooleanOptionalAction
    elif f.default is False:
        kwargs["action"] = "store_true"
    else:
        if meta["parse"] is not None:
            kwargs["type"] = meta["parse"]
        if option_choices(f) is not None:
            kwargs["choices"] = option_choices(f)
    group.add_argument(flag(f.name), **kwargs)


def _add_train_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=_path, metavar="FILE",
                   help="read the run's options from a TOML, YAML or JSON file, flat or in one "
                   "table per component below (a run folder's config.json, or the folder, "
                   "repeats that run); options given here override the file's")
    groups = {}
    for name, component in COMPONENTS.items():
        groups[name] = group = p.add_argument_group(name, component.__doc__)
        for f in dataclasses.fields(component):
            _add_config_option(group, f)
    r = groups["run"]
    r.add_argument("--out", type=_path,
                   help="run folder (default runs/DATASET, or runs/DATASET-N if taken)")
    r.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its checkpoint")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    r.add_argument("--no-figures", action="store_true", help="skip the figures at the end")


def _config_from_args(args: argparse.Namespace) -> Config:
    """The configuration of ``pyro-vae train``: the options given on the command line, over
    those of ``--config FILE``, over the fields' defaults."""
    given = {f: getattr(args, f) for f in Config.__dataclass_fields__ if hasattr(args, f)}
    if getattr(args, "config", None) is not None:
        return Config.from_file(args.config, **given)
    return Config(**given)


def _default_out(dataset: str) -> Path:
    base = Path("runs") / dataset
    if not (base / "checkpoint.pt").exists():
        return base
    n = 2
    while (Path("runs") / f"{dataset}-{n}" / "checkpoint.pt").exists():
        n += 1
    return Path("runs") / f"{dataset}-{n}"


def cmd_train(args: argparse.Namespace) -> int:
    from pyro_vae.runs import train_run

    config = _config_from_args(args)
    if args.resume and not args.out:
        raise ConfigError("--resume needs --out RUN_FOLDER, the run to continue; add --out RUN")
    out = Path(args.out) if args.out else _default_out(config.dataset)
    start = time.perf_counter()
    result = train_run(config, out, resume=args.resume, progress=not args.no_progress,
                       figures=not args.no_figures)
    if result is None:  # a data-parallel worker other than the first: it writes nothing
        return 0
    last = result.history[-1] if result.history else {}
    print(f"run folder: {out}  ({time.perf_counter() - start:.1f} s)")
    if last:
        print(f"epoch {last['epoch']}: train ELBO {last['train_elbo']:.4f}, test ELBO "
              f"{last['test_elbo']:.4f} ± {last['test_elbo_se']:.4f} nats/point "
              f"(recon {last['test_recon']:.4f}, KL {last['test_kl']:.4f})")
    print(f"next: pyro-vae evaluate {out} --iw-samples 1000")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from pyro_vae.infer.evaluation import Estimate, evaluate_elbo, iwae_log_likelihood
    from pyro_vae.runs import load_run

    if args.iw_samples < 1:
        raise ConfigError(f"--iw-samples must be ≥ 1, got {args.iw_samples}; "
                          "e.g. --iw-samples 1000")
    run = load_run(args.run, device=args.device)
    x, y = run.data.x_test, run.data.y_test
    if args.max_points is not None:
        x, y = x[: args.max_points], None if y is None else y[: args.max_points]
    y = y if run.vae.conditional else None
    start = time.perf_counter()
    elbo = evaluate_elbo(run.vae, x, y, num_samples=args.elbo_samples, guide=run.guide)
    t_elbo = time.perf_counter() - start
    start = time.perf_counter()
    if args.method == "ais":
        from pyro_vae.infer.ais import ais_log_likelihood

        if args.ais_steps < 1:
            raise ConfigError(f"--ais-steps must be ≥ 1 for --method ais, got {args.ais_steps}; "
                              "e.g. 2000")
        ll = Estimate.of(ais_log_likelihood(run.vae, x, y, num_steps=args.ais_steps,
                                            num_chains=args.ais_chains,
                                            leapfrog_steps=args.ais_leapfrog,
                                            proposal=args.ais_proposal,
                                            batch_size=args.batch_size, guide=run.guide).log_px)
    else:
        ll = Estimate.of(iwae_log_likelihood(run.vae, x, y, num_samples=args.iw_samples,
                                             batch_size=args.batch_size, guide=run.guide))
    t_ll = time.perf_counter() - start
    result = {
        "run": str(args.run),
        "num_points": int(x.shape[0]),
        "test_elbo": elbo["elbo"].mean, "test_elbo_se": elbo["elbo"].stderr,
        "test_recon": elbo["recon"].mean, "test_kl": elbo["kl"].mean,
        "test_log_likelihood": ll.mean, "test_log_likelihood_se": ll.stderr,
        "method": args.method, "iw_samples": args.iw_samples,
        "ais_steps": args.ais_steps if args.method == "ais" else None,
        "ais_chains": args.ais_chains if args.method == "ais" else None,
        "seconds_per_point": t_ll / x.shape[0],
        "seconds": t_elbo + t_ll,
        "iw_samples_per_second": args.iw_samples * x.shape[0] / max(t_ll, 1e-9),
    }
    folder = Path(args.run).parent if Path(args.run).is_file() else Path(args.run)
    tmp = folder / f".evaluation.json.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, folder / "evaluation.json")  # what `pyro-vae compare` shows
    if args.json:
        print(json.dumps(result))
    else:
        def pm(se: float) -> str:  # a standard error over the points: none for one point
            return f" ± {se:.4f}" if x.shape[0] > 1 else ""

        print(f"test points:            {result['num_points']}" + (
            " (one point: no standard error over points)" if x.shape[0] == 1 else ""))
        print(f"test ELBO:              {result['test_elbo']:.4f}{pm(result['test_elbo_se'])} "
              f"nats/point (recon {result['test_recon']:.4f}, KL {result['test_kl']:.4f})")
        how = f"IWAE, K = {args.iw_samples}" if args.method == "iwae" else \
            f"AIS, T = {args.ais_steps}, {args.ais_chains} chains"
        print(f"test log-likelihood:    {ll.mean:.4f}{pm(ll.stderr)} nats/point ({how}; "
              f"{t_ll / x.shape[0]:.3g} s/point)")
        print(f"time:                   {result['seconds']:.1f} s "
              f"({result['iw_samples_per_second']:.0f} importance samples/s)")
    return 0


#: file types ``pyro-vae sample --out`` writes: an image grid, a NumPy array, or CSV rows
SAMPLE_FORMATS = (".png", ".jpg", ".pdf", ".svg", ".npy", ".csv")


def cmd_sample(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from pyro_vae.plots import image_grid, prior_samples
    from pyro_vae.runs import load_run

    if args.num < 1:
        raise ConfigError(f"--num must be ≥ 1, got {args.num}; e.g. --num 64")
    run = load_run(args.run, device=args.device, load_data=False)
    torch.manual_seed(args.seed)
    from pyro_vae.models.m2 import SemiSupervisedVAE

    y = None
    if run.vae.conditional or (isinstance(run.vae, SemiSupervisedVAE) and args.label is not None):
        label = args.label if args.label is not None else 0
        if not 0 <= label < run.vae.num_classes:
            raise ConfigError(f"--label must be in [0, {run.vae.num_classes}), got {label}; "
                              "pick a class index")
        y = torch.full((args.num,), label, dtype=torch.long, device=run.device)
    elif args.label is not None:
        raise ConfigError("--label needs a model of the label (trained with --conditional or "
                          "--model m2); this one is not: drop --label")
    out = Path(args.out or Path(args.run) / "figures" / "samples_cli.png")
    if out.suffix.lower() not in SAMPLE_FORMATS:
        raise ConfigError(f"--out {out} has an unknown extension; use one of "
                          f"{', '.join(SAMPLE_FORMATS)}")
    from pyro_vae.resources import FLOAT_BYTES, check_memory, per_sample_elements

    check_memory(f"--num {args.num} samples", args.num * per_sample_elements(run.vae)
                 * FLOAT_BYTES * 2, "lower --num")
    samples = prior_samples(run.vae, args.num, y).cpu()
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".npy":
        np.save(out, samples.numpy())
    elif len(run.vae.event_shape) == 3 and out.suffix != ".csv":
        from matplotlib.image import imsave

        img = image_grid(samples, int(np.ceil(np.sqrt(args.num))))
        imsave(out, img.squeeze(-1) if img.shape[-1] == 1 else img, cmap="gray")
    else:
        np.savetxt(out.with_suffix(".csv"), samples.reshape(args.num, -1).numpy(), delimiter=",")
        out = out.with_suffix(".csv")
    print(f"wrote {args.num} samples to {out}")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from pyro_vae.plots import make_figures
    from pyro_vae.runs import load_run

    run = load_run(args.run, device=args.device)
    out = Path(args.out or Path(args.run) / "figures")
    for path in make_figures(run.vae, run.data, run.history, out):
        print(path)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from pyro_vae.lab.compare import compare_runs

    out = Path(args.out or "compare")
    table, runs = compare_runs(args.runs, out)
    print(table, end="")
    print(f"{len(runs)} runs; wrote {out / 'compare.png'}, {out / 'compare.md'}, "
          f"{out / 'compare.json'}")
    return 0


class _Given(argparse.Action):
    """Stores the value and records that the option was given (``<dest>_given``)."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        setattr(namespace, f"{self.dest}_given", True)


def _csv(kind):
    def parse(text: str):
        try:
            return tuple(kind(t) for t in text.split(",") if t.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}") \
                from None
    return parse


def load_model_for_lab(source: str, device: str):
    """A trained run folder / checkpoint, or a config JSON (fresh initialization)."""
    import pyro

    from pyro_vae.data import prepare_data
    from pyro_vae.models.builder import build_vae
    from pyro_vae.runs import load_run, resolve_device

    path = Path(source)
    if path.suffix == ".json" and path.is_file():
        try:
            config = Config.from_dict(json.loads(path.read_text())).resolved()
        except (json.JSONDecodeError, TypeError) as exc:
            raise ConfigError(f"{path} is not a pyro-vae config JSON ({exc}); write one with "
                              "'pyro-vae train' (config.json) or give a run folder") from None
        dev = resolve_device(device)
        pyro.set_rng_seed(config.seed)
        pyro.clear_param_store()
        data = prepare_data(config).to(dev)
        vae = build_vae(config, data.event_shape, data.x_train.shape[0],
                        data.num_classes).to(dev)
        return config, vae, data
    run = load_run(source, device=device)
    return run.config, run.vae, run.data


def lab_batch(args: argparse.Namespace):
    """The model of ``args.source`` (:func:`load_model_for_lab`), the first ``--batch-size``
    training points (binarized with ``--seed`` where the run binarizes dynamically) and their
    labels, and the folder the lab's report goes to by default (the run's, or the config's)."""
    import torch

    config, vae, data = load_model_for_lab(args.source, args.device)
    torch.manual_seed(args.seed)
    x = data.x_train[: args.batch_size]
    if config.binarize == "dynamic":
        x = torch.bernoulli(x)
    y = None if data.y_train is None else data.y_train[: args.batch_size]
    source = Path(args.source)
    return config, vae, x, y, source.parent if source.suffix == ".json" else source


def cmd_snr(args: argparse.Namespace) -> int:
    """``pyro-vae variance SOURCE --objective ...``: the SNR lab of importance-weighted
    objectives (:mod:`pyro_vae.lab.snr`)."""

    from pyro_vae.infer.importance import IW_ESTIMATORS
    from pyro_vae.lab.snr import gaussian_toy, run_snr_lab, snr_json, snr_table, write_snr_report

    estimators = args.estimators if args.estimators_given else ("reparam", "stl", "dreg")
    for e in estimators:
        if e not in IW_ESTIMATORS:
            raise ConfigError(f"unknown estimator {e!r} for --objective {args.objective}; choose "
                              f"from {', '.join(IW_ESTIMATORS)}")
    if args.source == GAUSSIAN_TOY:
        vae, x = gaussian_toy(num_points=args.batch_size, seed=args.seed)
        y, out_default, dataset = None, Path("runs") / GAUSSIAN_TOY, GAUSSIAN_TOY
    else:
        config, vae, x, y, out_default = lab_batch(args)
        dataset = config.dataset
    start = time.perf_counter()
    points, slopes = run_snr_lab(vae, x, y, args.objective, tuple(args.particles),
                                 tuple(estimators), args.repeats, args.num_groups, args.seed)
    seconds = time.perf_counter() - start
    out = Path(args.out or out_default / f"snr-{args.objective}")
    meta = {"source": str(args.source), "dataset": dataset, "objective": args.objective,
            "batch_size": int(x.shape[0]), "repeats": args.repeats, "seconds": seconds}
    paths = write_snr_report(points, slopes, out, meta)
    if args.json:
        print(json.dumps(snr_json(points, slopes, meta)))
    else:
        print(snr_table(points, slopes))
        print(f"{len(points)} settings x {args.repeats} estimates in {seconds:.1f} s; wrote "
              f"{', '.join(str(p) for p in paths)}")
    return 0


#: ``pyro-vae variance gaussian-toy ...``: the Gaussian model of Rainforth et al. (2018)
GAUSSIAN_TOY = "gaussian-toy"


def cmd_variance(args: argparse.Namespace) -> int:

    from pyro_vae.infer.estimators import ESTIMATORS, KL_MODES
    from pyro_vae.lab.variance import markdown_table, run_lab, write_report

    if args.objective is not None:
        return cmd_snr(args)
    if args.source == DISCRETE_TOY or _is_discrete_source(args.source):
        return cmd_discrete_variance(args)
    if args.source == GAUSSIAN_TOY:
        raise ConfigError(f"{GAUSSIAN_TOY} is a source for the SNR lab: add --objective iwae "
                          "(or another importance-weighted objective); e.g. --objective iwae")

    for e in args.estimators:
        if e not in ESTIMATORS:
            raise ConfigError(f"unknown estimator {e!r}; choose from {', '.join(ESTIMATORS)}")
    for k in args.kl:
        if k not in KL_MODES:
            raise ConfigError(f"unknown --kl {k!r}; choose mc or analytic")
    if any(s < 1 for s in args.samples) or not args.samples:
        raise ConfigError("--samples takes positive integers; give e.g. --samples 1,4,16")
    config, vae, x, y, out_default = lab_batch(args)
    start = time.perf_counter()
    results = run_lab(vae, x, y, tuple(args.estimators), tuple(args.kl), tuple(args.samples),
                      args.repeats, args.implementation, args.seed, args.warmup)
    seconds = time.perf_counter() - start
    out = Path(args.out or out_default / "variance")
    meta = {"source": str(args.source), "batch_size": int(x.shape[0]), "repeats": args.repeats,
            "implementation": args.implementation, "seconds": seconds,
            "dataset": config.dataset, "latent_dim": config.latent_dim}
    paths = write_report(results, out, meta)
    print(markdown_table(results))
    print(f"{len(results)} estimator settings x {args.repeats} estimates in {seconds:.1f} s; "
          f"wrote {', '.join(str(p) for p in paths)}")
    return 0


def _is_discrete_source(source: str) -> bool:
    """Whether a run folder / checkpoint / config JSON describes a discrete-code model."""
    path = Path(source)
    config = path / "config.json" if path.is_dir() else path
    if config.suffix != ".json" or not config.is_file():
        return False
    try:
        return json.loads(config.read_text()).get("latent", "gaussian") != "gaussian"
    except (OSError, ValueError, AttributeError):
        return False  # the regular loader reports a bad file


def cmd_discrete_variance(args: argparse.Namespace) -> int:
    """``pyro-vae variance`` on a discrete code: bias against the exact gradient (when the code
    can be enumerated), variance and cost per estimator, and the relaxations' temperature
    sweep (:mod:`pyro_vae.lab.discrete`)."""

    from pyro_vae.infer.discrete import DISCRETE_ESTIMATORS, RELAXED
    from pyro_vae.lab.discrete import (
        discrete_table,
        discrete_toy,
        run_discrete_lab,
        temperature_sweep,
        write_discrete_report,
    )

    estimators = args.estimators if args.estimators_given else DISCRETE_ESTIMATORS
    for e in estimators:
        if e not in DISCRETE_ESTIMATORS:
            raise ConfigError(f"unknown estimator {e!r} for a discrete code; choose from "
                              f"{', '.join(DISCRETE_ESTIMATORS)}")
    if args.vimco_particles < 2:
        raise ConfigError(f"--vimco-particles must be ≥ 2, got {args.vimco_particles}; e.g. 2")
    if not args.temperatures or any(not 0 < t < float("inf") for t in args.temperatures):
        raise ConfigError("--temperatures takes positive numbers; e.g. --temperatures 1,0.5,0.1")
    if args.source == DISCRETE_TOY:
        vae, x = discrete_toy(num_points=args.batch_size, seed=args.seed)
        out_default, dataset = Path("runs") / DISCRETE_TOY, "digits (binarized, 8 units)"
    else:
        config, vae, x, _, out_default = lab_batch(args)
        dataset = config.dataset
    start = time.perf_counter()
    results = run_discrete_lab(vae, x, tuple(estimators), args.vimco_particles,
                               args.temperatures[0], args.repeats, args.warmup, args.seed)
    sweep = temperature_sweep(vae, x, tuple(args.temperatures), args.repeats, args.seed) \
        if any(e in RELAXED for e in estimators) and len(args.temperatures) > 1 else []
    seconds = time.perf_counter() - start
    out = Path(args.out or out_default / "variance")
    meta = {"source": str(args.source), "dataset": dataset, "batch_size": int(x.shape[0]),
            "repeats": args.repeats, "seconds": seconds,
            "states": vae.prior(1).num_states}
    paths = write_discrete_report(results, sweep, out, meta)
    print(discrete_table(results))
    if sweep:
        print("temperature sweep of the relaxations:\n")
        print(discrete_table(sweep))
    print(f"{len(results) + len(sweep)} settings x {args.repeats} estimates in {seconds:.1f} s; "
          f"wrote {', '.join(str(p) for p in paths)}")
    return 0


def cmd_gap(args: argparse.Namespace) -> int:
    from pyro_vae.lab.gap import amortization_gap, gap_table, plot_gap
    from pyro_vae.runs import load_run

    if args.num_points < 1 or args.iw_samples < 1:
        raise ConfigError("--num-points and --iw-samples must be ≥ 1; e.g. --num-points 100")
    if args.ais_steps < 0:
        raise ConfigError(f"--ais-steps must be ≥ 0, got {args.ais_steps}; "
                          "0 turns AIS off, 2000 is a good start")
    run = load_run(args.run, device=args.device)
    x = run.data.x_test[: args.num_points]
    y = None if run.data.y_test is None else run.data.y_test[: args.num_points]
    start = time.perf_counter()
    report = amortization_gap(run.vae, x, y, iw_samples=args.iw_samples,
                              refine_steps=args.refine_steps, max_steps=args.max_steps,
                              seed=args.seed, ais_steps=args.ais_steps,
                              ais_chains=args.ais_chains,
                              ais_leapfrog_steps=args.ais_leapfrog,
                              prior_start=args.prior_start,
                              # a run trained semi-amortized: its own refinement's row
                              semi_amortized=args.semi_amortized
                              if args.semi_amortized or run.guide is None else run.guide)
    summary = report.summary()
    summary["seconds"]["total"] = time.perf_counter() - start
    out = Path(args.out or Path(args.run) / "gap")
    out.mkdir(parents=True, exist_ok=True)
    (out / "gap.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "gap.md").write_text(gap_table(summary))
    plot_gap(report, out / "gap.png")
    print(json.dumps(summary) if args.json else gap_table(summary))
    if not args.json:
        print(f"wrote {out / 'gap.md'}, {out / 'gap.json'}, {out / 'gap.png'}")
    return 0


def _add_ais_options(p: argparse.ArgumentParser, default_steps: int, what: str) -> None:
    p.add_argument("--ais-steps", type=_int, default=default_steps,
                   help=f"AIS intermediate distributions T for {what} (default %(default)s)")
    p.add_argument("--ais-chains", type=_count, default=16,
                   help="AIS chains per point (default %(default)s)")
    p.add_argument("--ais-leapfrog", type=_count, default=2,
                   help="leapfrog steps per AIS HMC transition (default %(default)s)")


def _minutes(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of minutes") from None
    if not (0 < value < float("inf")):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of minutes")
    return value


def _add_budget_options(p: argparse.ArgumentParser) -> None:
    """``--max-minutes`` and ``--no-progress`` of a command that runs long jobs
    (:mod:`pyro_vae.jobs`)."""
    p.add_argument("--max-minutes", type=_minutes, default=DEFAULT_MAX_MINUTES,
                   help="refuse, within seconds, work projected to take longer than this "
                        "(default %(default)s)")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress lines on stderr")


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: the problem and where to look, no usage block."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}; see '{self.prog} --help'\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="pyro-vae",
        description="Variational autoencoders the Pyro way: train, evaluate, sample, plot.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train a VAE and write a run folder",
                       description="Train a VAE with Pyro SVI and write a run folder "
                       "(config, metrics per epoch, checkpoint, figures).")
    _add_train_options(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="test ELBO and IWAE log-likelihood of a run",
                       description="Print the test ELBO and the importance-weighted estimate of "
                       "log p(x) (nats per data point, higher is better).")
    p.add_argument("run", type=_path, help="run folder (or its checkpoint.pt)")
    p.add_argument("--iw-samples", type=_count, default=1000,
                   help="K importance samples per point (5000 is the literature's protocol; "
                   "default 1000)")
    p.add_argument("--elbo-samples", type=_count, default=10,
                   help="samples of z for the test ELBO's reconstruction term (default 10)")
    p.add_argument("--batch-size", type=_count, default=100,
                   help="data points per chunk (default %(default)s)")
    p.add_argument("--max-points", type=_count, help="evaluate the first N test points only")
    p.add_argument("--method", choices=("iwae", "ais"), default="iwae",
                   help="log p(x) by IWAE with the guide as proposal, or by annealed importance "
                   "sampling from the prior with HMC transitions (default %(default)s)")
    _add_ais_options(p, default_steps=2000, what="--method ais")
    p.add_argument("--ais-proposal", choices=("prior", "guide"), default="prior",
                   help="where --method ais starts: the prior p(z), or the guide q(z|x) "
                   "(default %(default)s)")
    p.add_argument("--device", default=_DEFAULT.device, help="cpu, cuda, cuda:N or auto")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    _add_budget_options(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("sample", help="draw samples from a trained model",
                       description="Decode z ~ N(0, I) with Predictive and write an image grid "
                       "(images), a .csv (vectors) or a .npy array.")
    p.add_argument("run", type=_path, help="run folder (or its checkpoint.pt)")
    p.add_argument("--num", type=_count, default=64, help="number of samples (default 64)")
    p.add_argument("--label", type=_int, help="class to generate (conditional models)")
    p.add_argument("--seed", type=_int, default=_DEFAULT.seed,
                   help="random seed (default %(default)s)")
    p.add_argument("--out", type=_path,
                   help="output file: .png or .npy (default RUN/figures/samples_cli.png)")
    p.add_argument("--device", default=_DEFAULT.device, help="cpu, cuda, cuda:N or auto")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("variance", help="measure gradient-estimator variance",
                       description="Draw R gradient estimates per estimator at fixed parameters "
                       "and report variance, SNR and cost (Markdown, JSON, figures).")
    p.add_argument("source", type=_path,
                   help="run folder / checkpoint (trained parameters), a config "
                   "JSON (fresh initialization), 'gaussian-toy' (with --objective: the "
                   "Gaussian model of Rainforth et al. 2018 near its optimum) or "
                   "'discrete-toy' (8 binary units on digits: every estimator of a discrete "
                   "code against the exact gradient)")
    p.add_argument("--estimators", type=_csv(str), action=_Given,
                   default=("reparam", "score", "score-avg", "score-nn", "stl"),
                   help="comma-separated: reparam, score, score-avg, score-nn, stl (default all); "
                   "with --objective: reparam, stl, dreg (default all three)")
    p.add_argument("--objective", choices=OBJECTIVES,
                   help="measure an importance-weighted objective's gradient SNR against K "
                   "instead (the SNR lab: SNR ± se per group, fitted log-log slope)")
    p.add_argument("--particles", type=_csv(int), default=(1, 4, 16, 64),
                   help="with --objective: the K values, comma-separated (default 1,4,16,64)")
    p.add_argument("--num-groups", type=_count, default=1,
                   help="with --objective miwae or piwae: M groups of K (default 1)")
    p.add_argument("--json", action="store_true",
                   help="with --objective: print the result as one JSON object")
    p.add_argument("--vimco-particles", type=_count, default=2,
                   help="discrete codes: K of vimco, whose bias is measured against the exact "
                   "gradient of IWAE_K (K-tuples of states are enumerated) (default 2)")
    p.add_argument("--temperatures", type=_csv(float), default=(1.0, 0.5, 0.25, 0.1),
                   help="discrete codes: the relaxations' temperatures; the first is used in "
                   "the main table, all in the sweep (default 1,0.5,0.25,0.1)")
    p.add_argument("--kl", type=_csv(str), default=("mc", "analytic"),
                   help="KL modes: mc (Trace_ELBO) and/or analytic (TraceMeanField_ELBO)")
    p.add_argument("--samples", type=_csv(int), default=(1, 4, 16),
                   help="samples S of z per estimate, comma-separated (default 1,4,16)")
    p.add_argument("--repeats", type=_count, default=100, help="estimates R per setting (100)")
    p.add_argument("--batch-size", type=_count, default=64,
                   help="data points in the batch (default %(default)s)")
    p.add_argument("--implementation", choices=("explicit", "pyro"), default="explicit",
                   help="the explicit torch surrogates or Pyro's ELBOs (default explicit)")
    p.add_argument("--warmup", type=_nonnegative, default=500,
                   help="updates of the learned baseline before measuring (default 500; the "
                   "decaying average takes min(N, 100))")
    p.add_argument("--seed", type=_int, default=_DEFAULT.seed,
                   help="random seed (default %(default)s)")
    p.add_argument("--out", type=_path, help="output folder (default RUN/variance)")
    p.add_argument("--device", default=_DEFAULT.device, help="cpu, cuda, cuda:N or auto")
    _add_budget_options(p)
    p.set_defaults(func=cmd_variance, estimators_given=False)

    p = sub.add_parser("gap", help="approximation and amortization gaps of a trained VAE",
                       description="log p(x) (the best of IWAE with q, IWAE with q*, and AIS "
                       "with --ais-steps), the best ELBO per point L[q*] of the guide's family "
                       "and of the factorized Gaussian (test-time vEM), the encoder's ELBO "
                       "L[q], their gaps, and semi-amortized refinement.")
    p.add_argument("run", type=_path, help="run folder (or its checkpoint.pt)")
    p.add_argument("--num-points", type=_count, default=1000, help="test points (default 1000)")
    p.add_argument("--iw-samples", type=_count, default=5000,
                   help="importance samples for log p(x) (default 5000)")
    p.add_argument("--refine-steps", type=_count, default=50,
                   help="steps of the semi-amortized curve (default 50)")
    p.add_argument("--semi-amortized", type=_nonnegative, default=0, metavar="K",
                   help="add the row L[q_SA]: the encoder's output refined per point by K SVI "
                   "steps (pyro_vae.infer.semi_amortized), and the fraction of the "
                   "amortization gap it closes (default 0: no row)")
    p.add_argument("--max-steps", type=_count, default=5000,
                   help="most optimization steps of the per-point fits, which otherwise stop "
                   "by their learning-rate decay rule (default %(default)s)")
    p.add_argument("--prior-start", action=argparse.BooleanOptionalAction, default=None,
                   help="also fit the factorized Gaussian from the prior and keep the better "
                   "start per point (default: only when a 64-point probe finds the prior start "
                   "better by > 0.1 nats somewhere)")
    _add_ais_options(p, default_steps=0, what="log p̂(x) (0: IWAE estimates only)")
    p.add_argument("--seed", type=_int, default=_DEFAULT.seed,
                   help="random seed (default %(default)s)")
    p.add_argument("--out", type=_path, help="output folder (default RUN/gap)")
    p.add_argument("--device", default=_DEFAULT.device, help="cpu, cuda, cuda:N or auto")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    _add_budget_options(p)
    p.set_defaults(func=cmd_gap)

    p = sub.add_parser("compare", help="ELBO curves and final metrics of several runs",
                       description="Overlay the ELBO curves of several runs in one figure and "
                       "print one table of their final metrics (what differs in their "
                       "configurations, test ELBO, KL, log p(x) when evaluated, seconds).")
    p.add_argument("runs", nargs="+", type=_path, metavar="RUN", help="run folders")
    p.add_argument("--out", type=_path, help="output folder (default ./compare)")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("plot", help="(re)draw a run's figures",
                       description="Draw every figure of a run folder from its checkpoint.")
    p.add_argument("run", type=_path, help="run folder (or its checkpoint.pt)")
    p.add_argument("--out", type=_path, help="figure folder (default RUN/figures)")
    p.add_argument("--device", default=_DEFAULT.device, help="cpu, cuda, cuda:N or auto")
    p.set_defaults(func=cmd_plot)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command. Every failure is one line on stderr: ``pyro-vae: error: <problem>;
    <fix>`` with exit status 2 for bad input (the library's errors, unreadable paths, memory
    that runs out), ``pyro-vae: internal error: ...`` with status 1 for a bug (set
    ``PYRO_VAE_DEBUG=1`` for its traceback). Warnings raised while a command runs are held
    back and shown after it succeeds, so that none precede an error line."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a one-line usage error: a return code
        return exc.code if isinstance(exc.code, int) else 2
    debug = bool(os.environ.get("PYRO_VAE_DEBUG"))
    with warnings.catch_warnings(record=True) as caught:  # the filters in force still apply
        try:
            # a command without --max-minutes (train reads its own from the run's config)
            # runs under the default budget, with progress
            with budget(getattr(args, "max_minutes", None) or DEFAULT_MAX_MINUTES,
                        progress=not getattr(args, "no_progress", False)):
                code = args.func(args)
        except PyroVAEError as exc:
            return _fail(f"error: {exc}")
        except MemoryError:
            return _fail("error: ran out of memory; lower the sizes given to this command "
                         "(batch size, samples, points, hidden widths)")
        except OSError as exc:  # a path that cannot be read or written
            where = f" ({exc.filename})" if exc.filename else ""
            return _fail(f"error: {exc.strerror or exc}{where}; check the path and its "
                         "permissions")
        except KeyboardInterrupt as exc:
            print(f"pyro-vae: {str(exc) or 'interrupted'}", file=sys.stderr)
            return 130
        except Exception as exc:
            if debug:
                raise
            text = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
            if isinstance(exc, RuntimeError) and "alloc" in text.lower():
                return _fail(f"error: ran out of memory ({text}); lower the sizes given to "
                             "this command (batch size, samples, points, hidden widths)")
            return _fail(f"internal error: {type(exc).__name__}: {text}; please report it "
                         "with the command line (PYRO_VAE_DEBUG=1 shows the traceback)", 1)
    for w in caught:
        warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    return code


def _fail(message: str, code: int = 2) -> int:
    print(f"pyro-vae: {message}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
