"""Inference: the ELBOs, the trainer, evaluation (ELBO, IWAE), the gradient estimators,
variational EM and MCMC on the latent code — each taking any model / guide pair of the
library's protocol (:mod:`pyro_vae.infer.trainer`)."""

from pyro_vae.infer.annealing import KLSchedule
from pyro_vae.infer.elbo import make_elbo
from pyro_vae.infer.evaluation import (
    Estimate,
    elbo_terms,
    evaluate_elbo,
    iwae_log_likelihood,
    log_importance_weights,
    quadrature_log_likelihood,
)
from pyro_vae.infer.semi_amortized import SemiAmortizedGuide
from pyro_vae.infer.trainer import ModelGuide, Trainer

__all__ = [
    "Estimate",
    "KLSchedule",
    "ModelGuide",
    "SemiAmortizedGuide",
    "Trainer",
    "elbo_terms",
    "evaluate_elbo",
    "iwae_log_likelihood",
    "log_importance_weights",
    "make_elbo",
    "quadrature_log_likelihood",
]
