"""Helpers shared by the tests: small models, batches, a user-written guide, data files."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from PIL import Image
from torch import nn

import pyro_vae
from pyro_vae import VAE, MLPDecoder, MLPEncoder, make_likelihood
from pyro_vae.distributions.guides import GuideFamily
from pyro_vae.models import kl_scale
from pyro_vae.sites import LATENT_SITE


def small_vae(
    event_shape=(6,), latent_dim=2, likelihood="gaussian", num_data=None, num_classes=None,
    hidden=(16,), obs_scale=None, guide="diag", flow_length=2,
) -> VAE:
    lik = make_likelihood(likelihood, obs_scale)
    cond = num_classes or 0
    enc = MLPEncoder(event_shape, latent_dim, hidden, cond_dim=cond)
    dec = MLPDecoder(event_shape, latent_dim, hidden, num_params=lik.num_params, cond_dim=cond)
    family = GuideFamily(guide, event_shape, latent_dim, flow_length, cond_dim=cond)
    return VAE(enc, dec, lik, latent_dim, event_shape, num_data=num_data, num_classes=num_classes,
               family=family)


def make_batch(n=8, event_shape=(6,), binary=False) -> torch.Tensor:
    x = torch.rand(n, *event_shape)
    return torch.bernoulli(x) if binary else x


class FullCovarianceGuide(nn.Module):
    """A user's guide as a Pyro user writes one: q(z|x) = N(μ(x), L(x) L(x)ᵀ), a full
    covariance through a Cholesky factor from its own network, registered by plain
    ``pyro.module``, inside the VAE's ``"data"`` plate and with the KL weight on ``"z"``."""

    def __init__(self, vae: VAE, hidden: int = 16) -> None:
        super().__init__()
        self.vae = [vae]  # not a submodule: the guide owns only its own network
        d, latent = int(np.prod(vae.event_shape)), vae.latent_dim
        self.latent = latent
        self.body = nn.Sequential(nn.Linear(d, hidden), nn.Tanh())
        self.loc = nn.Linear(hidden, latent)
        self.tril = nn.Linear(hidden, latent * latent)

    def guide(self, x, y=None, indices=None, beta=1.0, num_points=None):
        vae = self.vae[0]
        pyro.module("full_guide", self)
        with vae.data_plate(x.shape[0], indices):
            h = self.body(x.reshape(x.shape[0], -1))
            raw = self.tril(h).reshape(-1, self.latent, self.latent)
            diag = nn.functional.softplus(torch.diagonal(raw, dim1=-2, dim2=-1)) + 1e-3
            scale_tril = torch.tril(raw, -1) + torch.diag_embed(diag)
            with kl_scale(beta):
                return pyro.sample(LATENT_SITE,
                                   dist.MultivariateNormal(self.loc(h), scale_tril=scale_tril))


def make_celeba_files(root: Path, n: int = 6) -> None:
    """A CelebA folder as torchvision reads it: n random 218×178 JPEGs and the annotation
    files (partition: 3 train, 1 valid, 2 test)."""
    base = root / "celeba"
    (base / "img_align_celeba").mkdir(parents=True)
    names = [f"{i:06d}.jpg" for i in range(1, n + 1)]
    rng = np.random.default_rng(0)
    for name in names:
        Image.fromarray(rng.integers(0, 256, (218, 178, 3), dtype=np.uint8)).save(
            base / "img_align_celeba" / name)
    parts = [0, 0, 0, 1, 2, 2]
    (base / "list_eval_partition.txt").write_text(
        "".join(f"{nm} {p}\n" for nm, p in zip(names, parts, strict=True)))
    (base / "identity_CelebA.txt").write_text("".join(f"{nm} 1\n" for nm in names))
    (base / "list_attr_celeba.txt").write_text(
        f"{n}\nSmiling Young\n" + "".join(f"{nm} 1 -1\n" for nm in names))
    (base / "list_bbox_celeba.txt").write_text(
        f"{n}\nimage_id x_1 y_1 width height\n" + "".join(f"{nm} 1 2 3 4\n" for nm in names))
    (base / "list_landmarks_align_celeba.txt").write_text(
        f"{n}\nlefteye_x lefteye_y\n" + "".join(f"{nm} 1 2\n" for nm in names))


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.named_parameters()}


def changed(before: dict[str, torch.Tensor], module: nn.Module) -> list[str]:
    """Names of ``module``'s parameters that differ from ``before``."""
    return [k for k, v in module.named_parameters() if not torch.equal(before[k], v.detach())]


class LinearGaussianEncoder(nn.Module):
    """q(z|x) = N(A (x - b), diag s²), a linear encoder with a free diagonal scale."""

    def __init__(self, d: int, q: int):
        super().__init__()
        self.A = nn.Parameter(torch.zeros(q, d))
        self.b = nn.Parameter(torch.zeros(d))
        self.log_s = nn.Parameter(torch.zeros(q))

    def forward(self, x):
        return (x - self.b) @ self.A.T, self.log_s.exp().expand(x.shape[0], -1)


def ppca_vae(d=5, q=2, sigma=0.5, seed=0):
    """A linear-Gaussian (pPCA) VAE whose W has orthogonal columns: its exact posterior is
    diagonal, so the encoder below *is* the exact posterior and the ELBO equals log p(x)."""
    gen = torch.Generator().manual_seed(seed)
    W = torch.linalg.qr(torch.randn(d, q, generator=gen))[0] * torch.tensor([2.0, 0.7])
    b = torch.randn(d, generator=gen)
    decoder = nn.Linear(q, d)
    decoder.weight.data, decoder.bias.data = W.clone(), b.clone()
    M = W.T @ W + sigma**2 * torch.eye(q)  # diagonal because W's columns are orthogonal
    enc = LinearGaussianEncoder(d, q)
    enc.A.data = torch.linalg.solve(M, W.T)
    enc.b.data = b.clone()
    enc.log_s.data = 0.5 * torch.log(sigma**2 / torch.diagonal(M))
    vae = VAE(enc, decoder, make_likelihood("gaussian", obs_scale=sigma), q, (d,))
    marginal = torch.distributions.MultivariateNormal(b, W @ W.T + sigma**2 * torch.eye(d))
    return vae, marginal


def linear_gaussian_vae(num_data=None, guide="diag", flow_length=2):
    """x = W z + b + σ ε with z ~ N(0, I): a linear decoder and a Gaussian likelihood, whose
    posterior p(z | x) is Gaussian in closed form; ``guide`` names the posterior family."""
    torch.manual_seed(1)
    enc = MLPEncoder((3,), 2, ())
    dec = MLPDecoder((3,), 2, (), num_params=1)
    family = pyro_vae.distributions.guides.GuideFamily(guide, (3,), 2, flow_length)
    return pyro_vae.VAE(enc, dec, pyro_vae.make_likelihood("gaussian", 0.5), 2, (3,),
                        num_data=num_data, family=family)


def exact_posterior(vae, x):
    """Mean and covariance of p(z | x) for :func:`linear_gaussian_vae`."""
    lin = vae.decoder.net[0]
    w, b, s2 = lin.weight.detach(), lin.bias.detach(), 0.25
    precision = torch.eye(2) + w.T @ w / s2
    cov = torch.linalg.inv(precision)
    return (cov @ w.T @ (x - b).T / s2).T, cov


# --------------------------------------------------------------------------- forked runs
#: What a ``pyro-vae`` run or an example script imports: the fork server imports it once per test
#: process (2–3 s of CPU that a new interpreter spends before its first line of work).
FORK_PRELOAD = ["torch", "pyro", "matplotlib", "matplotlib.pyplot", "sklearn.datasets",
                "pyro_vae", "pyro_vae.cli", "pyro_vae.plots"]


def fork_context():
    """A multiprocessing context whose every child is a fresh fork of one clean process (the
    fork server) that has imported :data:`FORK_PRELOAD` and run nothing else: a new process with
    its own pid, signals, Pyro param store, random state and torch settings, as a new
    interpreter has, without the imports. The server starts with this process's environment."""
    import multiprocessing

    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(FORK_PRELOAD)
    return context


def _forked_main(kind: str, target: str, argv: list[str], out: str, err: str) -> None:
    """In the child: ``python -m target *argv`` (kind "module") or ``python target *argv``
    (kind "script", its folder first on sys.path), stdout and stderr into the files ``out`` and
    ``err``. An exception or ``sys.exit(n)`` sets the exit code, as in a new interpreter."""
    import os
    import runpy
    import sys

    for fd, path in ((1, out), (2, err)):
        file = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(file, fd)
        os.close(file)
    sys.argv = [target, *argv]
    if kind == "module":
        runpy.run_module(target, run_name="__main__", alter_sys=True)
    else:
        sys.path.insert(0, str(Path(target).parent))
        runpy.run_path(target, run_name="__main__")


class ForkedRun:
    """A run of ``python -m MODULE ARGV`` (or of a script) in a forked process, with the part of
    :class:`subprocess.Popen`'s interface the tests use: ``pid``, ``send_signal``, ``wait``,
    ``communicate`` and ``returncode`` (negative: killed by that signal)."""

    def __init__(self, argv: list[str], logs: Path, module: str = "pyro_vae",
                 script: Path | None = None) -> None:
        logs.mkdir(parents=True, exist_ok=True)
        number = len(list(logs.glob("run*.out")))
        self._out, self._err = logs / f"run{number}.out", logs / f"run{number}.err"
        kind, target = ("script", str(script)) if script is not None else ("module", module)
        self._proc = fork_context().Process(
            target=_forked_main, args=(kind, target, list(argv), str(self._out), str(self._err)))
        self._proc.start()
        self.pid = self._proc.pid
        self._out.touch()  # numbers the next run's files

    @property
    def returncode(self) -> int | None:
        return self._proc.exitcode

    def send_signal(self, signum: int) -> None:
        """As Popen's: nothing once the process has ended."""
        import contextlib
        import os

        if self._proc.exitcode is None:
            with contextlib.suppress(ProcessLookupError):  # ended (and reaped) just now
                os.kill(self.pid, signum)

    def kill(self) -> None:
        import signal

        if self._proc.exitcode is None:
            self.send_signal(signal.SIGKILL)
        self._proc.join()

    def wait(self, timeout: float | None = None) -> int:
        import subprocess

        self._proc.join(timeout)
        if self._proc.exitcode is None:
            raise subprocess.TimeoutExpired(self._proc.name, timeout)
        return self._proc.exitcode

    def communicate(self, timeout: float | None = None) -> tuple[str, str]:
        self.wait(timeout)
        return self.stdout, self.stderr

    @property
    def stdout(self) -> str:
        return self._out.read_text() if self._out.exists() else ""

    @property
    def stderr(self) -> str:
        return self._err.read_text() if self._err.exists() else ""


def forked_run(argv: list[str], logs: Path, timeout: float = 300, **kwargs) -> ForkedRun:
    """:class:`ForkedRun` to its end (``subprocess.run``'s use): killed past ``timeout``."""
    import subprocess

    run = ForkedRun(argv, logs, **kwargs)
    try:
        run.wait(timeout)
    except subprocess.TimeoutExpired:
        run.kill()
        raise
    return run


# --------------------------------------------------------------------------- forked kernels
def _kernel_main(argv: list[str], env: dict[str, str], cwd: str | None) -> None:
    """In the child: ``python -m ipykernel_launcher *argv``, in its own session, with the
    environment and folder the kernel manager gives a new kernel. The fork server imported
    matplotlib before ipykernel could choose its backend through ``MPLBACKEND`` (which
    matplotlib reads once, on import), so the backend ipykernel sets is set here too."""
    import os
    import runpy
    import sys

    import matplotlib

    os.setsid()
    os.environ.clear()
    os.environ.update(env)
    if cwd:
        os.chdir(cwd)
    backend = os.environ.get("MPLBACKEND") or "module://matplotlib_inline.backend_inline"
    os.environ["MPLBACKEND"] = backend
    matplotlib.rcParams["backend"] = backend
    sys.argv = ["ipykernel_launcher", *argv]
    runpy.run_module("ipykernel_launcher", run_name="__main__", alter_sys=True)


class _ForkedKernel:
    """The part of :class:`subprocess.Popen` that a kernel provisioner uses, for a kernel in a
    forked process (:func:`fork_context`)."""

    stdin = stdout = stderr = None

    def __init__(self, argv: list[str], env: dict[str, str], cwd: str | None) -> None:
        self._proc = fork_context().Process(target=_kernel_main, args=(argv, env, cwd))
        self._proc.start()
        self.pid = self._proc.pid

    @property
    def returncode(self) -> int | None:
        return self._proc.exitcode

    def poll(self) -> int | None:
        return self._proc.exitcode

    def wait(self, timeout: float | None = None) -> int:
        import subprocess

        self._proc.join(timeout)
        if self._proc.exitcode is None:
            raise subprocess.TimeoutExpired("kernel", timeout)
        return self._proc.exitcode

    def send_signal(self, signum: int) -> None:
        import contextlib
        import os

        if self._proc.exitcode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signum)

    def kill(self) -> None:
        import signal

        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        import signal

        self.send_signal(signal.SIGTERM)


def forked_kernel_manager_class():
    """A Jupyter kernel manager (for ``NotebookClient(kernel_manager_class=...)``) whose
    IPython kernels are forks of the fork server (:func:`fork_context`): each notebook still
    gets a new process, with nothing run in it but the imports of :data:`FORK_PRELOAD`, so a
    tutorial runs as in a new kernel without spending 2–3 s of CPU importing torch and Pyro
    again. A kernel spec that is not ``python -m ipykernel_launcher`` starts as usual."""
    import os
    import uuid

    from jupyter_client.manager import AsyncKernelManager
    from jupyter_client.provisioning import LocalProvisioner

    class ForkedProvisioner(LocalProvisioner):
        async def launch_kernel(self, cmd: list[str], **kwargs):
            if cmd[1:3] != ["-m", "ipykernel_launcher"]:
                return await super().launch_kernel(cmd, **kwargs)
            env = dict(kwargs.get("env") or os.environ)
            env.setdefault("JPY_PARENT_PID", str(os.getpid()))  # as jupyter_client's launcher
            cwd = kwargs.get("cwd")
            self.process = _ForkedKernel(cmd[3:], env, None if cwd is None else str(cwd))
            self.pid, self.pgid = self.process.pid, None  # signals go to the kernel itself
            self.cwd = cwd or Path.cwd()
            return self.connection_info

    class ForkedKernelManager(AsyncKernelManager):
        async def _async_pre_start_kernel(self, **kw):
            if self.provisioner is None:
                self.kernel_id = self.kernel_id or kw.pop("kernel_id", str(uuid.uuid4()))
                self.provisioner = ForkedProvisioner(kernel_id=self.kernel_id,
                                                     kernel_spec=self.kernel_spec, parent=self)
            return await super()._async_pre_start_kernel(**kw)

    return ForkedKernelManager


def tiny_moons_run(out: Path) -> Path:
    """A one-epoch moons run folder at ``out`` (the hostile and long-job tests' shared run)."""
    from pyro_vae.config import Config
    from pyro_vae.runs import train_run

    train_run(Config(dataset="moons", hidden=(8,), max_train=64, max_test=16, epochs=1,
                     batch_size=32), out, progress=False, figures=False)
    return out


def assert_one_line_error(fn: Callable[[], Any]) -> pyro_vae.PyroVAEError:
    """``fn()`` raises a library error whose message is one non-empty line (a raw exception
    propagates and fails the test); returns the error."""
    with pytest.raises(pyro_vae.PyroVAEError) as info:
        fn()
    message = str(info.value)
    assert message.strip(), f"empty message from {type(info.value).__name__}"
    assert "\n" not in message, message
    return info.value
