"""pyro-vae: variational autoencoders written the Pyro way.

The public API::

    from pyro_vae import VAE, MLPEncoder, MLPDecoder, make_likelihood
    vae = VAE(encoder, decoder, make_likelihood("bernoulli"), latent_dim, event_shape, num_data=N)
    svi = pyro.infer.SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())

Site and plate names are in :mod:`pyro_vae.sites`.
"""

from pyro_vae.annealing import KLSchedule
from pyro_vae.config import Config
from pyro_vae.data import DataSet, circle_log_density, load_dataset
from pyro_vae.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    PyroVAEError,
    TrainingDivergedError,
)
from pyro_vae.evaluation import elbo_terms, evaluate_elbo, iwae_log_likelihood
from pyro_vae.factory import build_vae
from pyro_vae.likelihoods import LIKELIHOODS, Likelihood, make_likelihood
from pyro_vae.networks import ConvDecoder, ConvEncoder, MLPDecoder, MLPEncoder
from pyro_vae.objectives import make_elbo
from pyro_vae.runs import load_run, train_run
from pyro_vae.sites import DATA_PLATE, LATENT_SITE, OBS_SITE
from pyro_vae.training import Trainer
from pyro_vae.vae import VAE

__version__ = "0.1.0"

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
    "PyroVAEError",
    "Trainer",
    "TrainingDivergedError",
    "build_vae",
    "circle_log_density",
    "elbo_terms",
    "evaluate_elbo",
    "iwae_log_likelihood",
    "load_dataset",
    "load_run",
    "make_elbo",
    "make_likelihood",
    "train_run",
]
