"""Observation models p_θ(x | z) (likelihoods) and families of the posterior q_φ(z | x)."""

from pyro_vae.distributions.guides import GUIDE_FAMILIES, GuideFamily
from pyro_vae.distributions.likelihoods import LIKELIHOODS, Likelihood, make_likelihood

__all__ = ["GUIDE_FAMILIES", "LIKELIHOODS", "GuideFamily", "Likelihood", "make_likelihood"]
