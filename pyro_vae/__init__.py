"""pyro-vae: variational autoencoders written the Pyro way.

The public API::

    from pyro_vae import VAE, MLPEncoder, MLPDecoder, make_likelihood
    vae = VAE(encoder, decoder, make_likelihood("bernoulli"), latent_dim, event_shape, num_data=N)
    svi = pyro.infer.SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())

Where things live (mirroring Pyro's own layout):

==========================  ==================================================================
``pyro_vae.nn``             networks, and registering a module's own tensors with Pyro
``pyro_vae.distributions``  likelihoods p_θ(x | z)
``pyro_vae.models``         the VAE (an ``nn.Module`` with ``model`` / ``guide``), pPCA
``pyro_vae.infer``          ELBOs, trainer, ELBO / IWAE evaluation, estimators, vEM, MCMC,
                            predictive draws, semi-amortized guides
``pyro_vae.lab``            the gradient-variance lab and the amortization-gap report
``pyro_vae.data``           data sets and their preparation (binarization, checks)
``pyro_vae.checkpoint``     checkpoints: ``save`` / ``load`` of any trained model
``pyro_vae.runs``           run folders; ``pyro_vae.cli`` the ``pyro-vae`` command
==========================  ==================================================================

Site and plate names are in :mod:`pyro_vae.sites`.
"""

from pyro_vae.checkpoint import load, save
from pyro_vae.config import Config
from pyro_vae.data import DataSet, binarize, circle_log_density, load_dataset, prepare_data
from pyro_vae.distributions.likelihoods import LIKELIHOODS, Likelihood, make_likelihood
from pyro_vae.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    ModelError,
    PyroVAEError,
    TrainingDivergedError,
)
from pyro_vae.infer.annealing import KLSchedule
from pyro_vae.infer.elbo import make_elbo
from pyro_vae.infer.evaluation import (
    elbo_terms,
    evaluate_elbo,
    iwae_log_likelihood,
    quadrature_log_likelihood,
)
from pyro_vae.infer.mcmc import nuts_posterior
from pyro_vae.infer.predictive import posterior_predictive, prior_predictive
from pyro_vae.infer.problem import Problem, describe
from pyro_vae.infer.semi_amortized import SemiAmortizedGuide
from pyro_vae.infer.trainer import ModelGuide, Trainer
from pyro_vae.models.builder import build_vae
from pyro_vae.models.vae import VAE, evaluating, kl_scale
from pyro_vae.nn.module import register_module, register_param
from pyro_vae.nn.networks import ConvDecoder, ConvEncoder, MLPDecoder, MLPEncoder
from pyro_vae.runs import load_run, train_run
from pyro_vae.sites import DATA_PLATE, LATENT_SITE, OBS_SITE

__version__ = "0.2.0"

__all__ = [
    "DATA_PLATE",
    "LATENT_SITE",
    "LIKELIHOODS",
    "OBS_SITE",
    "VAE",
    "CheckpointError",
    "Config",
    "ConfigError",
    "ConvDecoder",
    "ConvEncoder",
    "DataError",
    "DataSet",
    "KLSchedule",
    "Likelihood",
    "MLPDecoder",
    "MLPEncoder",
    "ModelError",
    "ModelGuide",
    "Problem",
    "PyroVAEError",
    "SemiAmortizedGuide",
    "Trainer",
    "TrainingDivergedError",
    "binarize",
    "build_vae",
    "circle_log_density",
    "describe",
    "elbo_terms",
    "evaluate_elbo",
    "evaluating",
    "iwae_log_likelihood",
    "kl_scale",
    "load",
    "load_dataset",
    "load_run",
    "make_elbo",
    "make_likelihood",
    "nuts_posterior",
    "posterior_predictive",
    "prepare_data",
    "prior_predictive",
    "quadrature_log_likelihood",
    "register_module",
    "register_param",
    "save",
    "train_run",
]
