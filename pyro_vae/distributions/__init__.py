"""Observation models p_θ(x | z) (likelihoods); guide families arrive here too."""

from pyro_vae.distributions.likelihoods import LIKELIHOODS, Likelihood, make_likelihood

__all__ = ["LIKELIHOODS", "Likelihood", "make_likelihood"]
