"""The paper's datasets (SPEC 6), registered in aft.datasets' registry under the paper's names.

Where the data lives:
- the data folder: `--data_dir`, else `$AFT_DATA_DIR`, else `~/data` (the paper code's root). The
  torchvision sets sit there in torchvision's own layout (`cifar-10-batches-py/`, `flowers-102/`, ...).
  A Hugging Face set may sit there too, as `{data folder}/{name}` saved with `DatasetDict.save_to_disk`
  (for a machine that has no hub cache).
- otherwise the Hugging Face `datasets` cache (`HF_DATASETS_CACHE`, or `HF_HOME`/datasets).
With a network a missing set is downloaded (torchvision into the data folder, Hugging Face into its
cache); offline (`HF_HUB_OFFLINE`, `HF_DATASETS_OFFLINE` or `TRANSFORMERS_OFFLINE` set) nothing is
downloaded and a missing set is one line naming what to download and where to put it.

Images of varying size (flowers, pets, aircraft, dtd, food, SNLI-VE) are decoded once: the shorter
side resized to IMAGE_SIZE (256 px; bicubic, antialiased), then the central IMAGE_SIZE square. Each model
then resizes that square on the device to its own input size, with its own crop fraction,
interpolation, mean and std (timm's eval transform applied to the square). The decoded arrays are
kept in `{data folder}/aft-decoded/` so later runs skip decoding (`AFT_DECODED_CACHE=0` turns that off;
delete the folder after changing a dataset's files). CIFAR stays at its native 32 px.
"""
import io
import os
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import numpy as np
import torch

from aft.datasets import Split, Task, register_dataset
from aft.errors import UserError

IMAGE_SIZE = int(os.environ.get("AFT_IMAGE_SIZE", "256"))  # side of the decoded square images
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")


def data_root(data_dir=None):
    return os.path.abspath(os.path.expanduser(data_dir or os.environ.get("AFT_DATA_DIR") or "~/data"))


def offline():
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on") for v in OFFLINE_VARIABLES)


def _offline_reason():
    return ", ".join(f"{v}={os.environ[v]}" for v in OFFLINE_VARIABLES if os.environ.get(v))


def _workers():
    try:
        return max(1, min(32, len(os.sched_getaffinity(0))))
    except AttributeError:
        return max(1, min(32, os.cpu_count() or 1))


# ---- decoding ----------------------------------------------------------------------------------

def square_uint8(img, size=IMAGE_SIZE):
    """A PIL image as a (3, size, size) uint8 tensor: shorter side to `size` (bicubic, which PIL
    antialiases when shrinking), then the central square."""
    from PIL import Image
    img = img.convert("RGB")
    w, h = img.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), Image.BICUBIC)
    left, top = int(round((nw - size) / 2.0)), int(round((nh - size) / 2.0))  # as torchvision's CenterCrop
    img = img.crop((left, top, left + size, top + size))
    return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1)


def _decode_rows(n, get, size, desc):
    """Call get(i) -> (uint8 (3, size, size), label) for every row, in threads (PIL decodes and
    resizes without holding the GIL), into one preallocated tensor."""
    from tqdm import tqdm
    images = torch.empty((n, 3, size, size), dtype=torch.uint8)
    labels = torch.empty(n, dtype=torch.long)

    def work(i):
        image, label = get(i)
        images[i] = image
        labels[i] = int(label)

    with ThreadPoolExecutor(_workers()) as pool:
        for _ in tqdm(pool.map(work, range(n)), total=n, desc=f"decoding {desc}", leave=False, mininterval=2):
            pass
    return images, labels


def _decoded_cache(root, key, n, make):
    """`make()` -> dict of tensors, kept at {root}/aft-decoded/{key}.pt; reused while it holds n rows."""
    from aft.features import atomic_save
    path = os.path.join(root, "aft-decoded", f"{key}.pt")
    use = os.environ.get("AFT_DECODED_CACHE", "1").strip().lower() not in ("0", "false", "no", "off")
    if use and os.path.exists(path):
        try:
            cached = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            if int(cached["n"]) == n:
                return cached
        except Exception:  # unreadable or stale: decode again and replace it
            pass
    out = make()
    if use:
        try:
            atomic_save(dict(out, n=n), path)
        except OSError:  # a read-only data folder: decoding again next time is the only cost
            pass
    return out


# ---- torchvision ---------------------------------------------------------------------------------

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
            raise UserError(f"{fix} (offline: {_offline_reason()})") from e
    print(f"dataset {name}: downloading torchvision {cls_name} into {root}", flush=True)
    try:
        return cls(root, download=True, **split_kwargs, **kwargs)
    except Exception as e:  # network errors come in many types
        from aft.models import _first_line
        raise UserError(f"{fix} (the download failed: {_first_line(e)})") from e


def _torchvision_split(name, root, split_kwargs):
    cls_name = TORCHVISION[name][0]
    if name.startswith("cifar"):  # already decoded in memory, 32 x 32: kept at that size
        ds = _open_torchvision(name, root, split_kwargs)
        return Split(torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).contiguous(),
                     torch.as_tensor(ds.targets, dtype=torch.long)), list(ds.classes)
    ds = _open_torchvision(name, root, split_kwargs, transform=partial(square_uint8, size=IMAGE_SIZE))
    split_name = "-".join(str(v) for v in split_kwargs.values())
    try:
        out = _decoded_cache(root, f"{name}-{split_name}-{IMAGE_SIZE}px", len(ds),
                             lambda: dict(zip(("images", "labels"), _decode_rows(
                                 len(ds), ds.__getitem__, IMAGE_SIZE, f"{name} {split_name}"))))
    except (OSError, ValueError) as e:  # a missing or corrupt image file
        from aft.models import _first_line
        raise UserError(f"dataset {name} (torchvision {cls_name}) in {root} is incomplete or damaged "
                        f"({_first_line(e)}); download it again") from e
    return Split(out["images"], out["labels"]), list(getattr(ds, "classes", []))


def _torchvision_task(name, data_dir):
    root = data_root(data_dir)
    _, _, train_kwargs, test_kwargs, num_classes = TORCHVISION[name]
    train, classes = _torchvision_split(name, root, train_kwargs)
    test, _ = _torchvision_split(name, root, test_kwargs)
    return Task(name, "image", num_classes, train, test, class_names=classes)


for _name in TORCHVISION:
    register_dataset(_name)(partial(_torchvision_task, _name))


# ---- Hugging Face text ---------------------------------------------------------------------------

# name: (hub repo, config, train split, test split, classes, prompt, truncation side, step multiplier).
# Prompts and truncation sides are the paper code's (SPEC 6); wnli has none there (its loader was
# missing), so it takes rte's, the same sentence-pair entailment question.
GLUE = "nyu-mll/glue"
HF_TEXT = {
    "imdb": ("stanfordnlp/imdb", None, "train", "test", 2,
             "{text}Overall, the sentiment of my review is", "left", 1),
    "boolq": ("aps/super_glue", "boolq", "train", "validation", 2,
              "Question: {question}\nReference: {passage}\nAnswer: ", "left", 1),
    "mnli": (GLUE, "mnli", "train", "validation_matched", 3,
             "Premise: {premise}\nHypothesis: {hypothesis}\nDoes the premise entail the hypothesis? Answer: ",
             "left", 4),
    "mrpc": (GLUE, "mrpc", "train", "validation", 2,
             "Sentence 1: {sentence1}\nSentence 2: {sentence2}\nIs Sentence 1 equivalent to Sentence 2? Answer: ",
             "left", 1),
    "sst2": (GLUE, "sst2", "train", "validation", 2, 'Review: "{sentence}"\nSentiment: ', "left", 1),
    "cola": (GLUE, "cola", "train", "validation", 2, 'Is the sentence "{sentence}" grammatical? Answer: ', "left", 1),
    "qnli": (GLUE, "qnli", "train", "validation", 2,
             "Question: {question}\nSentence: {sentence}\nDoes the sentence answer the question? Answer: ",
             "right", 4),
    "rte": (GLUE, "rte", "train", "validation", 2,
            "Sentence 1: {sentence1}\nSentence 2: {sentence2}\nDoes Sentence 1 entail Sentence 2? Answer: ",
            "left", 1),
    "wnli": (GLUE, "wnli", "train", "validation", 2,
             "Sentence 1: {sentence1}\nSentence 2: {sentence2}\nDoes Sentence 1 entail Sentence 2? Answer: ",
             "left", 1),
    "qqp": (GLUE, "qqp", "train", "validation", 2,
            "Question 1: {question1}\nQuestion 2: {question2}\nAre Question 1 and Question 2 equivalent? Answer: ",
            "left", 4),
}


def _hf_split(name, repo, config, split, root):
    """One split of a Hugging Face dataset: from {root}/{name} (save_to_disk) if there, else the hub
    cache (downloading it when online)."""
    import datasets
    local = os.path.join(root, name)
    if os.path.isdir(local):
        try:
            saved = datasets.load_from_disk(local)
            return saved[split] if isinstance(saved, datasets.DatasetDict) else saved
        except (OSError, ValueError, KeyError) as e:
            from aft.models import _first_line
            raise UserError(f"{local} is not a Hugging Face dataset saved with save_to_disk holding split "
                            f"{split!r} ({_first_line(e)}); save it again or remove it") from e
    try:
        return datasets.load_dataset(repo, config, split=split)
    except (OSError, ValueError) as e:  # offline: ConnectionError; not on the hub / no such config: others
        from datasets.config import HF_DATASETS_CACHE
        from aft.models import _first_line
        args = f"'{repo}'" + (f", '{config}'" if config else "")
        state = f"offline ({_offline_reason()}) and not" if offline() else "not"
        raise UserError(f"dataset {name} (Hugging Face {repo}{' ' + config if config else ''}): {state} in the "
                        f"datasets cache {HF_DATASETS_CACHE} ({_first_line(e, 120)}); download it once with a network "
                        f"(python -c \"import datasets; datasets.load_dataset({args})\"; HF_HOME or HF_DATASETS_CACHE "
                        f"say where the cache is), or put it in {local} with DatasetDict.save_to_disk") from e


def _labels(ds):
    for column in ("label", "answer"):  # super_glue/glue: label; google/boolq: answer (bool)
        if column in ds.column_names:
            return torch.as_tensor([int(v) for v in ds[column]], dtype=torch.long)
    raise UserError(f"dataset has no label column (columns: {', '.join(ds.column_names)})")


def _text_split(name, split):
    repo, config, *_, prompt, _side, _mult = HF_TEXT[name]
    fields = [f for f in ("text", "question", "passage", "premise", "hypothesis", "sentence1", "sentence2",
                          "sentence", "question1", "question2") if "{" + f + "}" in prompt]
    columns = {f: split[f] for f in fields}
    texts = [prompt.format(**dict(zip(fields, row))) for row in zip(*columns.values())]
    labels = _labels(split)
    keep = labels >= 0  # GLUE's unlabelled test rows carry -1; the splits used here have none
    if not bool(keep.all()):
        texts = [t for t, k in zip(texts, keep.tolist()) if k]
        labels = labels[keep]
    return Split(texts, labels)


def _class_names(ds, num_classes):
    feature = ds.features.get("label") if hasattr(ds, "features") else None
    names = getattr(feature, "names", None)
    return list(names) if names and len(names) == num_classes else [str(i) for i in range(num_classes)]


def _text_task(name, data_dir):
    repo, config, train_split, test_split, num_classes, _prompt, side, mult = HF_TEXT[name]
    root = data_root(data_dir)
    train = _hf_split(name, repo, config, train_split, root)
    test = _hf_split(name, repo, config, test_split, root)
    return Task(name, "text", num_classes, _text_split(name, train), _text_split(name, test),
                truncation_side=side, step_multiplier=mult, class_names=_class_names(train, num_classes))


for _name in HF_TEXT:
    register_dataset(_name)(partial(_text_task, _name))


# ---- SNLI-VE: image + hypothesis -----------------------------------------------------------------

SNLI_VE = {"train": "Multimodal-Fatima/SNLI-VE_train", "test": "Multimodal-Fatima/SNLI-VE_test"}
SNLI_VE_CLASSES = ["entailment", "neutral", "contradiction"]


def _snli_ve_split(split, root):
    """Rows (picture, hypothesis, label) in the hub's order; each Flickr30k picture is decoded once,
    however many hypotheses it has (about 17 per picture)."""
    import datasets
    ds = _hf_split("snli-ve", SNLI_VE[split], None, split, root)
    key = next((c for c in ("filename", "id_image") if c in ds.column_names), None)
    rows = ds.select_columns([c for c in (key, "hypothesis", "label") if c])
    texts, labels = rows["hypothesis"], _labels(rows)
    first, index, picture_rows = {}, [], []  # picture key -> number; row -> picture; picture -> first row
    for i, k in enumerate(rows[key] if key else range(len(texts))):
        p = first.get(k)
        if p is None:
            p = first[k] = len(picture_rows)
            picture_rows.append(i)
        index.append(p)
    index = torch.as_tensor(index, dtype=torch.long)
    pictures = ds.select(picture_rows).select_columns(["image"]).cast_column("image", datasets.Image(decode=False))

    def make():
        from PIL import Image
        from tqdm import tqdm
        images = torch.empty((len(pictures), 3, IMAGE_SIZE, IMAGE_SIZE), dtype=torch.uint8)
        with ThreadPoolExecutor(_workers()) as pool:  # bytes read here, decoded in threads
            for start in tqdm(range(0, len(pictures), 512), desc=f"decoding snli-ve {split} pictures",
                              leave=False, mininterval=2):
                cells = pictures[start:start + 512]["image"]

                def work(j):
                    data = cells[j].get("bytes")
                    img = Image.open(io.BytesIO(data)) if data is not None else Image.open(cells[j]["path"])
                    images[start + j] = square_uint8(img, IMAGE_SIZE)

                list(pool.map(work, range(len(cells))))
        return {"images": images}

    images = _decoded_cache(root, f"snli-ve-{split}-{IMAGE_SIZE}px", len(pictures), make)["images"]
    keep = labels >= 0
    if not bool(keep.all()):
        index, labels = index[keep], labels[keep]
        texts = [t for t, k in zip(texts, keep.tolist()) if k]
    from aft.inputs import ImageText
    return Split(ImageText(images, index, texts), labels)


@register_dataset("snli-ve")
def snli_ve(data_dir):
    """SNLI-VE (Flickr30k pictures + SNLI hypotheses; entailment / neutral / contradiction), the
    hub copies the paper code loaded. An image model reads the pictures, a text model the hypotheses,
    CLIP both."""
    root = data_root(data_dir)
    return Task("snli-ve", "image_text", 3, _snli_ve_split("train", root), _snli_ve_split("test", root),
                class_names=SNLI_VE_CLASSES)
