"""SNLI-VE: Flickr30k pictures paired with SNLI hypotheses (entailment / neutral / contradiction),
from the Hugging Face copies the paper code loaded."""
import torch

from aft.datasets.base import Split, Task, register_dataset
from aft.datasets.decode import data_root, decoded_store, open_picture
from aft.datasets.hf_text import hf_labels, hf_split
from aft.errors import UserError
from aft.inputs import ImageText

SNLI_VE = {"train": "Multimodal-Fatima/SNLI-VE_train", "test": "Multimodal-Fatima/SNLI-VE_test"}
SNLI_VE_CLASSES = ["entailment", "neutral", "contradiction"]


def _snli_ve_split(split, root, decoding):
    """Rows (picture, hypothesis, label) in the hub's order; each Flickr30k picture is decoded once,
    however many hypotheses it has (about 17 per picture)."""
    import datasets
    ds = hf_split("snli-ve", SNLI_VE[split], None, split, root)
    key = next((c for c in ("filename", "id_image") if c in ds.column_names), None)
    rows = ds.select_columns([c for c in (key, "hypothesis", "label") if c])
    texts, labels = rows["hypothesis"], hf_labels(rows)
    first, index, picture_rows = {}, [], []  # picture key -> number; row -> picture; picture -> first row
    for i, k in enumerate(rows[key] if key else range(len(texts))):
        p = first.get(k)
        if p is None:
            p = first[k] = len(picture_rows)
            picture_rows.append(i)
        index.append(p)
    index = torch.as_tensor(index, dtype=torch.long)
    pictures = ds.select(picture_rows).select_columns(["image"]).cast_column("image", datasets.Image(decode=False))

    images, _, info = decoded_store(root, f"snli-ve-{split}-{decoding.key}", len(pictures),
                                    lambda i: (decoding(open_picture(pictures[i]["image"])), 0), decoding,
                                    f"snli-ve {split} pictures at {decoding.key}")
    if info["bad"]:
        row, reason = info["bad"][0]
        raise UserError(f"snli-ve {split}: picture {row} cannot be read ({reason}); download the dataset again, "
                        f"then delete {images.path} and its .json")
    keep = labels >= 0
    if not bool(keep.all()):
        index, labels = index[keep], labels[keep]
        texts = [t for t, k in zip(texts, keep.tolist()) if k]
    return Split(ImageText(images, index, texts), labels,
                 lambda i: open_picture(pictures[int(index[i])]["image"]))


@register_dataset("snli-ve", modality="image_text", decodes=True)
def snli_ve(data_dir, decoding):
    """SNLI-VE, the hub copies the paper code loaded. An image model reads the pictures, a text model
    the hypotheses, CLIP both."""
    root = data_root(data_dir)
    return Task("snli-ve", "image_text", 3, _snli_ve_split("train", root, decoding),
                _snli_ve_split("test", root, decoding), class_names=SNLI_VE_CLASSES, decoded_size=decoding.side)
