"""Image-classification data: ImageFolder trees, CIFAR-10/100 on disk, and the MNIST test set (idx files).

Every DataModule exposes ``num_classes``, ``in_chans`` and ``img_size`` as attributes set in ``__init__`` (the CLI
links them to the model) and yields ``(images [B, C, H, W] float32, labels [B] int64)``. Nothing is downloaded.

- ``ImageFolderDataModule``: ``<data_dir>/train/<class>/*`` and ``<data_dir>/val/<class>/*`` (ImageNet layout).
  Train transform: timm's (RandomResizedCrop, flip, RandAugment, RandomErasing); eval: the official one, resize to
  ``img_size / crop_pct`` (256 for 224) bicubic, center crop ``img_size``, ImageNet mean / std.
- ``CIFARDataModule``: torchvision's CIFAR10 / CIFAR100 files under ``data_dir`` (``download=False``); the official
  test set is the val and test split.
- ``MNISTDataModule``: the official MNIST *test* set (10k ``t10k-*-idx*-ubyte.gz``, the only MNIST images under
  ../shared/data/vision/mnist), split with a fixed seed into 8,000 train / 2,000 held-out images. The held-out 2k are
  the val and the test split: no other unseen MNIST images exist here. Numbers on it are a small real-data check,
  not comparable with results on the official 60k / 10k protocol.
"""

from __future__ import annotations

import gzip
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image, UnidentifiedImageError
from timm.data import create_transform
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch.utils.data import DataLoader, Dataset, TensorDataset

from ssmkit.core.datamodule import SplitDataModule

MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR_FILES = {
    "cifar10": ("cifar-10-batches-py", ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4",
                                        "data_batch_5", "test_batch", "batches.meta"]),
    "cifar100": ("cifar-100-python", ["train", "test", "meta"]),
}


def load_image(path: str, mode: str = "RGB") -> Image.Image:
    """Open an image file and convert it to ``mode``; an unreadable file raises an error naming its path.

    Raises:
        ValueError: the file is not a readable image (truncated, corrupt, not an image), with its path.
    """
    try:
        with open(path, "rb") as f:
            image = Image.open(f)
            return image.convert(mode)
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as err:
        raise ValueError(f"unreadable image file {path!r}: {type(err).__name__}: {err}") from err


def eval_transform(img_size: int, crop_pct: float = 0.875, interpolation: str = "bicubic",
                   mean: tuple[float, ...] = IMAGENET_DEFAULT_MEAN, std: tuple[float, ...] = IMAGENET_DEFAULT_STD
                   ) -> Callable:
    """The official eval transform: resize the short side to ``int(img_size / crop_pct)``, center crop, normalize."""
    return create_transform(img_size, is_training=False, interpolation=interpolation, crop_pct=crop_pct, mean=mean,
                            std=std)


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, found {value!r}")


class ImageDataModule(SplitDataModule):
    """Base of the image DataModules: ``num_classes`` / ``in_chans`` / ``img_size`` attributes and the loaders.

    Train shuffles and drops its last partial batch (even sizes for mixup); val / test / predict keep every image
    (the ``val`` split: ImageNet val, the CIFAR test set, the MNIST held-out 2k).
    """

    num_classes: int
    in_chans: int
    img_size: int
    datasets: dict[str, Dataset]

    test_split = "val"  # the image datasets here have no separate test split: test and predict read val

    def _loader(self, split: str, train: bool) -> DataLoader:
        hp = self.hparams
        return DataLoader(self.datasets[split], batch_size=hp.batch_size, shuffle=train, drop_last=train,
                          num_workers=hp.num_workers, pin_memory=torch.cuda.is_available(),
                          persistent_workers=hp.num_workers > 0)


class ImageFolderDataModule(ImageDataModule):
    """An ImageNet-style folder tree read with torchvision ``ImageFolder``.

    Args:
        data_dir: root holding ``train_dir`` and ``val_dir``, each with one sub-folder per class.
        train_dir, val_dir: split folder names.
        img_size: training crop and eval center-crop size.
        crop_pct: eval resize = ``int(img_size / crop_pct)`` (0.875: 256 for 224, the official eval).
        interpolation: resize interpolation ("bicubic" as the official recipes).
        auto_augment: timm RandAugment string, e.g. "rand-m9-mstd0.5-inc1"; None: off.
        re_prob: RandomErasing probability.
        color_jitter: color jitter strength (timm ignores it when auto_augment is set).
        batch_size, num_workers: loader settings (batch_size per process).
    """

    def __init__(self, data_dir: str, train_dir: str = "train", val_dir: str = "val", img_size: int = 224,
                 crop_pct: float = 0.875, interpolation: str = "bicubic",
                 auto_augment: str | None = "rand-m9-mstd0.5-inc1", re_prob: float = 0.25,
                 color_jitter: float = 0.3, batch_size: int = 128, num_workers: int = 8):
        super().__init__()
        _check_positive(img_size=img_size, batch_size=batch_size)
        if not 0.0 < crop_pct <= 1.0:
            raise ValueError(f"crop_pct must lie in (0, 1], found {crop_pct}")
        self.save_hyperparameters()
        self.roots = {split: Path(data_dir) / name for split, name in (("train", train_dir), ("val", val_dir))}
        for split, root in self.roots.items():
            if not root.is_dir():
                raise FileNotFoundError(f"ImageFolderDataModule: expected the {split} folder {str(root)!r} with one "
                                        f"sub-folder per class (data_dir={data_dir!r}), found no such directory")
        self.classes = sorted(p.name for p in self.roots["train"].iterdir() if p.is_dir())
        if not self.classes:
            raise ValueError(f"ImageFolderDataModule: {str(self.roots['train'])!r} has no class sub-folders")
        val_classes = sorted(p.name for p in self.roots["val"].iterdir() if p.is_dir())
        if val_classes != self.classes:
            extra, missing = set(val_classes) - set(self.classes), set(self.classes) - set(val_classes)
            raise ValueError(f"ImageFolderDataModule: the val classes must equal the train classes; val has extra "
                             f"{sorted(extra)[:5]} and lacks {sorted(missing)[:5]}")
        self.num_classes, self.in_chans, self.img_size = len(self.classes), 3, img_size
        self.datasets: dict[str, Dataset] = {}

    def transform(self, train: bool) -> Callable:
        """timm's train transform, or the official eval transform (resize img_size / crop_pct, center crop)."""
        hp = self.hparams
        if train:
            return create_transform(hp.img_size, is_training=True, interpolation=hp.interpolation,
                                    auto_augment=hp.auto_augment, re_prob=hp.re_prob, re_mode="pixel",
                                    color_jitter=hp.color_jitter, mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD)
        return eval_transform(hp.img_size, hp.crop_pct, hp.interpolation)

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        for split, root in self.roots.items():
            transform = self.transform(train=split == "train")
            self.datasets[split] = torchvision.datasets.ImageFolder(str(root), transform=transform, loader=load_image)


class CIFARDataModule(ImageDataModule):
    """torchvision CIFAR-10 / CIFAR-100 from files already on disk (never downloaded).

    Args:
        data_dir: the folder holding ``cifar-10-batches-py/`` or ``cifar-100-python/`` (the torchvision ``root``).
        name: "cifar10" or "cifar100".
        img_size: model input size (32 keeps the native resolution; larger sizes resize bicubic).
        auto_augment: timm RandAugment string or None.
        batch_size, num_workers: loader settings.
    """

    def __init__(self, data_dir: str, name: str = "cifar10", img_size: int = 32, auto_augment: str | None = None,
                 batch_size: int = 128, num_workers: int = 4):
        super().__init__()
        if name not in CIFAR_FILES:
            raise ValueError(f"name must be one of {sorted(CIFAR_FILES)}, found {name!r}")
        _check_positive(img_size=img_size, batch_size=batch_size)
        self.save_hyperparameters()
        folder, files = CIFAR_FILES[name]
        missing = [f for f in files if not (Path(data_dir) / folder / f).is_file()]
        if missing:
            raise FileNotFoundError(f"CIFARDataModule({name}): expected the torchvision files {files} under "
                                    f"{str(Path(data_dir) / folder)!r}; missing {missing}. ssmkit never downloads: "
                                    f"unpack the official python archive there first")
        self.num_classes, self.in_chans, self.img_size = (10 if name == "cifar10" else 100), 3, img_size
        self.datasets: dict[str, Dataset] = {}

    def transform(self, train: bool) -> Callable:
        """timm transform at ``img_size`` with CIFAR mean / std (eval: resize + center crop, crop_pct 1)."""
        hp = self.hparams
        if train:
            return create_transform(hp.img_size, is_training=True, scale=(0.35, 1.0), interpolation="bicubic",
                                    auto_augment=hp.auto_augment, mean=CIFAR_MEAN, std=CIFAR_STD)
        return eval_transform(hp.img_size, crop_pct=1.0, mean=CIFAR_MEAN, std=CIFAR_STD)

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        cls = torchvision.datasets.CIFAR10 if self.hparams.name == "cifar10" else torchvision.datasets.CIFAR100
        for split, train in (("train", True), ("val", False)):
            try:
                self.datasets[split] = cls(self.hparams.data_dir, train=train, transform=self.transform(train),
                                           download=False)
            except RuntimeError as err:
                raise ValueError(f"CIFARDataModule({self.hparams.name}): torchvision refused the files under "
                                 f"{self.hparams.data_dir!r} ({err}); expected the official, unmodified "
                                 f"{CIFAR_FILES[self.hparams.name][1]}") from err


def read_idx(path: str | Path, magic: int) -> np.ndarray:
    """Read a gzipped MNIST idx file (``magic`` 2051: images [N, 28, 28] uint8, 2049: labels [N] uint8).

    Raises:
        FileNotFoundError: the file is absent.
        ValueError: wrong magic number or a size that disagrees with the header, naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"MNIST idx file {str(path)!r} does not exist")
    raw = gzip.decompress(path.read_bytes())
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise ValueError(f"{path.name}: expected idx magic number {magic}, found {found}")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise ValueError(f"{path.name}: header says shape {dims} ({int(np.prod(dims))} bytes), found {body.size} bytes")
    return body.reshape(dims)


class MNISTDataModule(ImageDataModule):
    """The official MNIST test set (10k images) split into ``n_train`` train / the rest held out, with a fixed seed.

    The split is a permutation drawn with ``numpy.random.default_rng(split_seed)``: the first ``n_train`` indices
    train, the remaining ones are the val (and test) split. Images are scaled to [0, 1] and normalized with the MNIST
    mean / std; ``img_size`` other than 28 resizes bilinearly; ``translate`` > 0 adds random shifts in training.

    Args:
        data_dir: folder with ``t10k-images-idx3-ubyte.gz`` and ``t10k-labels-idx1-ubyte.gz``.
        n_train: number of training images (8000: 8k train / 2k held out).
        split_seed: seed of the split permutation.
        img_size: model input size.
        translate: max random shift as a fraction of the size (training only); 0: no augmentation.
        batch_size, num_workers: loader settings.
    """

    def __init__(self, data_dir: str = "../shared/data/vision/mnist", n_train: int = 8000, split_seed: int = 0,
                 img_size: int = 28, translate: float = 0.0, batch_size: int = 64, num_workers: int = 0):
        super().__init__()
        _check_positive(n_train=n_train, img_size=img_size, batch_size=batch_size)
        if not 0.0 <= translate < 0.5:
            raise ValueError(f"translate must lie in [0, 0.5), found {translate}")
        self.save_hyperparameters()
        root = Path(data_dir)
        self.images = read_idx(root / "t10k-images-idx3-ubyte.gz", 2051)  # [N, 28, 28]
        self.labels = read_idx(root / "t10k-labels-idx1-ubyte.gz", 2049)  # [N]
        if len(self.images) != len(self.labels):
            raise ValueError(f"MNIST: {len(self.images)} images but {len(self.labels)} labels in {data_dir!r}")
        if not n_train < len(self.labels):
            raise ValueError(f"n_train must be below the {len(self.labels)} available images, found {n_train}")
        self.num_classes, self.in_chans, self.img_size = 10, 1, img_size
        self.datasets: dict[str, Dataset] = {}

    def split_indices(self) -> dict[str, np.ndarray]:
        """``{"train": [n_train], "val": [N - n_train]}`` indices of the seeded permutation."""
        order = np.random.default_rng(self.hparams.split_seed).permutation(len(self.labels))
        return {"train": order[: self.hparams.n_train], "val": order[self.hparams.n_train:]}

    def _tensors(self, index: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.from_numpy(self.images[index]).float().div_(255.0)[:, None]  # [n, 1, 28, 28]
        if self.hparams.img_size != 28:
            size = (self.hparams.img_size, self.hparams.img_size)
            x = torch.nn.functional.interpolate(x, size=size, mode="bilinear", antialias=True)  # [n, 1, S, S]
        x = (x - MNIST_MEAN[0]) / MNIST_STD[0]
        return x, torch.from_numpy(self.labels[index].astype(np.int64))

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        for split, index in self.split_indices().items():
            x, y = self._tensors(index)
            shift = self.hparams.translate if split == "train" else 0.0
            self.datasets[split] = _ShiftedTensors(x, y, shift) if shift else TensorDataset(x, y)


class _ShiftedTensors(Dataset):
    """Images [N, C, H, W] with a random integer shift of up to ``translate * size`` pixels (zero = background)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, translate: float):
        self.images, self.labels = images, labels
        self.max_shift = max(1, round(translate * images.shape[-1]))
        self.background = float(images.amin())

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        dy, dx = torch.randint(-self.max_shift, self.max_shift + 1, (2,)).tolist()
        image = torch.roll(self.images[i], shifts=(dy, dx), dims=(-2, -1))  # [C, H, W], a new tensor
        return self._blank(image, dy, dx), self.labels[i]

    def _blank(self, image: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
        """Fill the rows / columns that ``roll`` wrapped around with the background value."""
        if dy > 0:
            image[:, :dy] = self.background
        elif dy < 0:
            image[:, dy:] = self.background
        if dx > 0:
            image[:, :, :dx] = self.background
        elif dx < 0:
            image[:, :, dx:] = self.background
        return image
