"""The shoot-out's data: scikit-learn's handwritten digits by default, or an image folder.

Both come as a [`Splits`][zoo.shootout.Splits]: a training set, a test set of ``(image, label)`` pairs with
images ``(C, H, W)`` float tensors, and what the model needs to know about them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, TensorDataset

from unifiedops._checks import check_int

__all__ = ["Splits", "digits_splits", "image_folder_splits"]

_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class Splits:
    """A dataset split for the shoot-out.

    Attributes:
        train: ``(image, label)`` pairs to train on, images ``(in_chans, H, W)``.
        test: ``(image, label)`` pairs that top-1 accuracy is measured on.
        num_classes: Classes (labels are ``0 .. num_classes - 1``).
        in_chans: Channels of an image.
        img_size: ``(H, W)`` of an image.
        description: What the data is, for the report (e.g. ``"digits (sklearn), 32x32"``).
    """

    train: Dataset
    test: Dataset
    num_classes: int
    in_chans: int
    img_size: tuple[int, int]
    description: str


def digits_splits(img_size: int = 32, test_fraction: float = 0.2, split_seed: int = 0) -> Splits:
    """scikit-learn's handwritten digits (1797 8×8 grey images, 10 classes), upsampled, in a fixed split.

    The images ship inside scikit-learn, so nothing is downloaded. The split is stratified by class and fixed by
    ``split_seed``, so every mixer and every seed of a shoot-out sees the same test set. Pixels (0 to 16) are
    scaled to ``[0, 1]``, upsampled bilinearly, and standardised with the training set's mean and deviation.

    Args:
        img_size: Side of the upsampled images.
        test_fraction: Share of the images held out for testing.
        split_seed: Seed of the train/test split.

    Returns:
        The splits: ``1797 * (1 - test_fraction)`` training and the rest test images, ``(1, img_size, img_size)``.

    Examples:
        >>> from zoo.shootout import digits_splits
        >>> splits = digits_splits()
        >>> len(splits.train), len(splits.test), splits.train[0][0].shape
        (1437, 360, torch.Size([1, 32, 32]))
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    check_int("img_size", img_size, minimum=8)  # the digits are 8x8
    if not isinstance(test_fraction, float) or not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be a float in (0, 1), got test_fraction={test_fraction!r}")
    digits = load_digits()
    images = torch.as_tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.as_tensor(digits.target, dtype=torch.long)
    train_idx, test_idx = train_test_split(
        range(len(labels)), test_size=test_fraction, stratify=digits.target, random_state=split_seed
    )
    images = F.interpolate(images, size=(img_size, img_size), mode="bilinear", align_corners=False)
    train_images = images[train_idx]
    mean, std = train_images.mean(), train_images.std()
    images = (images - mean) / std
    return Splits(
        train=TensorDataset(images[train_idx], labels[train_idx]),
        test=TensorDataset(images[test_idx], labels[test_idx]),
        num_classes=10,
        in_chans=1,
        img_size=(img_size, img_size),
        description=f"digits (scikit-learn), 8x8 upsampled to {img_size}x{img_size}",
    )


def _class_folders(split_dir: Path, argument: str) -> list[str]:
    if not split_dir.is_dir():
        raise ValueError(f"{argument}: {split_dir} is missing; the folder needs train/ and val/ sub-folders")
    classes = sorted(entry.name for entry in os.scandir(split_dir) if entry.is_dir())
    if not classes:
        raise ValueError(f"{argument}: {split_dir} has no class sub-folders (one folder of images per class)")
    empty = [c for c in classes if not any(f.name.lower().endswith(_IMAGE_SUFFIXES) for f in os.scandir(split_dir / c))]
    if empty:
        raise ValueError(f"{argument}: class folders without images in {split_dir}: {empty[:5]}")
    return classes


def image_folder_splits(root: str | os.PathLike, img_size: int = 224, *, argument: str = "data") -> Splits:
    """An image-folder dataset: ``root/train/<class>/*.jpg`` and ``root/val/<class>/*.jpg``.

    The layout is checked before anything is loaded: both splits must exist, hold one sub-folder of images per
    class, and name the same classes. Training images get timm's training transform (random resized crop,
    flip), test images its evaluation transform (resize, centre crop), both at ``img_size``.

    Args:
        root: The dataset folder.
        img_size: Side of the images the model sees.
        argument: The argument's name in error messages (the CLI passes ``"--data"``).

    Returns:
        The splits, RGB images ``(3, img_size, img_size)``.

    Raises:
        ValueError: If the folder or a split is missing, a split has no class folders, a class folder has no
            images, or the splits' classes differ.
    """
    from timm.data import create_transform
    from torchvision.datasets import ImageFolder

    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{argument}: {root} is not a folder")
    train_classes = _class_folders(root / "train", argument)
    val_classes = _class_folders(root / "val", argument)
    if train_classes != val_classes:
        only = sorted(set(train_classes) ^ set(val_classes))
        raise ValueError(f"{argument}: train/ and val/ must name the same classes; they differ in {only[:5]}")
    train = ImageFolder(str(root / "train"), transform=create_transform(img_size, is_training=True))
    test = ImageFolder(str(root / "val"), transform=create_transform(img_size, is_training=False))
    return Splits(
        train=train,
        test=test,
        num_classes=len(train_classes),
        in_chans=3,
        img_size=(img_size, img_size),
        description=f"{root.name} (image folder, {len(train_classes)} classes), {img_size}x{img_size}",
    )
