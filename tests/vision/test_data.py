"""Vision DataModules on small generated files: MNIST idx split, ImageFolder (unreadable file), CIFAR on disk."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from ssmkit.vision.data import CIFARDataModule, ImageFolderDataModule, MNISTDataModule, eval_transform, read_idx


def write_fake_mnist(root: Path, n: int = 60, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Write ``t10k-{images,labels}`` idx .gz files of ``n`` random 28x28 images; returns (images, labels)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = (np.arange(n) % 10).astype(np.uint8)
    root.mkdir(parents=True, exist_ok=True)
    header = (2051).to_bytes(4, "big") + b"".join(v.to_bytes(4, "big") for v in (n, 28, 28))
    (root / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(header + images.tobytes()))
    header = (2049).to_bytes(4, "big") + n.to_bytes(4, "big")
    (root / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(header + labels.tobytes()))
    return images, labels


def write_image_folder(root: Path, classes=("cat", "dog"), per_class: int = 3, size: int = 40) -> None:
    """``root/{train,val}/<class>/<i>.png`` random RGB images."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for name in classes:
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, size=(size, size + 7, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")


def test_mnist_split_is_seeded_disjoint_and_normalized(tmp_path):
    images, labels = write_fake_mnist(tmp_path, n=60)
    dm = MNISTDataModule(str(tmp_path), n_train=45, split_seed=3, batch_size=8)
    assert (dm.num_classes, dm.in_chans, dm.img_size) == (10, 1, 28)
    split = dm.split_indices()
    assert len(split["train"]) == 45 and len(split["val"]) == 15
    assert sorted(np.concatenate([split["train"], split["val"]]).tolist()) == list(range(60))
    again = MNISTDataModule(str(tmp_path), n_train=45, split_seed=3).split_indices()
    other = MNISTDataModule(str(tmp_path), n_train=45, split_seed=4).split_indices()
    assert np.array_equal(split["val"], again["val"]) and not np.array_equal(split["val"], other["val"])
    dm.setup()
    x, y = next(iter(dm.val_dataloader()))
    assert x.shape == (8, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    i = int(split["val"][0])
    expected = (torch.from_numpy(images[i]).float() / 255 - 0.1307) / 0.3081
    torch.testing.assert_close(x[0, 0], expected)
    assert int(y[0]) == labels[i]
    assert len(dm.train_dataloader()) == 45 // 8  # train drops its last partial batch, val keeps every image
    assert sum(len(b[1]) for b in dm.val_dataloader()) == 15


def test_mnist_resize_and_shift_augmentation(tmp_path):
    write_fake_mnist(tmp_path, n=30)
    dm = MNISTDataModule(str(tmp_path), n_train=20, img_size=32, translate=0.1, batch_size=4)
    dm.setup()
    assert dm.datasets["val"][0][0].shape == (1, 32, 32)
    base = dm._tensors(dm.split_indices()["train"][:1])[0][0]  # [1, 32, 32] unshifted
    shifted = [dm.datasets["train"][0][0] for _ in range(10)]
    assert all(s.shape == (1, 32, 32) for s in shifted)
    assert any(not torch.equal(s, base) for s in shifted), "translate > 0 must move the training images"
    assert torch.equal(dm.datasets["val"][0][0], dm.datasets["val"][0][0]), "val is not augmented"


def test_mnist_bad_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="t10k-images-idx3-ubyte.gz"):
        MNISTDataModule(str(tmp_path / "absent"))
    write_fake_mnist(tmp_path, n=20)
    with pytest.raises(ValueError, match="n_train must be below the 20"):
        MNISTDataModule(str(tmp_path), n_train=20)
    bad = tmp_path / "bad.gz"
    bad.write_bytes(gzip.compress((2049).to_bytes(4, "big") + (3).to_bytes(4, "big") + b"\x01\x02\x03"))
    with pytest.raises(ValueError, match="bad.gz: expected idx magic number 2051, found 2049"):
        read_idx(bad, 2051)
    assert read_idx(bad, 2049).tolist() == [1, 2, 3]


def test_image_folder_transforms_and_unreadable_file(tmp_path):
    write_image_folder(tmp_path)
    dm = ImageFolderDataModule(str(tmp_path), img_size=32, batch_size=2, num_workers=0)
    assert (dm.num_classes, dm.in_chans, dm.img_size) == (2, 3, 32)
    dm.setup()
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (2, 3, 32, 32) and set(y.tolist()) <= {0, 1}
    assert dm.datasets["val"][0][0].shape == (3, 32, 32)
    steps = [type(t).__name__ for t in eval_transform(224).transforms]
    assert steps[:2] == ["Resize", "CenterCrop"]
    resize, crop = eval_transform(224).transforms[:2]
    assert resize.size == 256 and resize.interpolation.value == "bicubic" and tuple(crop.size) == (224, 224)
    broken = tmp_path / "val" / "dog" / "broken.png"
    broken.write_bytes(b"not an image at all")
    dm = ImageFolderDataModule(str(tmp_path), img_size=32, batch_size=8, num_workers=0)
    dm.setup()
    with pytest.raises(ValueError, match=f"unreadable image file '{broken}'"):
        list(dm.val_dataloader())


def test_image_folder_bad_layout(tmp_path):
    (tmp_path / "train" / "a").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="expected the val folder"):
        ImageFolderDataModule(str(tmp_path))
    (tmp_path / "val" / "b").mkdir(parents=True)
    with pytest.raises(ValueError, match="val classes must equal the train classes"):
        ImageFolderDataModule(str(tmp_path))


def test_cifar_missing_files_are_listed(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"missing \['data_batch_1'.*never downloads"):
        CIFARDataModule(str(tmp_path), name="cifar10")
    with pytest.raises(ValueError, match="name must be one of"):
        CIFARDataModule(str(tmp_path), name="svhn")


def test_cifar10_reads_torchvision_files(tmp_path, monkeypatch):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"):
        batch = {"data": rng.integers(0, 256, size=(4, 3072), dtype=np.uint8), "labels": [0, 1, 2, 9]}
        (folder / name).write_bytes(pickle.dumps(batch))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}))
    # generated files cannot match torchvision's md5 list; everything else is torchvision's own reader
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda path, md5=None: Path(path).is_file())
    dm = CIFARDataModule(str(tmp_path), name="cifar10", batch_size=4, num_workers=0)
    assert (dm.num_classes, dm.in_chans, dm.img_size) == (10, 3, 32)
    dm.setup()
    assert len(dm.datasets["train"]) == 20 and len(dm.datasets["val"]) == 4
    x, y = next(iter(dm.val_dataloader()))
    assert x.shape == (4, 3, 32, 32) and y.tolist() == [0, 1, 2, 9]
