"""Probabilistic PCA in closed form, the ground truth for a linear-Gaussian VAE.

pPCA (Tipping & Bishop 1999) is the generative model ``z ~ N(0, I_q)``,
``x | z ~ N(W z + μ, σ² I_D)``, whose marginal is ``p(x) = N(x; μ, C)`` with
``C = W Wᵀ + σ² I``. Its maximum-likelihood solution, from the eigen-decomposition
``S = U Λ Uᵀ`` of the sample covariance (eigenvalues λ₁ ≥ … ≥ λ_D), is

    μ_ML = mean of x,   σ²_ML = (1 / (D - q)) Σ_{j>q} λ_j,
    W_ML = U_q (Λ_q - σ²_ML I)^{1/2} R   (any rotation R).

A VAE with a linear decoder, a learned scalar σ and a Gaussian (linear) encoder has exactly this
model family, and its ELBO is tight when q(z|x) is the exact posterior, which is Gaussian with a
covariance that the diagonal family can represent at the pPCA optimum (the columns of W_ML are
orthogonal, so ``Wᵀ W / σ² + I`` is diagonal). So a trained linear VAE's ELBO must reach
:func:`ppca_mle`'s log-likelihood and its decoder must span the principal subspace ``U_q``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pyro_vae.errors import DataError


@dataclass(frozen=True)
class PPCAFit:
    """The pPCA maximum-likelihood solution (float64).

    :param mean: μ_ML, shape (D,). :param weight: W_ML, shape (D, q).
    :param sigma: σ_ML. :param components: U_q, the top-q eigenvectors, shape (D, q).
    :param log_likelihood: mean log p(x) per point under the fit, on the data it was fitted to.
    """

    mean: torch.Tensor
    weight: torch.Tensor
    sigma: float
    components: torch.Tensor
    log_likelihood: float


def gaussian_marginal_log_prob(x: torch.Tensor, mean: torch.Tensor, weight: torch.Tensor,
                               sigma: float | torch.Tensor) -> torch.Tensor:
    """log N(x; mean, W Wᵀ + σ² I) per row of ``x`` (shape (N, D)), in float64."""
    x, mean, weight = x.double(), mean.double(), weight.double()
    sigma2 = torch.as_tensor(sigma, dtype=torch.float64) ** 2
    cov = weight @ weight.T + sigma2 * torch.eye(x.shape[1], dtype=torch.float64)
    return torch.distributions.MultivariateNormal(mean, covariance_matrix=cov).log_prob(x)


def ppca_mle(x: torch.Tensor, q: int) -> PPCAFit:
    """Closed-form pPCA fit of ``x`` (shape (N, D), flattened data) with ``q`` components."""
    if x.dim() != 2 or not 0 < q < x.shape[1]:
        raise DataError(f"pPCA needs data of shape (N, D) and 0 < q < D; got {tuple(x.shape)} "
                        f"and q = {q}")
    x = x.double()
    mean = x.mean(0)
    centred = x - mean
    evals, evecs = torch.linalg.eigh(centred.T @ centred / x.shape[0])
    evals, evecs = evals.flip(0), evecs.flip(1)
    sigma2 = evals[q:].mean()
    weight = evecs[:, :q] * (evals[:q] - sigma2).clamp_min(0).sqrt()
    ll = gaussian_marginal_log_prob(x, mean, weight, sigma2.sqrt()).mean()
    return PPCAFit(mean, weight, float(sigma2.sqrt()), evecs[:, :q], float(ll))


def principal_cosines(weight: torch.Tensor, components: torch.Tensor) -> torch.Tensor:
    """Cosines of the principal angles between span(weight) and span(components) (both (D, q)):
    all 1 when the two subspaces coincide."""
    basis = torch.linalg.qr(weight.double())[0]
    return torch.linalg.svdvals(components.double().T @ basis)
