"""The paper's torchvision image sets, in torchvision's own layout under the data folder
(`cifar-10-batches-py/`, `flowers-102/`, ...); with a network a missing set is downloaded there.
CIFAR stays at its native 32 px; the others are decoded to squares once (aft.datasets.decode)."""
import os
from functools import partial

import numpy as np
import torch

from aft.datasets.base import Split, Task, register_dataset
from aft.datasets.decode import data_root, decoded_store, offline, offline_reason, square_uint8
from aft.errors import UserError, first_line

# name: (torchvision class, its folder under the root, train split, test split, classes)
TORCHVISION = {
    "cifar10": ("CIFAR10", "cifar-10-batches-py", {"train": True}, {"train": False}, 10),
    "cifar100": ("CIFAR100", "cifar-100-python", {"train": True}, {"train": False}, 100),
    "flowers": ("Flowers102", "flowers-102", {"split": "train"}, {"split": "test"}, 102),
    "pets": ("OxfordIIITPet", "oxford-iiit-pet", {"split": "trainval"}, {"split": "test"}, 37),
    "aircraft": ("FGVCAircraft", "fgvc-aircraft-2013b", {"split": "trainval"}, {"split": "test"}, 100),
    "dtd": ("DTD", "dtd", {"split": "train"}, {"split": "test"}, 47),
    "food": ("Food101", "food-101", {"split": "train"}, {"split": "test"}, 101),
}
KEPT_AS_ARRAYS = ("cifar10", "cifar100")  # torchvision holds them decoded, 32 x 32: kept at that size


def _open_torchvision(name, root, split_kwargs, **kwargs):
    import torchvision
    cls_name, folder = TORCHVISION[name][:2]
    cls = getattr(torchvision.datasets, cls_name)
    where = os.path.join(root, folder)
    fix = (f"dataset {name} (torchvision {cls_name}) is not in {where}: download it once with a network "
           f"(python -c \"import torchvision; torchvision.datasets.{cls_name}('{root}', download=True)\") or copy "
           f"its {folder} folder there; --data_dir or AFT_DATA_DIR sets the data folder")
    try:
        return cls(root, download=False, **split_kwargs, **kwargs)
    except (RuntimeError, OSError) as e:  # torchvision: "Dataset not found"; a half-copied folder: a missing file
        if offline():
            raise UserError(f"{fix} (offline: {offline_reason()})") from e
    print(f"dataset {name}: downloading torchvision {cls_name} into {root}", flush=True)
    try:
        return cls(root, download=True, **split_kwargs, **kwargs)
    except Exception as e:  # network errors come in many types
        raise UserError(f"{fix} (the download failed: {first_line(e)})") from e


def _torchvision_split(name, root, split_kwargs, size):
    cls_name = TORCHVISION[name][0]
    if name in KEPT_AS_ARRAYS:
        ds = _open_torchvision(name, root, split_kwargs)
        return Split(torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).contiguous(),
                     torch.as_tensor(ds.targets, dtype=torch.long)), list(ds.classes)
    ds = _open_torchvision(name, root, split_kwargs, transform=partial(square_uint8, size=size))
    split_name = "-".join(str(v) for v in split_kwargs.values())
    images, labels, info = decoded_store(root, f"{name}-{split_name}-{size}px", len(ds), ds.__getitem__, size,
                                         f"{name} {split_name} at {size} px")
    if info["bad"]:  # a missing or corrupt image file
        row, reason = info["bad"][0]
        raise UserError(f"dataset {name} (torchvision {cls_name}) in {root} is incomplete or damaged (row {row}: "
                        f"{reason}); download it again, then delete {images.path} and its .json")
    return Split(images, labels), list(getattr(ds, "classes", []))


def _torchvision_task(name, data_dir, decode_size):
    root = data_root(data_dir)
    _, _, train_kwargs, test_kwargs, num_classes = TORCHVISION[name]
    train, classes = _torchvision_split(name, root, train_kwargs, decode_size)
    test, _ = _torchvision_split(name, root, test_kwargs, decode_size)
    return Task(name, "image", num_classes, train, test, class_names=classes,
                decoded_size=0 if name in KEPT_AS_ARRAYS else decode_size)


for _name in TORCHVISION:
    register_dataset(_name, modality="image")(partial(_torchvision_task, _name))
