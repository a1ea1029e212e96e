"""Data sets as in-memory tensors with a fixed train/test split.

Every loader returns a :class:`DataSet` whose ``x`` tensors are float32, shaped
``(N, *event_shape)``: images in [0, 1] as ``(N, C, H, W)``, points and vectors as ``(N, D)``.
Labels are int64 ``(N,)`` or ``None``. Training cuts mini-batches from these tensors on the chosen
device; no per-item Python transform runs in the training loop.

==================  =========================================================================
``digits``          scikit-learn's 8×8 handwritten digits (1797 images, pixel/16), the
                    embedded default; 20 % test split fixed by ``split_seed``
``moons``           ``make_moons(2500, noise=0.1, random_state=split_seed)``, standardized;
                    20 % test
``circle``          z ~ N(0, 1), x = [cos z, sin z] + N(0, 0.1² I), 20000 points (seed
                    ``split_seed``), the first 3/4 train, as in the source material
``fashion-mnist``   torchvision ``FashionMNIST`` (official 60k/10k split) from ``root``
``mnist``           torchvision ``MNIST`` (official 60k/10k split) from ``root``
``celeba``          torchvision ``CelebA`` (official train/test partition), centre-cropped to
                    148 and resized to ``image_size`` (64)
``file``            a user's ``.npy`` / ``.npz`` / ``.csv`` array, or a folder of images in
                    class sub-folders (torchvision ``ImageFolder``)
==================  =========================================================================
"""

from __future__ import annotations

import gzip
import math
import os
import shutil
import warnings
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from pyro_vae.errors import ConfigError, DataError, check_count
from pyro_vae.resources import check_memory

#: Where Debian's ``dataset-fashion-mnist`` package puts the IDX files.
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

DATASETS = ("digits", "moons", "circle", "fashion-mnist", "mnist", "celeba", "file")

FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)

#: Noise scale of the circle data: x = [cos z, sin z] + N(0, CIRCLE_NOISE² I).
CIRCLE_NOISE = 0.1


#: what a data set's points are: images (C, H, W) in [0, 1], 2-D points, or feature vectors
DATA_KINDS = ("image", "points", "vector")


@dataclass(frozen=True)
class DataSet:
    """Train and test tensors plus what the model and the figures need to know.

    :param kind: ``"image"`` (C, H, W in [0, 1]), ``"points"`` (2-D data) or ``"vector"``.
    """

    name: str
    x_train: torch.Tensor
    x_test: torch.Tensor
    y_train: torch.Tensor | None
    y_test: torch.Tensor | None
    kind: str
    class_names: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        """Every data set is checked where it is made (:func:`validate_arrays` on both splits;
        the splits' widths agree; a known ``kind``), so no tool meets NaN, overflowing values,
        mismatched labels or a test set of another width."""
        if self.kind not in DATA_KINDS:
            raise DataError(f"unknown data kind {self.kind!r}; use one of "
                            f"{', '.join(DATA_KINDS)}")
        validate_arrays(self.x_train, self.y_train, f"{self.name} training data")
        validate_arrays(self.x_test, self.y_test, f"{self.name} test data")
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise DataError(f"{self.name}: the training points have shape "
                            f"{tuple(self.x_train.shape[1:])} but the test points "
                            f"{tuple(self.x_test.shape[1:])}; give both splits the same columns")
        if (self.y_train is None) != (self.y_test is None):
            raise DataError(f"{self.name}: labels are given for one split only; give y_train and "
                            "y_test, or neither")

    @property
    def event_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def num_classes(self) -> int | None:
        if self.y_train is None:
            return None
        if self.class_names is not None:
            return len(self.class_names)
        return int(max(self.y_train.max(), self.y_test.max() if self.y_test is not None
                       and len(self.y_test) else 0)) + 1

    def to(self, device: torch.device | str) -> DataSet:
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device)

        return replace(self, x_train=move(self.x_train), x_test=move(self.x_test),
                       y_train=move(self.y_train), y_test=move(self.y_test))

    def subset(self, max_train: int | None, max_test: int | None) -> DataSet:
        """The first ``max_train`` / ``max_test`` points (the splits are already shuffled)."""
        def cut(t: torch.Tensor | None, n: int | None) -> torch.Tensor | None:
            return t if (t is None or n is None) else t[:n]

        return replace(self, x_train=cut(self.x_train, max_train),
                       y_train=cut(self.y_train, max_train),
                       x_test=cut(self.x_test, max_test), y_test=cut(self.y_test, max_test))


# --------------------------------------------------------------------------- validation
#: the most classes a labelled data set may have (a one-hot label per point is allocated)
MAX_CLASSES = 100_000


def validate_arrays(x: torch.Tensor, y: torch.Tensor | None, what: str) -> None:
    """Reject what is not a tensor, empty data, NaN / inf, values whose square overflows the
    dtype (a Gaussian likelihood squares residuals: 1e30 in float32 would score as −inf), and
    labels that do not match the data."""
    if not isinstance(x, torch.Tensor):
        raise DataError(f"{what} must be a torch.Tensor, got {type(x).__name__}; convert it with "
                        "torch.as_tensor(x, dtype=torch.float32)")
    if y is not None and not isinstance(y, torch.Tensor):
        raise DataError(f"the labels of {what} must be a torch.Tensor, got {type(y).__name__}; "
                        "convert them with torch.as_tensor(y, dtype=torch.long)")
    if x.dim() < 2:
        raise DataError(
            f"{what} must have one row per data point and at least one feature, got shape "
            f"{tuple(x.shape)}; reshape a 1-D array to (N, 1)"
        )
    if x.shape[0] == 0 or math.prod(x.shape[1:]) == 0:
        raise DataError(f"{what} is empty (shape {tuple(x.shape)}); give it at least one point")
    if x.is_complex():
        raise DataError(f"{what} is complex ({x.dtype}); a VAE models real data: give the real "
                        "and imaginary parts as separate features")
    if not torch.is_floating_point(x):
        raise DataError(f"{what} must hold real numbers, got dtype {x.dtype}; convert it with "
                        ".float()")
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise DataError(
            f"{what} contains {bad} NaN or infinite values; remove or impute them first"
        )
    largest = float(x.abs().max())
    if largest > math.sqrt(torch.finfo(x.dtype).max):
        raise DataError(f"{what} holds values up to {largest:.3g}, whose squares overflow "
                        f"{x.dtype}; standardize or rescale the data")
    if y is not None:
        if y.shape != (x.shape[0],):
            raise DataError(
                f"{what} has {x.shape[0]} points but {tuple(y.shape)} labels; give one integer "
                "label per point"
            )
        if len(y) and int(y.min()) < 0:
            raise DataError(f"{what} labels must be integers ≥ 0, got {int(y.min())}; "
                            "renumber the classes 0..C-1")


def _split(
    name: str, x: torch.Tensor, y: torch.Tensor | None, kind: str, split_seed: int,
    test_fraction: float, class_names: tuple[str, ...] | None = None,
) -> DataSet:
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(f"--test-fraction must be in (0, 1), got {test_fraction}; e.g. 0.2")
    n = x.shape[0]
    n_test = max(1, round(n * test_fraction))
    if n - n_test < 1:
        raise DataError(f"{name} has {n} points: too few for a train/test split; give at least 2")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(split_seed))
    tr, te = perm[n_test:], perm[:n_test]
    return DataSet(name, x[tr], x[te], None if y is None else y[tr], None if y is None else y[te],
                   kind, class_names)


# --------------------------------------------------------------------------- generated data
def load_digits(split_seed: int = 0, test_fraction: float = 0.2) -> DataSet:
    """scikit-learn's 8×8 digits as (N, 1, 8, 8) images in [0, 1] (pixel values / 16).

    The file scikit-learn ships (``sklearn/datasets/data/digits.csv.gz``: 64 pixels and the
    label per row) is read directly, without importing scikit-learn, whose import is 0.8 s of
    the default run's start; scikit-learn's own loader is the fallback where the file is not
    found."""
    rows = _sklearn_digits_rows()
    x = torch.tensor(rows[:, :-1], dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    y = torch.tensor(rows[:, -1], dtype=torch.int64)
    return _split("digits", x, y, "image", split_seed, test_fraction,
                  tuple(str(i) for i in range(10)))


def _sklearn_digits_rows() -> np.ndarray:
    """The rows of scikit-learn's digits file, ``(1797, 65)``."""
    import importlib.util

    spec = importlib.util.find_spec("sklearn")  # locates the package without importing it
    locations = spec.submodule_search_locations if spec is not None else None
    path = Path(next(iter(locations)), "datasets", "data", "digits.csv.gz") if locations \
        else None
    if path is None or not path.is_file():
        from sklearn.datasets import load_digits as sk_digits

        bunch = sk_digits()
        return np.concatenate([bunch.data, bunch.target[:, None]], axis=1)
    return np.loadtxt(path, delimiter=",")


def load_moons(
    n_samples: int = 2500, noise: float = 0.1, split_seed: int = 0, test_fraction: float = 0.2
) -> DataSet:
    """Two interleaved half-circles, standardized to zero mean and unit variance per axis."""
    from sklearn.datasets import make_moons

    x_np, y_np = make_moons(n_samples=n_samples, noise=noise, random_state=split_seed)
    x_np = (x_np - x_np.mean(0)) / x_np.std(0)
    x = torch.tensor(x_np, dtype=torch.float32)
    return _split("moons", x, torch.tensor(y_np), "points", split_seed, test_fraction,
                  ("upper", "lower"))


def circle_points(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw n points of the circle model; returns (x of shape (n, 2), the true z of shape (n,))."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n, generator=gen)
    x = torch.stack([torch.cos(z), torch.sin(z)], dim=-1)
    return x + CIRCLE_NOISE * torch.randn(n, 2, generator=gen), z


def load_circle(n_samples: int = 20000, split_seed: int = 0) -> DataSet:
    """The noisy circle of the source material: the first 3/4 of the points train, the rest test.

    Labels are absent; the true z of every point is kept for figures as ``circle_points`` returns.
    """
    x, _ = circle_points(n_samples, split_seed)
    n_train = 3 * n_samples // 4
    return DataSet("circle", x[:n_train], x[n_train:], None, None, "points")


def circle_log_density(x: torch.Tensor, num_nodes: int = 4001, z_max: float = 9.0) -> torch.Tensor:
    """Exact log p(x) of the circle model by quadrature over z.

    ``p(x) = ∫ N(z; 0, 1) N(x; [cos z, sin z], σ² I) dz`` is evaluated with the trapezoidal rule on
    ``num_nodes`` points of [-z_max, z_max] in log space (logsumexp), which is exact to many digits
    because the integrand is smooth and its tails below N(9; 0, 1) ≈ 1e-18 are negligible.

    :returns: log p(x) per point, shape ``(N,)``, float64.
    """
    z = torch.linspace(-z_max, z_max, num_nodes, dtype=torch.float64)
    dz = z[1] - z[0]
    x = x.to(torch.float64)
    mean = torch.stack([torch.cos(z), torch.sin(z)], dim=-1)  # (M, 2)
    log_w = torch.full_like(z, math.log(dz))
    log_w[0] = log_w[-1] = math.log(dz / 2)
    log_prior = -0.5 * z**2 - 0.5 * math.log(2 * math.pi) + log_w
    norm = -2 * math.log(CIRCLE_NOISE) - math.log(2 * math.pi)
    out = []
    for chunk in x.split(max(1, 2**22 // num_nodes)):  # bounded memory: ~32 MiB per chunk
        sq = ((chunk[:, None, :] - mean[None]) ** 2).sum(-1)  # (n, M)
        out.append(torch.logsumexp(norm - sq / (2 * CIRCLE_NOISE**2) + log_prior, dim=-1))
    return torch.cat(out)


# --------------------------------------------------------------------------- torchvision data
def _prepare_fashion_mnist_root(root: Path) -> Path:
    """Use Debian's gzipped IDX files: unpack them where torchvision's FashionMNIST looks."""
    raw = root / "FashionMNIST" / "raw"
    names = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
    if all((raw / n).exists() for n in names) or not DEBIAN_FASHION_MNIST.is_dir():
        return root
    raw.mkdir(parents=True, exist_ok=True)
    for n in names:
        src = DEBIAN_FASHION_MNIST / f"{n}.gz"
        if src.exists() and not (raw / n).exists():
            tmp = raw / f".{n}.tmp"
            with gzip.open(src, "rb") as fin, open(tmp, "wb") as fout:
                shutil.copyfileobj(fin, fout)
            os.replace(tmp, raw / n)
    return root


def default_data_root() -> Path:
    """``$PYRO_VAE_DATA`` or ``~/.cache/pyro-vae``."""
    return Path(os.environ.get("PYRO_VAE_DATA", Path.home() / ".cache" / "pyro-vae"))


def load_torchvision_mnist(
    name: str, root: str | Path | None = None, download: bool = False
) -> DataSet:
    """MNIST or Fashion-MNIST through torchvision, as (N, 1, 28, 28) images in [0, 1].

    The uint8 tensors torchvision reads (``dataset.data``) are scaled once; no per-image
    transform. With ``download=True`` torchvision fetches the files when they are missing.
    """
    from torchvision import datasets

    root = Path(root) if root is not None else default_data_root()
    cls = datasets.FashionMNIST if name == "fashion-mnist" else datasets.MNIST
    if name == "fashion-mnist" and not download:
        root = _prepare_fashion_mnist_root(root)
    try:
        train = cls(str(root), train=True, download=download)
        test = cls(str(root), train=False, download=download)
    except RuntimeError as exc:
        if "not found" not in str(exc):  # torchvision found the files but cannot parse them
            raise DataError(f"{name} files under {root} cannot be read ({exc}); delete them "
                            "and fetch them again") from None
        hint = (" (or apt-get install dataset-fashion-mnist)" if name == "fashion-mnist" else "")
        raise DataError(
            f"{name} not found under {root}; pass --data-root DIR holding "
            f"{cls.__name__}/raw/*-ubyte files, or --download where there is internet{hint}"
        ) from None
    except (OSError, ValueError, IndexError) as exc:  # truncated or corrupt IDX files
        raise DataError(f"{name} files under {root} cannot be read ({exc}); "
                        "delete them and fetch them again") from None

    def images(ds: datasets.MNIST) -> torch.Tensor:
        return ds.data.unsqueeze(1).float() / 255.0

    classes = FASHION_MNIST_CLASSES if name == "fashion-mnist" else tuple(map(str, range(10)))
    return DataSet(name, images(train), images(test), train.targets.long(), test.targets.long(),
                   "image", classes)


def _stack_images(ds: torch.utils.data.Dataset, limit: int | None) -> tuple[torch.Tensor,
                                                                               torch.Tensor]:
    n = len(ds) if limit is None else min(limit, len(ds))
    xs, ys = [], []
    for i in range(n):
        img, target = ds[i]
        xs.append(img)
        ys.append(int(target) if isinstance(target, int) else 0)  # CelebA: no class label
    if not xs:
        raise DataError("the image set is empty; give a folder or split with at least one image")
    return torch.stack(xs), torch.tensor(ys, dtype=torch.int64)


def _image_transform(image_size: int, crop: int | None = None):
    from torchvision import transforms

    steps = [transforms.CenterCrop(crop)] if crop else []
    steps += [transforms.Resize(image_size), transforms.CenterCrop(image_size),
              transforms.ToTensor()]
    return transforms.Compose(steps)


def load_celeba(
    root: str | Path | None = None, image_size: int = 64, download: bool = False,
    max_train: int | None = None, max_test: int | None = None,
) -> DataSet:
    """CelebA through torchvision: aligned faces centre-cropped to 148×148, resized to 64×64.

    The images are decoded once into a tensor (limit with ``max_train`` / ``max_test``); labels
    are absent (the 40 binary attributes are not classes).
    """
    from torchvision import datasets

    root = Path(root) if root is not None else default_data_root()
    tf = _image_transform(image_size, crop=148)
    try:
        train = datasets.CelebA(str(root), split="train", target_type=[], transform=tf,
                                download=download)
        test = datasets.CelebA(str(root), split="test", target_type=[], transform=tf,
                               download=download)
    except RuntimeError as exc:
        raise DataError(
            f"celeba not found under {root} ({exc}); pass --data-root DIR holding "
            "celeba/img_align_celeba/ and the celeba/*.txt files, or --download"
        ) from None
    x_train, _ = _stack_images(train, max_train)
    x_test, _ = _stack_images(test, max_test)
    return DataSet("celeba", x_train, x_test, None, None, "image")


def load_file(
    path: str | Path, split_seed: int = 0, test_fraction: float = 0.2, image_size: int = 28,
    label_column: str | None = None,
) -> DataSet:
    """A user's data: ``.npy``, ``.npz`` (arrays ``x`` and optional ``y``), ``.csv`` or an image
    folder (one sub-folder per class, torchvision ``ImageFolder``, greyscale unless colour).

    Arrays of rank 2 are vectors ``(N, D)``; rank 3 ``(N, H, W)`` and rank 4 ``(N, C, H, W)`` are
    images and must lie in [0, 1] (or be uint8, scaled by 1/255).
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"data file {path} does not exist; check the path given to --data")
    if path.is_dir():
        if label_column is not None:
            raise DataError("--label-column applies to .csv files; an image folder's labels "
                            "are its sub-folders: drop --label-column")
        return _load_image_folder(path, image_size, split_seed, test_fraction)
    if not path.is_file():  # a named pipe, a device or a socket: reading could block forever
        raise DataError(f"{path} is not a regular file (a pipe, device or socket); copy the data "
                        "into a .npy, .npz or .csv file and give that to --data")
    suffix = path.suffix.lower()
    if label_column is not None and suffix != ".csv":
        raise DataError(f"--label-column applies to .csv files, not {suffix or 'this'} files; "
                        "store labels as the array y of a .npz instead")
    y_np = None
    try:
        if suffix == ".npy":
            x_np = np.load(path, allow_pickle=False)
        elif suffix == ".npz":
            with np.load(path, allow_pickle=False) as arrays:
                keys = list(arrays.keys())
                xkey = next((k for k in ("x", "X", "data", "arr_0") if k in keys), None)
                if xkey is None:
                    raise DataError(f"{path} holds arrays {keys} but none named x, X, data or "
                                    "arr_0; save the data under the name x")
                x_np = arrays[xkey]
                ykey = next((k for k in ("y", "Y", "labels", "targets") if k in keys), None)
                y_np = arrays[ykey] if ykey else None
        elif suffix == ".csv":
            x_np, y_np = _read_csv(path, label_column)
        else:
            raise DataError(f"unsupported data file {path.name}; give a .npy, .npz or .csv file "
                            "or a folder of images")
    except DataError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"cannot read {path} ({type(exc).__name__}: {exc}); the file is "
                        "truncated or not an array of numbers") from None
    return _from_arrays(path.stem, x_np, y_np, split_seed, test_fraction)


def _read_csv(path: Path, label_column: str | None) -> tuple[np.ndarray, np.ndarray | None]:
    with open(path) as f:
        first = f.readline()
    cells = [c.strip() for c in first.split(",")]
    try:
        [float(c) for c in cells]
        header = None
    except ValueError:
        header = cells
    table = np.loadtxt(path, delimiter=",", skiprows=1 if header else 0, ndmin=2,
                       dtype=np.float64)
    if label_column is None:
        return table, None
    if header and label_column in header:
        col = header.index(label_column)
    elif label_column.lstrip("-").isdigit():
        col = int(label_column)
    else:
        raise DataError(f"label column {label_column!r} not found in {path.name}; give its "
                        "header name or its 0-based index")
    if not -table.shape[1] <= col < table.shape[1]:
        raise DataError(f"label column {label_column!r} is out of range: {path.name} has "
                        f"{table.shape[1]} columns; give an index in 0..{table.shape[1] - 1}")
    if table.shape[1] < 2:
        raise DataError(f"{path.name} has one column, which --label-column {label_column!r} "
                        "would leave without features; drop --label-column")
    labels = table[:, col]
    if not np.all(labels == np.round(labels)):
        raise DataError(f"label column {label_column!r} of {path.name} must hold integers; "
                        "choose the column of class indices")
    return np.delete(table, col, axis=1), labels.astype(np.int64)


def _from_arrays(
    name: str, x_np: np.ndarray, y_np: np.ndarray | None, split_seed: int, test_fraction: float
) -> DataSet:
    if x_np.dtype == object or not (np.issubdtype(x_np.dtype, np.number)
                                    or x_np.dtype == np.bool_):
        raise DataError(f"{name}: the array must hold numbers, got dtype {x_np.dtype}; "
                        "save a numeric array")
    if np.iscomplexobj(x_np):
        raise DataError(f"{name}: the array is complex ({x_np.dtype}); a VAE models real data: "
                        "save the real and imaginary parts as separate features")
    is_uint8 = x_np.dtype == np.uint8
    x = torch.tensor(np.asarray(x_np, dtype=np.float32))
    if x.dim() == 1:
        raise DataError(f"{name}: a 1-D array of {x.shape[0]} values is ambiguous; save it as "
                        "(N, 1) for N scalar points or (1, D) for one vector")
    if x.dim() > 4:
        raise DataError(f"{name}: arrays of rank {x.dim()} are not supported; give (N, D), "
                        "(N, H, W) or (N, C, H, W)")
    kind = "points" if (x.dim() == 2 and x.shape[1] == 2) else "vector"
    if x.dim() >= 3:
        kind = "image"
        if x.dim() == 3:
            x = x.unsqueeze(1)
        if is_uint8:
            x = x / 255.0
    y = None
    if y_np is not None:
        y_arr = np.asarray(y_np)
        if y_arr.dtype.kind not in "iubf":
            raise DataError(f"{name}: labels must be integers 0..C-1, got dtype {y_arr.dtype}; "
                            "map class names to integers first")
        if y_arr.dtype.kind == "f" and not (np.all(np.isfinite(y_arr))
                                           and np.all(y_arr == np.round(y_arr))):
            raise DataError(f"{name}: labels must be integers 0..C-1, got non-integer values; "
                            "round or renumber them")
        if y_arr.size and (y_arr.min() < 0 or y_arr.max() >= MAX_CLASSES):
            raise DataError(f"{name}: labels must lie in 0..{MAX_CLASSES - 1} (class indices), "
                            f"got {y_arr.min()}..{y_arr.max()}; renumber the classes 0..C-1")
        y = torch.tensor(y_arr.astype(np.int64)).reshape(-1)
    validate_arrays(x, y, f"data file {name}")
    if kind == "image":
        lo, hi = float(x.min()), float(x.max())
        if lo < 0 or hi > 1:
            raise DataError(f"{name}: images must hold values in [0, 1] (or uint8 0..255), got "
                            f"[{lo:.4g}, {hi:.4g}]; rescale them first")
    classes = None
    if y is not None:
        classes = tuple(str(i) for i in range(int(y.max()) + 1))
    return _split(name, x, y, kind, split_seed, test_fraction, classes)


def _load_image_folder(
    path: Path, image_size: int, split_seed: int, test_fraction: float
) -> DataSet:
    from torchvision import datasets

    try:
        folder = datasets.ImageFolder(str(path), transform=_image_transform(image_size))
    except (FileNotFoundError, RuntimeError) as exc:
        raise DataError(f"{path} is not an image folder ({exc}); put images in one sub-folder "
                        "per class") from None
    from PIL import Image

    check_memory(f"{len(folder)} images at --image-size {image_size}",
                 len(folder) * 3 * image_size**2 * 4 * 2, "lower --image-size or use fewer images")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            x, y = _stack_images(folder, None)
    except (OSError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        first = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise DataError(f"an image under {path} cannot be decoded ({first}); remove or re-save "
                        "it (images over Pillow's decompression-bomb limit are refused)") from None
    if x.shape[1] == 3 and bool((x[:, 0] == x[:, 1]).all() and (x[:, 1] == x[:, 2]).all()):
        x = x[:, :1]  # greyscale images stored as RGB
    return _split(path.name, x, y, "image", split_seed, test_fraction, tuple(folder.classes))


def load_dataset(
    name: str,
    *,
    data_path: str | None = None,
    data_root: str | None = None,
    download: bool = False,
    split_seed: int = 0,
    test_fraction: float = 0.2,
    image_size: int = 64,
    label_column: str | None = None,
    max_train: int | None = None,
    max_test: int | None = None,
) -> DataSet:
    """Load a data set by name (see the module table) and validate it."""
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float)) \
            or not 0 < test_fraction < 1:
        raise ConfigError(f"test_fraction must lie strictly between 0 and 1, got "
                          f"{test_fraction!r}; e.g. 0.2")
    for option, value in (("max_train", max_train), ("max_test", max_test)):
        if value is not None:
            check_count(option, value)
    check_count("image_size", image_size)
    for option, value in (("data_path", data_path), ("data_root", data_root),
                          ("label_column", label_column)):
        if value is not None and not isinstance(value, (str, os.PathLike)):
            raise ConfigError(f"{option} must be a string (a path or a column name), got "
                              f"{type(value).__name__} {value!r}; e.g. {option}='data.csv'")
    if isinstance(split_seed, bool) or not isinstance(split_seed, int) \
            or not 0 <= split_seed < 2**32:
        raise ConfigError(f"split_seed must be an integer in 0..{2**32 - 1}, got {split_seed!r}; "
                          "e.g. 0")
    if name == "digits":
        data = load_digits(split_seed, test_fraction)
    elif name == "moons":
        data = load_moons(split_seed=split_seed, test_fraction=test_fraction)
    elif name == "circle":
        data = load_circle(split_seed=split_seed)
    elif name in ("fashion-mnist", "mnist"):
        data = load_torchvision_mnist(name, data_root, download)
    elif name == "celeba":
        data = load_celeba(data_root, image_size, download, max_train, max_test)
    elif name == "file":
        if not data_path:
            raise ConfigError("--dataset file needs --data PATH (a .npy/.npz/.csv file or an "
                              "image folder); add --data PATH")
        data = load_file(data_path, split_seed, test_fraction, image_size, label_column)
    else:
        raise ConfigError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    return data.subset(max_train, max_test)  # checked as it is made (DataSet)
