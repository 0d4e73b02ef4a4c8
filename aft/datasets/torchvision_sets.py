"""The paper's torchvision image sets, in torchvision's own layout under the data folder
(`cifar-10-batches-py/`, `flowers-102/`, ...); with a network a missing set is downloaded there.
CIFAR stays at its native 32 px (decoded like the others under --paper_exact, as the paper's code
applies timm's transform to it); the others are decoded once for each model (aft.datasets.decode)."""
import os
from functools import partial

import numpy as np
import torch

from aft.datasets.base import Split, Task, register_dataset
from aft.datasets.decode import data_root, decoded_store, offline, offline_reason
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


def _open_torchvision(name, root, split_kwargs):
    import torchvision
    cls_name, folder = TORCHVISION[name][:2]
    cls = getattr(torchvision.datasets, cls_name)
    where = os.path.join(root, folder)
    fix = (f"dataset {name} (torchvision {cls_name}) is not in {where}: download it once with a network "
           f"(python -c \"import torchvision; torchvision.datasets.{cls_name}('{root}', download=True)\") or copy "
           f"its {folder} folder there; --data_dir or AFT_DATA_DIR sets the data folder")
    try:
        return cls(root, download=False, **split_kwargs)
    except (RuntimeError, OSError) as e:  # torchvision: "Dataset not found"; a half-copied folder: a missing file
        if offline():
            raise UserError(f"{fix} (offline: {offline_reason()})") from e
    print(f"dataset {name}: downloading torchvision {cls_name} into {root}", flush=True)
    try:
        return cls(root, download=True, **split_kwargs)
    except Exception as e:  # network errors come in many types
        raise UserError(f"{fix} (the download failed: {first_line(e)})") from e


def _torchvision_split(name, root, split_kwargs, decoding):
    cls_name = TORCHVISION[name][0]
    plain = _open_torchvision(name, root, split_kwargs)  # its pictures as they are: originals(i)
    originals = lambda i: plain[i][0]  # noqa: E731
    if name in KEPT_AS_ARRAYS and not decoding.model_ready:
        return Split(torch.from_numpy(np.ascontiguousarray(plain.data)).permute(0, 3, 1, 2).contiguous(),
                     torch.as_tensor(plain.targets, dtype=torch.long), originals), list(plain.classes)
    def decoded(i):  # (a set's own transform attribute differs: Pets applies `transforms`, the rest `transform`)
        image, label = plain[i]
        return decoding(image), label

    split_name = "-".join(str(v) for v in split_kwargs.values())
    images, labels, info = decoded_store(root, f"{name}-{split_name}-{decoding.key}", len(plain), decoded,
                                         decoding, f"{name} {split_name} at {decoding.key}")
    if info["bad"]:  # a missing or corrupt image file
        row, reason = info["bad"][0]
        raise UserError(f"dataset {name} (torchvision {cls_name}) in {root} is incomplete or damaged (row {row}: "
                        f"{reason}); download it again, then delete {images.path} and its .json")
    return Split(images, labels, originals), list(getattr(plain, "classes", []))


def _torchvision_task(name, data_dir, decoding):
    root = data_root(data_dir)
    _, _, train_kwargs, test_kwargs, num_classes = TORCHVISION[name]
    train, classes = _torchvision_split(name, root, train_kwargs, decoding)
    test, _ = _torchvision_split(name, root, test_kwargs, decoding)
    arrays = name in KEPT_AS_ARRAYS and not decoding.model_ready
    return Task(name, "image", num_classes, train, test, class_names=classes,
                decoded_size=0 if arrays else decoding.side)


for _name in TORCHVISION:
    register_dataset(_name, modality="image", decodes=_name not in KEPT_AS_ARRAYS, paper_decodes=True)(
        partial(_torchvision_task, _name))
