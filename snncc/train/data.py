"""Training data for ``snncc finetune``: every form opens as an indexable dataset of (image, label).

:func:`open_dataset` accepts

* ``.npz`` with keys ``x`` (images, N x C x H x W) and ``y`` (integer labels), read into memory;
* ``.npy`` pairs read with memory mapping (``np.load(mmap_mode="r")``; a sample is read only when
  it is indexed, so the images are never loaded whole): a directory holding ``x.npy`` and
  ``y.npy``, or the path of the image file ``NAME.npy`` whose labels are beside it (``x.npy`` ->
  ``y.npy``, ``train_x.npy`` -> ``train_y.npy``);
* an image folder: one subfolder per class (class index = position of the folder name in sorted
  order), PNG / JPEG / BMP / GIF / TIFF / WebP files read with PIL, converted to the model's channel
  count (1: grey, 3: RGB) and resized to the model's input size (``size``) with bilinear filtering;
  with ``labels=False`` (calibration) every image under the folder, in any layout (side by side,
  class folders, or both).

Pixel values: integer data (uint8 arrays, image files) are divided by 255; then, when ``mean`` and
``std`` are given (one value, or one per channel), ``(x - mean) / std``. Float arrays are used as
they are unless ``mean``/``std`` are given. The result must be what the ONNX model expects at its
input; e.g. ImageNet models: ``--mean 0.485,0.456,0.406 --std 0.229,0.224,0.225``.

Every problem is a coded :class:`~snncc.errors.CalibrationError`: SNN-E803 (file missing,
unreadable or corrupt, no labels, shapes, images that are not numbers or hold NaN/Inf), SNN-E804
(``mean``/``std`` not finite, ``std`` not positive, or not one value or one per channel), SNN-E809
(labels not integers, negative or >= the number of classes), SNN-E810 (image folder without class
folders, an empty class folder, an unreadable image).

The loader function is shared with calibration (``--calib`` of compile): ``open_dataset(path,
labels=False)`` gives the images only.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Sequence, Union

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from snncc.errors import CalibrationError

__all__ = ["Arrays", "ArrayDataset", "NpyPairDataset", "ImageFolderDataset", "Preprocess", "open_dataset",
           "load_npz", "as_arrays", "as_dataset", "check_input_shape", "check_labels", "check_images",
           "check_normalisation", "make_loader", "first_images", "IMAGE_SUFFIXES"]

Arrays = tuple[np.ndarray, np.ndarray]
DataLike = Union[Arrays, "os.PathLike[str]", str, Dataset]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def _fail(code: str, message: str, hint: str) -> CalibrationError:
    return CalibrationError(f"finetune: {message}", code=code, hint=hint)


class Preprocess:
    """``x / 255`` for integer data, then ``(x - mean) / std`` when given (per channel or one value)."""

    def __init__(self, mean: Sequence[float] | None = None, std: Sequence[float] | None = None):
        self.mean = None if mean is None else np.asarray(mean, np.float32).reshape(-1)
        self.std = None if std is None else np.asarray(std, np.float32).reshape(-1)
        for flag, values in (("--mean", self.mean), ("--std", self.std)):
            if values is not None and (values.size == 0 or not np.all(np.isfinite(values))):
                raise _fail("SNN-E804", f"{flag} {values.tolist()} must be finite numbers",
                            "e.g. --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225")
        if self.std is not None and np.any(self.std <= 0):
            raise _fail("SNN-E804", f"--std {self.std.tolist()} must be positive", "e.g. --std 0.229,0.224,0.225")

    def __call__(self, x: np.ndarray) -> np.ndarray:
        integer = np.issubdtype(x.dtype, np.integer) or x.dtype == bool
        x = x.astype(np.float32)
        if integer:
            x = x / np.float32(255.0)
        if self.mean is not None or self.std is not None:
            shape = (-1,) + (1,) * (x.ndim - 1)   # per sample: channel axis first
            if self.mean is not None:
                x = x - (self.mean.reshape(shape) if self.mean.size > 1 else self.mean.reshape(()))
            if self.std is not None:
                x = x / (self.std.reshape(shape) if self.std.size > 1 else self.std.reshape(()))
        return x


def check_normalisation(mean: Sequence[float] | None, std: Sequence[float] | None, channels: int | None,
                        where: str = "the data") -> None:
    """``mean``/``std`` hold one value, or one per channel (``channels``; None: not known, no check)."""
    if channels is None:
        return
    for flag, values in (("--mean", mean), ("--std", std)):
        if values is not None and len(values) not in (1, channels):
            raise _fail("SNN-E804", f"{flag} has {len(values)} values but {where} has {channels} channel"
                        f"{'s' if channels != 1 else ''}",
                        "give one value" + (f" (used for every channel) or {channels}, one per channel"
                                            if channels != 1 else ""))


def check_images(x: np.ndarray, where: str, chunk: int = 1 << 24) -> None:
    """Images are numbers (integer, bool or float) and, when float, hold no NaN or Inf.

    Memory-mapped arrays are scanned in chunks of about ``chunk`` values, so they are never
    loaded whole.
    """
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == bool) or np.issubdtype(x.dtype, np.complexfloating):
        raise _fail("SNN-E803", f"{where}: images have dtype {x.dtype}, not real numbers",
                    "save the images as uint8 (0..255) or float32")
    if x.size and np.issubdtype(x.dtype, np.integer):
        _check_pixel_range(x, where, chunk)
    if not np.issubdtype(x.dtype, np.floating) or x.size == 0:
        return
    per_sample = max(1, int(np.prod(x.shape[1:])))
    step = max(1, chunk // per_sample)
    bad = first = 0
    for start in range(0, len(x), step):
        part = np.asarray(x[start:start + step])
        finite = np.isfinite(part).reshape(len(part), -1).all(axis=1)
        if not finite.all():
            if not bad:
                first = start + int(np.argmin(finite))
            bad += int((~finite).sum())
    if bad:
        raise _fail("SNN-E803", f"{where}: {bad} image(s) of {len(x)} hold NaN or Inf values (the first: "
                    f"sample {first})", "clean or drop those samples (one NaN makes every trained weight NaN)")


def _check_pixel_range(x: np.ndarray, where: str, chunk: int) -> None:
    """Integer images are divided by 255 (8-bit pixels); warn when their values are not 8-bit
    pixels (a user's digits stored as uint8 0..16 trained at 80 % against 98.8 % as floats)."""
    per_sample = max(1, int(np.prod(x.shape[1:])))
    step = max(1, chunk // per_sample)
    lo = min(int(np.min(x[i:i + step])) for i in range(0, len(x), step))
    hi = max(int(np.max(x[i:i + step])) for i in range(0, len(x), step))
    if lo < 0 or hi > 255 or hi < 128:
        logging.getLogger("snncc.train.data").warning(
            "%s: integer images are divided by 255 (read as 8-bit pixels), but they span %d..%d; "
            "if they are not 8-bit pixels, save them as float32 exactly as the model takes them",
            where, lo, hi)


class ArrayDataset(Dataset):
    """In-memory ``x``/``y`` arrays."""

    def __init__(self, x: np.ndarray, y: np.ndarray | None, preprocess: Preprocess | None = None,
                 where: str = "data"):
        self.x, self.y, self.where = x, y, where
        self.preprocess = preprocess or Preprocess()

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        x = torch.from_numpy(np.ascontiguousarray(self.preprocess(self.x[i])))
        return x if self.y is None else (x, int(self.y[i]))

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])


class NpyPairDataset(Dataset):
    """``x.npy`` opened with memory mapping (in each worker process on first use); labels read whole."""

    def __init__(self, x_path: Path, y: np.ndarray | None, shape: tuple[int, ...], preprocess: Preprocess,
                 where: str):
        self.x_path, self.y, self.shape, self.preprocess, self.where = x_path, y, shape, preprocess, where
        self._x: np.ndarray | None = None

    def _images(self) -> np.ndarray:
        if self._x is None:
            self._x = np.load(self.x_path, mmap_mode="r", allow_pickle=False)
        return self._x

    def __getstate__(self):  # workers reopen the map instead of receiving a copy of the data
        state = dict(self.__dict__)
        state["_x"] = None
        return state

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, i: int):
        x = torch.from_numpy(np.ascontiguousarray(self.preprocess(np.asarray(self._images()[i]))))
        return x if self.y is None else (x, int(self.y[i]))

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.shape[1:])


class ImageFolderDataset(Dataset):
    """``root/<class>/<image>``; images converted to ``channels`` and resized to ``size`` (H, W)."""

    def __init__(self, root: Path, files: list[Path], labels: np.ndarray, classes: list[str], channels: int,
                 size: tuple[int, int], preprocess: Preprocess, with_labels: bool = True):
        self.root, self.files, self.y, self.classes = root, files, labels, classes
        self.channels, self.size, self.preprocess, self.with_labels = channels, size, preprocess, with_labels
        self.where = str(root)

    def __len__(self) -> int:
        return len(self.files)

    def load(self, i: int) -> np.ndarray:
        from PIL import Image, UnidentifiedImageError

        path = self.files[i]
        try:
            with Image.open(path) as img:
                img = img.convert("L" if self.channels == 1 else "RGB")
                if img.size != (self.size[1], self.size[0]):
                    img = img.resize((self.size[1], self.size[0]), Image.BILINEAR)
                arr = np.asarray(img, dtype=np.uint8)
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError,
                Image.DecompressionBombError) as exc:   # (a 30000x30000 PNG had been an E500)
            raise _fail("SNN-E810", f"cannot read image '{path}' ({type(exc).__name__}: {exc})",
                        "remove or replace the file; PNG, JPEG, BMP, GIF, TIFF and WebP are read") from None
        arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
        if arr.shape[0] != self.channels:   # 1-channel model, RGB file converted to L above; the rest: repeat
            arr = np.repeat(arr[:1], self.channels, axis=0)
        return arr

    def __getitem__(self, i: int):
        x = torch.from_numpy(np.ascontiguousarray(self.preprocess(self.load(i))))
        return (x, int(self.y[i])) if self.with_labels else x

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return (self.channels, *self.size)


def _npy_pair(path: Path) -> tuple[Path, Path]:
    """(images, labels) paths for a directory holding x.npy / y.npy, or for NAMEx.npy."""
    if path.is_dir():
        return path / "x.npy", path / "y.npy"
    stem = path.stem
    i = stem.rfind("x")
    if i < 0:
        raise _fail("SNN-E803", f"cannot tell where the labels of '{path}' are",
                    "name the images x.npy (labels y.npy beside them) or NAME_x.npy (labels NAME_y.npy)")
    return path, path.with_name(stem[:i] + "y" + stem[i + 1:] + path.suffix)


def _read_labels(path: Path, where: str) -> np.ndarray:
    if not path.is_file():
        raise _fail("SNN-E803", f"{where} has no labels: '{path}' does not exist",
                    "save the integer class labels with np.save(y_path, labels)")
    try:
        y = np.load(path, allow_pickle=False)
    except Exception as exc:  # numpy raises several unrelated types for truncated or foreign files
        raise _fail("SNN-E803", f"cannot read labels '{path}' ({type(exc).__name__}: {exc})",
                    "re-save them with np.save") from None
    if not isinstance(y, np.ndarray):
        raise _fail("SNN-E803", f"labels '{path}' are an .npz archive, not one array", "re-save them with np.save")
    return y


def check_labels(y: np.ndarray, n: int, num_classes: int | None, where: str) -> np.ndarray:
    """Labels: N integers in [0, num_classes); returns them as int64."""
    y = np.asarray(y)
    if y.ndim != 1 or len(y) != n:
        raise _fail("SNN-E803", f"{where}: {n} images but labels of shape {list(y.shape)}",
                    "give one integer label per image")
    if not (np.issubdtype(y.dtype, np.integer) or (np.issubdtype(y.dtype, np.floating)
                                                    and np.all(np.isfinite(y)) and np.all(y == np.round(y)))):
        raise _fail("SNN-E809", f"{where}: labels have dtype {y.dtype} and are not class indices",
                    "labels are integer class indices 0..C-1")
    y = y.astype(np.int64)
    if n and y.min() < 0:
        raise _fail("SNN-E809", f"{where}: label {int(y.min())} is negative ({int((y < 0).sum())} such)",
                    "labels are class indices 0..C-1")
    if n and num_classes is not None and y.max() >= num_classes:
        raise _fail("SNN-E809", f"{where}: label {int(y.max())} is out of range for a model with "
                    f"{num_classes} outputs ({int((y >= num_classes).sum())} such)",
                    f"labels are class indices 0..{num_classes - 1}")
    return y


def _class_folders(root: Path, classes: list[str], num_classes: int | None
                   ) -> tuple[list[Path], list[int]]:
    """Image files and class indices of ROOT/<class>/..., checked (SNN-E809/E810)."""
    if not classes:
        raise _fail("SNN-E810", f"'{root}' holds no class subfolders",
                    "lay the data out as ROOT/<class name>/<image>.png, one folder per class, or give .npz/.npy")
    files, ys, empty = [], [], []
    for k, name in enumerate(classes):
        found = sorted(p for p in (root / name).rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            empty.append(name)
        files += found
        ys += [k] * len(found)
    if empty:
        raise _fail("SNN-E810", f"image folder '{root}': class folder(s) {', '.join(empty[:5])}"
                    f"{' ...' if len(empty) > 5 else ''} hold no images", "remove empty class folders or add images "
                    f"({', '.join(IMAGE_SUFFIXES)})")
    if num_classes is not None and len(classes) > num_classes:
        raise _fail("SNN-E809", f"image folder '{root}' has {len(classes)} class folders, the model has "
                    f"{num_classes} outputs", "one subfolder per model class")
    return files, ys


def _image_folder(root: Path, channels: int, size: tuple[int, int] | None, preprocess: Preprocess,
                  labels: bool, num_classes: int | None) -> ImageFolderDataset:
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    files, ys = [], []
    if not labels:   # calibration needs no labels: every image under the folder, in any layout
        files = sorted(p for p in root.rglob("*") if p.is_file()
                       and p.suffix.lower() in IMAGE_SUFFIXES
                       and not any(part.startswith(".") for part in p.relative_to(root).parts))
        if files:
            ys, classes = [0] * len(files), []
    if not files:
        files, ys = _class_folders(root, classes, num_classes)
    if size is None:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(files[0]) as img:
                size = (img.size[1], img.size[0])
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError,
                Image.DecompressionBombError) as exc:
            raise _fail("SNN-E810", f"cannot read image '{files[0]}' ({type(exc).__name__}: "
                        f"{exc})", "remove or replace the file; PNG, JPEG, BMP, GIF, TIFF and "
                        "WebP are read") from None
    return ImageFolderDataset(root, files, np.asarray(ys, np.int64), classes, channels, size, preprocess, labels)


def open_dataset(path: str | os.PathLike, *, channels: int | None = None, size: tuple[int, int] | None = None,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None, labels: bool = True,
                 num_classes: int | None = None, what: str = "data") -> Dataset:
    """Open ``path`` (``.npz``, ``.npy`` pair, or image folder; see the module doc) as a dataset.

    Items are ``(float32 tensor C x H x W, int label)``, or the tensor alone with ``labels=False``.
    ``channels``/``size`` matter for image folders (default: 3 channels, the first image's size);
    ``num_classes`` bounds the labels. The dataset has ``sample_shape`` and ``y`` (labels or None).
    """
    p = Path(path)
    pre = Preprocess(mean, std)
    where = f"{what} '{p}'"
    if not p.exists():
        raise _fail("SNN-E803", f"{where} does not exist", "check the path")
    if p.is_dir() and not (p / "x.npy").is_file():
        check_normalisation(mean, std, channels or 3, where)
        return _image_folder(p, channels or 3, size, pre, labels, num_classes)
    if p.is_dir() or p.suffix == ".npy":
        x_path, y_path = _npy_pair(p) if labels or p.is_dir() else (p, None)
        if not x_path.is_file():
            raise _fail("SNN-E803", f"{where}: '{x_path}' does not exist", "save the images with np.save")
        try:
            x = np.load(x_path, mmap_mode="r", allow_pickle=False)
        except Exception as exc:  # numpy raises several unrelated types for truncated or foreign files
            raise _fail("SNN-E803", f"cannot read '{x_path}' ({type(exc).__name__}: {exc})",
                        "save the images with np.save (no pickled objects)") from None
        if not isinstance(x, np.ndarray) or x.ndim < 2 or len(x) == 0:
            raise _fail("SNN-E803", f"{where}: images have shape {list(getattr(x, 'shape', []))}",
                        "N x C x H x W, N >= 1")
        check_normalisation(mean, std, x.shape[1], where)
        y = check_labels(_read_labels(y_path, where), len(x), num_classes, where) if labels else None
        if labels:   # calibration (labels=False) checks the samples it reads itself (SNN-E409)
            try:
                check_images(x, where)
            except (OSError, ValueError) as exc:   # a truncated memory map
                raise _fail("SNN-E803", f"cannot read '{x_path}' ({type(exc).__name__}: {exc})",
                            "save the images with np.save (no pickled objects)") from None
        ds = NpyPairDataset(x_path, y, tuple(x.shape), pre, where)
        del x
        return ds
    x, y = load_npz(p, labels=labels)
    if x.ndim < 2 or len(x) == 0:
        raise _fail("SNN-E803", f"{where}: images have shape {list(x.shape)}", "N x C x H x W, N >= 1")
    check_normalisation(mean, std, x.shape[1], where)
    y = check_labels(y, len(x), num_classes, where) if labels else None
    if labels:
        check_images(x, where)
    return ArrayDataset(x, y, pre, where)


def load_npz(path: str | os.PathLike, labels: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """Read ``x`` and ``y`` from an ``.npz`` file; raises SNN-E803 when unusable."""
    from snncc.calibration import not_numpy

    why = not_numpy(Path(path))   # numpy calls a text file 'pickled (object) data'
    if why:
        raise _fail("SNN-E803", f"data file '{path}' {why}",
                    "save it with np.savez(path, x=images, y=labels)")
    try:
        with np.load(path, allow_pickle=False) as f:
            if not hasattr(f, "files"):
                raise ValueError("not an .npz archive")
            need = ("x", "y") if labels else ("x",)
            missing = [k for k in need if k not in f.files]
            if missing:
                held = ", ".join(f.files) or "nothing"   # (a user's image= / labels= keys)
                raise _fail("SNN-E803", f"data file '{path}' has no key(s) {', '.join(missing)}"
                            + (" (no labels)" if "y" in missing else "") + f"; it holds: {held}",
                            "save it with np.savez(path, x=images, y=labels)")
            return f["x"], (f["y"] if labels else None)
    except CalibrationError:
        raise
    except Exception as exc:  # numpy / zipfile / zlib raise several unrelated types for corrupt files
        raise _fail("SNN-E803", f"cannot read data file '{path}' ({type(exc).__name__}: {exc})",
                    "give an .npz file with keys x (images) and y (labels), an x.npy/y.npy pair or an "
                    "image folder") from None


def as_arrays(data, what: str = "data") -> Arrays:
    """An ``(x, y)`` pair or an ``.npz`` path as float32 x and int64 y (kept for small in-memory uses)."""
    if isinstance(data, (str, os.PathLike)):
        x, y = load_npz(data)
    else:
        x, y = (np.asarray(a) for a in data)
    if len(x) != len(y) or len(x) == 0 or y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise _fail("SNN-E803", f"{what} needs x with N >= 1 samples and N integer labels y "
                    f"(got x {x.shape}, y {y.shape} {y.dtype})", "labels are class indices, one per image")
    return x.astype(np.float32, copy=False), y.astype(np.int64, copy=False)


def as_dataset(data: DataLike, what: str = "data", num_classes: int | None = None) -> Dataset:
    """A dataset from a dataset, an ``(x, y)`` pair or a path (see :func:`open_dataset`)."""
    if isinstance(data, Dataset):
        return data
    if isinstance(data, (str, os.PathLike)):
        return open_dataset(data, what=what, num_classes=num_classes)
    x, y = (np.asarray(a) for a in data)
    if x.ndim < 2 or len(x) == 0:
        raise _fail("SNN-E803", f"{what} needs x with N >= 1 samples (got x {x.shape})", "N x C x H x W")
    y = check_labels(y, len(x), num_classes, what)
    check_images(x, what)
    return ArrayDataset(x, y, where=what)


def check_input_shape(dataset_or_x, dims: Sequence[int | str | None], what: str = "data") -> None:
    """The per-sample shape must match the model input (symbolic dims match anything)."""
    got = list(getattr(dataset_or_x, "sample_shape", None) or dataset_or_x.shape[1:])
    want = list(dims[1:])
    if len(want) != len(got) or any(isinstance(w, int) and w > 0 and w != g for w, g in zip(want, got)):
        raise _fail("SNN-E803", f"{what} samples have shape {got}, the model input wants {want}",
                    "resize the images (--input-size for image folders) or export the model for this shape")


def first_images(dataset: Dataset, n: int) -> torch.Tensor:
    """The first ``n`` images of a dataset stacked into one batch."""
    items = [dataset[i] for i in range(min(n, len(dataset)))]
    return torch.stack([it[0] if isinstance(it, (tuple, list)) else it for it in items])


def make_loader(data, batch_size: int, shuffle: bool, seed: int = 0, workers: int = 0,
                sampler=None) -> DataLoader:
    """A DataLoader over a dataset (or an ``(x, y)`` pair); ``sampler`` replaces shuffling."""
    dataset = data if isinstance(data, Dataset) else as_dataset(data)
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle and sampler is None, sampler=sampler,
                      generator=gen if sampler is None else None, num_workers=workers,
                      persistent_workers=workers > 0, pin_memory=False)
