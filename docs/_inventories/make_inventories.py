"""Write the offline intersphinx inventories ``pyro.inv``, ``torch.inv`` and ``numpy.inv``.

The documentation links to Pyro, PyTorch and NumPy through intersphinx, which reads each
project's ``objects.inv`` from its website. Where the build machine cannot reach the websites
(this project's build machines reach only package registries), ``docs/conf.py`` falls back to
these files: the names this documentation refers to, with the URL scheme of each project's
site. Re-run after adding references: ``python docs/_inventories/make_inventories.py``.
"""

from __future__ import annotations

import importlib.metadata
import zlib
from pathlib import Path

HERE = Path(__file__).resolve().parent

PYRO = {  # name: page on docs.pyro.ai ("$" = the name as the anchor)
    "pyro.infer.svi.SVI": "inference_algos.html#$",
    "pyro.infer.elbo.ELBO": "inference_algos.html#$",
    "pyro.infer.trace_elbo.Trace_ELBO": "inference_algos.html#$",
    "pyro.infer.trace_elbo.JitTrace_ELBO": "inference_algos.html#$",
    "pyro.infer.tracegraph_elbo.TraceGraph_ELBO": "inference_algos.html#$",
    "pyro.infer.traceenum_elbo.TraceEnum_ELBO": "inference_algos.html#$",
    "pyro.infer.trace_mean_field_elbo.TraceMeanField_ELBO": "inference_algos.html#$",
    "pyro.infer.renyi_elbo.RenyiELBO": "inference_algos.html#$",
    "pyro.infer.predictive.Predictive": "inference_algos.html#$",
    "pyro.infer.enum.config_enumerate": "inference_algos.html#$",
    "pyro.infer.mcmc.NUTS": "mcmc.html#$",
    "pyro.infer.mcmc.api.MCMC": "mcmc.html#$",
    "pyro.poutine.messenger.Messenger": "poutine.html#$",
    "pyro.poutine.handlers.trace": "poutine.html#$",
    "pyro.poutine.handlers.replay": "poutine.html#$",
    "pyro.poutine.handlers.scale": "poutine.html#$",
    "pyro.poutine.handlers.condition": "poutine.html#$",
    "pyro.poutine.handlers.enum": "poutine.html#$",
    "pyro.poutine.trace_struct.Trace": "poutine.html#$",
    "pyro.primitives.sample": "primitives.html#$",
    "pyro.primitives.param": "primitives.html#$",
    "pyro.primitives.module": "primitives.html#$",
    "pyro.primitives.plate": "primitives.html#$",
    "pyro.nn.module.PyroModule": "nn.html#$",
    "pyro.optim.optim.PyroOptim": "optimization.html#$",
    "pyro.distributions.torch_distribution.TorchDistribution": "distributions.html#$",
    "pyro.distributions.RelaxedBernoulliStraightThrough": "distributions.html#$",
    "pyro.distributions.RelaxedOneHotCategoricalStraightThrough": "distributions.html#$",
}
TORCH = {
    "torch.Tensor": "tensors.html#$",
    "torch.device": "tensor_attributes.html#$",
    "torch.dtype": "tensor_attributes.html#$",
    "torch.Generator": "generated/torch.Generator.html#$",
    "torch.nn.Module": "generated/torch.nn.Module.html#$",
    "torch.nn.Linear": "generated/torch.nn.Linear.html#$",
    "torch.nn.parameter.Parameter": "generated/torch.nn.parameter.Parameter.html#$",
    "torch.optim.Optimizer": "optim.html#$",
    "torch.optim.Adam": "generated/torch.optim.Adam.html#$",
    "torch.distributions.distribution.Distribution": "distributions.html#$",
    "torch.distributions.independent.Independent": "distributions.html#$",
    "torch.distributions.normal.Normal": "distributions.html#$",
    "torch.distributions.bernoulli.Bernoulli": "distributions.html#$",
    "torch.distributions.one_hot_categorical.OneHotCategorical": "distributions.html#$",
    "torch.distributions.relaxed_bernoulli.RelaxedBernoulli": "distributions.html#$",
    "torch.distributions.relaxed_categorical.RelaxedOneHotCategorical": "distributions.html#$",
    "torch.distributions.kl.kl_divergence": "distributions.html#$",
    "torch.distributions.kl.register_kl": "distributions.html#$",
}
NUMPY = {
    "numpy.ndarray": "reference/generated/numpy.ndarray.html#$",
    "numpy.random.Generator": "reference/random/generator.html#$",
}


def write(path: Path, project: str, version: str, objects: dict[str, str]) -> None:
    lines = []
    for name, uri in sorted(objects.items()):
        role = "py:function" if name.rsplit(".", 1)[-1][0].islower() and "Tensor" not in name \
            and name not in ("torch.device", "torch.dtype") else "py:class"
        lines.append(f"{name} {role} 1 {uri} -\n")
    header = (f"# Sphinx inventory version 2\n# Project: {project}\n# Version: {version}\n"
              "# The remainder of this file is compressed using zlib.\n")
    path.write_bytes(header.encode() + zlib.compress("".join(lines).encode()))


def main() -> None:
    for file, project, dist, objects in (("pyro.inv", "Pyro", "pyro-ppl", PYRO),
                                         ("torch.inv", "PyTorch", "torch", TORCH),
                                         ("numpy.inv", "NumPy", "numpy", NUMPY)):
        write(HERE / file, project, importlib.metadata.version(dist), objects)


if __name__ == "__main__":
    main()
