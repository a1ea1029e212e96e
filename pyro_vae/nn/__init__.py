"""Networks (MLP and convolutional encoders / decoders) and their registration with Pyro."""

from pyro_vae.nn.module import register_module, register_param
from pyro_vae.nn.networks import (
    ACTIVATIONS,
    ConvDecoder,
    ConvEncoder,
    GaussianHead,
    MLPDecoder,
    MLPEncoder,
)

__all__ = [
    "ACTIVATIONS",
    "ConvDecoder",
    "ConvEncoder",
    "GaussianHead",
    "MLPDecoder",
    "MLPEncoder",
    "register_module",
    "register_param",
]
