"""Figures of a trained VAE, written as PNG (and one GIF) into a run's ``figures/`` folder.

* ``elbo.png``: train and test ELBO, reconstruction term and KL per epoch.
* images: ``reconstructions.png`` (test originals above their reconstructions E[x|z=μ(x)]),
  ``samples.png`` (E[x|z] for z ~ p(z), drawn with ``pyro.infer.Predictive``), ``latent.png``
  (posterior means μ(x) of test points coloured by label; PCA to 2-D when L > 2),
  ``manifold.png`` (L = 2: decoded means over a grid of prior quantiles), ``interpolation.png``
  and ``interpolation.gif`` (decoded means along the line between two test points' codes).
* 2-D data: ``overview.png``: data, reconstructions, decoded prior samples E[x|z], samples
  x ~ p_θ(x) with the observation noise, and latent means (for a conditional model the prior
  samples cycle through the classes).

Figures are ``matplotlib.figure.Figure`` objects saved directly: importing this module selects
no backend and touches no global pyplot state.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from torchvision.utils import make_grid

from pyro_vae.data.datasets import DataSet
from pyro_vae.infer.evaluation import latent_means
from pyro_vae.infer.predictive import prior_predictive
from pyro_vae.models.vae import VAE, evaluating
from pyro_vae.sites import LATENT_SITE, OBS_SITE


def _figure(nrows: int = 1, ncols: int = 1, figsize: tuple[float, float] = (6, 5)):
    """A figure detached from pyplot, and its axes (one, or an array)."""
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols)


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def plot_elbo_curves(history: list[dict[str, Any]], path: Path) -> Path:
    """Three panels against epoch: ELBO, E_q[log p(x|z)] and KL(q‖p), train and test."""
    epochs = [h["epoch"] for h in history]
    fig, axes = _figure(1, 3, figsize=(13, 3.6))
    for ax, key, title in zip(axes, ("elbo", "recon", "kl"),
                              ("ELBO (nats / point)", "E_q[log p(x|z)]", "KL(q(z|x) ‖ p(z))"),
                              strict=True):
        for split, style in (("train", "-"), ("test", "--")):
            ax.plot(epochs, [h[f"{split}_{key}"] for h in history], style, label=split)
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    return _save(fig, path)


def _labels(vae: VAE, y: torch.Tensor | None) -> torch.Tensor | None:
    return y if vae.conditional else None


def image_grid(images: torch.Tensor, nrow: int) -> np.ndarray:
    """Images (B, C, H, W) in [0, 1] tiled ``nrow`` per row (torchvision ``make_grid``), as an
    (H', W', C) array."""
    grid = make_grid(images.detach().cpu().clamp(0, 1), nrow=nrow, padding=1, pad_value=1.0)
    return grid.permute(1, 2, 0).numpy()


def show_grid(ax: Axes, images: torch.Tensor, nrow: int, title: str) -> None:
    """Draw :func:`image_grid` of ``images`` on ``ax`` with a title and no axes."""
    img = image_grid(images, nrow)
    ax.imshow(img.squeeze(-1) if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1)
    ax.set_title(title)
    ax.axis("off")


def _code_name(vae: Any) -> str:
    """How :meth:`~pyro_vae.models.vae.VAE.reconstruction_code` chooses z, for titles."""
    from pyro_vae.models.discrete_vae import DiscreteVAE

    return "the mode of q(z|x)" if isinstance(vae, DiscreteVAE) else "μ(x)"


def _prior_name(vae: Any) -> str:
    """The model's p(z), for titles."""
    from pyro_vae.models.discrete_vae import DiscreteVAE

    if not isinstance(vae, DiscreteVAE):
        return "N(0, I)"
    return "Bernoulli(½) units" if vae.latent == "bernoulli" else "uniform one-hot groups"


def prior_samples(vae: VAE, num: int, y: torch.Tensor | None = None) -> torch.Tensor:
    """Decoded means E[x|z] for z ~ p(z), via ``Predictive`` on the model (no data)."""
    if vae.conditional and y is None:
        y = torch.arange(num, device=vae.device) % vae.num_classes
    with evaluating(vae):
        draws = prior_predictive(vae, num_points=num, y=y)
        if y is None and "y" in draws:  # a model that draws its own class (M2)
            y = draws["y"][0]
        return vae.decode_mean(draws[LATENT_SITE][0], y)


def _image_figures(vae: VAE, data: DataSet, out: Path) -> list[Path]:
    paths = []
    x, y = data.x_test[:32], None if data.y_test is None else data.y_test[:32]
    with evaluating(vae):
        recon = vae.decode_mean(vae.reconstruction_code(x, _labels(vae, y)), _labels(vae, y))
    fig, axes = _figure(2, 1, figsize=(10, 3.2))
    binary = bool(((x == 0) | (x == 1)).all())
    title = "test images" + (" (binarized, as scored)" if binary else "")
    show_grid(axes[0], x, 16, title)
    show_grid(axes[1], recon, 16, f"reconstructions E[x | z = {_code_name(vae)}]")
    paths.append(_save(fig, out / "reconstructions.png"))

    samples = prior_samples(vae, 64)
    fig, ax = _figure(figsize=(6, 6))
    show_grid(ax, samples, 8, f"samples E[x|z], z ~ {_prior_name(vae)}")
    paths.append(_save(fig, out / "samples.png"))

    paths.append(plot_latent(vae, data, out / "latent.png"))
    if vae.latent_dim == 2 and not vae.conditional:
        paths.append(plot_manifold(vae, out / "manifold.png"))
    paths.extend(plot_interpolation(vae, data, out))
    return paths


def plot_latent(vae: VAE, data: DataSet, path: Path) -> Path:
    """Test points' posterior means, coloured by label; PCA to two axes when L > 2."""
    mu = latent_means(vae, data).cpu().numpy()
    labels = None if data.y_test is None else data.y_test[: len(mu)].cpu().numpy()
    fig, ax = _figure(figsize=(6, 5))
    if mu.shape[1] == 1:
        ax.hist(mu[:, 0], bins=60, color="tab:blue")
        ax.set_xlabel("μ(x)")
        ax.set_title("posterior means (1-D latent)")
        return _save(fig, path)
    title = "posterior means μ(x) of test points"
    if mu.shape[1] > 2:
        from sklearn.decomposition import PCA

        pca = PCA(n_components=2).fit(mu)
        mu = pca.transform(mu)
        title += f" (PCA, {pca.explained_variance_ratio_.sum():.0%} of variance)"
    colours = {} if labels is None else {"c": labels, "cmap": "tab10"}
    sc = ax.scatter(mu[:, 0], mu[:, 1], s=4, alpha=0.8, **colours)
    if labels is not None:
        names = data.class_names or tuple(str(i) for i in range(int(labels.max()) + 1))
        handles = [Line2D([], [], marker="o", ls="", color=sc.cmap(sc.norm(i)), label=n)
                   for i, n in enumerate(names)]
        ax.legend(handles=handles, fontsize=7, loc="best", markerscale=0.8)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("z₁")
    ax.set_ylabel("z₂")
    return _save(fig, path)


def plot_manifold(vae: VAE, path: Path, n: int = 15) -> Path:
    """Decoded means over an n×n grid of z at the prior's quantiles 0.05 … 0.95 (L = 2)."""
    q = torch.distributions.Normal(0.0, 1.0).icdf(torch.linspace(0.05, 0.95, n))
    z1, z2 = torch.meshgrid(q, q.flip(0), indexing="xy")
    z = torch.stack([z1.reshape(-1), z2.reshape(-1)], -1)
    with evaluating(vae):
        images = vae.decode_mean(z.to(vae.device))
    fig, ax = _figure(figsize=(7, 7))
    show_grid(ax, images, n, "2-D latent manifold: E[x|z] over prior quantiles")
    return _save(fig, path)


def plot_interpolation(vae: VAE, data: DataSet, out: Path, steps: int = 10) -> list[Path]:
    """Decoded means along z(t) = (1-t) μ(x_a) + t μ(x_b): a strip and an animated GIF."""
    from PIL import Image

    xa, xb = data.x_test[:1], data.x_test[1:2]
    ya = yb = None
    if data.y_test is not None:
        ya, yb = data.y_test[:1], data.y_test[1:2]
        diff = (data.y_test != data.y_test[0]).nonzero()
        if len(diff):  # two points of different classes where the test set has them
            xb = data.x_test[int(diff[0]) : int(diff[0]) + 1]
            yb = data.y_test[int(diff[0]) : int(diff[0]) + 1]
    with evaluating(vae):
        za = vae.reconstruction_code(xa, _labels(vae, ya))
        zb = vae.reconstruction_code(xb, _labels(vae, yb))
        t = torch.linspace(0, 1, steps, device=za.device).reshape(-1, *(1,) * (za.dim() - 1))
        z = (1 - t) * za + t * zb
        y = None if not vae.conditional else ya.expand(steps)
        frames = vae.decode_mean(z, y)
    fig, ax = _figure(figsize=(12, 1.8))
    show_grid(ax, frames, steps, "interpolation between two test images")
    strip = _save(fig, out / "interpolation.png")
    imgs = [(f.detach().cpu().clamp(0, 1).permute(1, 2, 0).squeeze(-1).numpy() * 255)
            .astype(np.uint8) for f in frames]
    pil = [Image.fromarray(a).resize((a.shape[1] * 4, a.shape[0] * 4), Image.NEAREST)
           for a in imgs + imgs[::-1]]
    gif = out / "interpolation.gif"
    pil[0].save(gif, save_all=True, append_images=pil[1:], duration=120, loop=0)
    return [strip, gif]


def plot_points(vae: VAE, data: DataSet, path: Path, num_samples: int = 2000) -> Path:
    """2-D data: data, reconstructions, decoded prior samples, samples x ~ p_θ(x), latent means."""
    x = data.x_test.cpu()
    y = None if data.y_test is None else data.y_test.cpu()
    with evaluating(vae):
        loc = vae.posterior_mean(data.x_test, _labels(vae, data.y_test))
        recon = vae.decode_mean(vae.reconstruction_code(data.x_test, _labels(vae, data.y_test)),
                                _labels(vae, data.y_test)).cpu()
        y_prior = None if not vae.conditional else \
            torch.arange(num_samples, device=vae.device) % vae.num_classes
        pred = prior_predictive(vae, num_points=num_samples, y=y_prior)
        means = vae.decode_mean(pred[LATENT_SITE][0], y_prior).cpu()
    z_s, x_s = pred[LATENT_SITE][0].cpu(), pred[OBS_SITE][0].cpu()
    loc = loc.cpu()
    fig, axes = _figure(1, 5, figsize=(22, 4.4))
    colour = {"c": y, "cmap": "coolwarm"} if y is not None else {}
    axes[0].scatter(x[:, 0], x[:, 1], s=4, **colour)
    axes[0].set_title("test data")
    axes[1].scatter(recon[:, 0], recon[:, 1], s=4, **colour)
    axes[1].set_title(f"reconstructions E[x | z = {_code_name(vae)}]")
    # prior samples coloured by their label (conditional model) or by z₁
    prior_colour = {"c": y_prior.cpu(), "cmap": "coolwarm"} if y_prior is not None \
        else {"c": z_s[:, 0], "cmap": "autumn"}
    axes[2].scatter(means[:, 0], means[:, 1], s=4, **prior_colour)
    axes[2].set_title(f"decoded prior samples E[x|z], z ~ {_prior_name(vae)}")
    axes[3].scatter(x_s[:, 0], x_s[:, 1], s=4, **prior_colour)
    axes[3].set_title("samples x ~ p(x) (with noise)")
    if loc.shape[1] >= 2:
        axes[4].scatter(loc[:, 0], loc[:, 1], s=4, **colour)
        axes[4].set_xlabel("z₁")
        axes[4].set_ylabel("z₂")
    else:
        axes[4].hist(loc[:, 0].numpy(), bins=60)
        axes[4].set_xlabel("μ(x)")
    axes[4].set_title("latent means μ(x)")
    lims = axes[0].get_xlim(), axes[0].get_ylim()
    for ax in axes[:4]:
        ax.set_xlim(*lims[0])
        ax.set_ylim(*lims[1])
        ax.set_aspect("equal", adjustable="box")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def make_figures(
    vae: VAE, data: DataSet, history: list[dict[str, Any]], out: str | Path
) -> list[Path]:
    """Every figure that fits the data kind; returns the paths written."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [plot_elbo_curves(history, out / "elbo.png")] if history else []
    from pyro_vae.models.discrete_vae import DiscreteVAE
    from pyro_vae.models.m2 import SemiSupervisedVAE

    if isinstance(vae, SemiSupervisedVAE):
        return paths + plot_semi_supervised(vae, data, history, out)
    if isinstance(vae, DiscreteVAE) and vae.latent == "categorical":
        paths.append(plot_class_usage(vae, data, out / "class_usage.png"))
    if data.kind == "image":
        paths += _image_figures(vae, data, out)
    elif data.event_shape == (2,):
        paths.append(plot_points(vae, data, out / "overview.png"))
    else:
        paths.append(plot_latent(vae, data, out / "latent.png"))
    return paths


def plot_class_usage(vae: Any, data: DataSet, path: Path, max_points: int = 5000) -> Path:
    """A categorical code's class usage: per group g and class c, the mean of q(z_g = c | x)
    over test points (a group whose row is flat, 1/C everywhere, is unused)."""
    x = data.x_test[:max_points]
    with evaluating(vae):
        probs = torch.cat([vae.posterior(x[i:i + 1000]).base_dist.probs
                           for i in range(0, x.shape[0], 1000)]).mean(0).cpu()
    fig, ax = _figure(figsize=(0.5 * probs.shape[1] + 2, 0.3 * probs.shape[0] + 1.5))
    image = ax.imshow(probs.numpy(), cmap="viridis", vmin=0, aspect="auto")
    fig.colorbar(image, ax=ax, label="mean q(z_g = c | x) over test points")
    ax.set_xlabel("class c")
    ax.set_ylabel("group g")
    ax.set_title("categorical code: class usage per group")
    return _save(fig, path)


def plot_semi_supervised(vae: Any, data: DataSet, history: list[dict[str, Any]], out: Path
                         ) -> list[Path]:
    """M2: test accuracy of q(y|x) per epoch; the "analogies" grid (each test image's style
    z = μ(x, ŷ) decoded with every class y); samples of every class with z ~ p(z)."""
    paths = []
    if history and "test_accuracy" in history[0]:
        fig, ax = _figure(figsize=(5, 3.5))
        ax.plot([h["epoch"] for h in history], [h["test_accuracy"] for h in history], "o-")
        ax.set_xlabel("epoch")
        ax.set_ylabel("test accuracy of q(y|x)")
        ax.grid(alpha=0.3)
        paths.append(_save(fig, out / "accuracy.png"))
    classes = vae.num_classes
    x = data.x_test[:8]
    with evaluating(vae):
        loc, _ = vae.encode(x)  # style under the classifier's label
        grid = [x]
        for c in range(classes):
            grid.append(vae.decode_mean(loc, torch.full((x.shape[0],), c, device=x.device)))
        frames = torch.stack(grid, 1).reshape(-1, *x.shape[1:])
        fig, ax = _figure(figsize=(1.0 * (classes + 1), 1.0 * x.shape[0]))
        show_grid(ax, frames, classes + 1, "analogies: test image, then its style z with each "
                  "class y = 0 … " + str(classes - 1))
        paths.append(_save(fig, out / "analogies.png"))
        generator = torch.Generator(device="cpu").manual_seed(0)
        z = torch.randn(8, vae.latent_dim, generator=generator).to(x.device)
        samples = torch.stack([vae.decode_mean(z, torch.full((8,), c, device=x.device))
                               for c in range(classes)]).reshape(-1, *x.shape[1:])
        fig, ax = _figure(figsize=(8, 1.0 * classes))
        show_grid(ax, samples, 8, "samples: one row per class y, one column per style z ~ p(z)")
        paths.append(_save(fig, out / "samples.png"))
    return paths
