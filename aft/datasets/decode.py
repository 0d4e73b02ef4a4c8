"""Where the data lives, and the image decoding the image families share.

The data folder: `--data_dir`, else `$AFT_DATA_DIR`, else `~/data` (the paper code's root). Offline
(`HF_HUB_OFFLINE`, `HF_DATASETS_OFFLINE` or `TRANSFORMERS_OFFLINE` set) nothing is downloaded and a
missing set is one line naming what to download and where to put it.

Images of varying size (flowers, pets, aircraft, dtd, food, SNLI-VE) are decoded once: the shorter
side resized to the decode size (bicubic, antialiased), then the central square of that side. The
decode size is the largest that a model of the run resizes pictures to in its eval transform (its
input size / its crop fraction: 518 px for DINOv2 ViT-G/14, 248 for ViT-S/16 at 224 and crop 0.9), so
that model sees the picture resized once from the original, as timm's transform does, and no model
sees an upsampled copy; `AFT_IMAGE_SIZE` overrides it, and DEFAULT_DECODE_SIZE serves a load that
feeds no model (logme.py reads only labels). Each model then resizes that square on the device to its
own size, crop fraction, interpolation, mean and std (timm's eval transform applied to the square).
The decoded pictures are kept on disk (aft.store) in `{data folder}/aft-decoded/`
(`$AFT_DECODED_DIR` instead, when set), one file per split and decode size, so later runs skip
decoding and a set larger than memory is read a batch at a time (delete the folder after changing a
registered dataset's files; your own data's files are fingerprinted).
"""
import io
import os

import numpy as np
import torch

from aft.store import open_store, write_store
from aft.errors import UserError

DEFAULT_DECODE_SIZE = 256  # side of the decoded squares when no model of the run says what it needs
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")


def data_root(data_dir=None):
    return os.path.abspath(os.path.expanduser(data_dir or os.environ.get("AFT_DATA_DIR") or "~/data"))


def offline():
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on") for v in OFFLINE_VARIABLES)


def offline_reason():
    """The variables that make this run offline, as `NAME=value` for an error message."""
    return ", ".join(f"{v}={os.environ[v]}" for v in OFFLINE_VARIABLES if os.environ.get(v))


def workers():
    """Decoding threads: the cores this process may use, at most 32."""
    try:
        return max(1, min(32, len(os.sched_getaffinity(0))))
    except AttributeError:  # no sched_getaffinity (macOS)
        return max(1, min(32, os.cpu_count() or 1))


def decode_size(model_sizes=()):
    """Side of the decoded squares: $AFT_IMAGE_SIZE when set, else the largest of `model_sizes` (the
    sides the run's image models resize pictures to), else DEFAULT_DECODE_SIZE."""
    override = os.environ.get("AFT_IMAGE_SIZE", "").strip()
    if override:
        if not override.isdigit() or int(override) == 0:
            raise UserError(f"AFT_IMAGE_SIZE={override} must be a whole number of pixels > 0; unset it to decode at "
                            f"the size the run's models need")
        return int(override)
    return max([s for s in model_sizes if s] or [DEFAULT_DECODE_SIZE])


def square_uint8(img, size):
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


def open_picture(cell):
    """A PIL image from a Hugging Face image cell (its bytes, or a path), or from a path."""
    from PIL import Image
    if isinstance(cell, dict):
        return Image.open(io.BytesIO(cell["bytes"])) if cell.get("bytes") is not None else Image.open(cell["path"])
    return Image.open(cell)


def decoded_folder(root):
    """Where decoded pictures are kept: $AFT_DECODED_DIR, else {data folder}/aft-decoded."""
    return os.path.abspath(os.path.expanduser(os.environ.get("AFT_DECODED_DIR") or os.path.join(root, "aft-decoded")))


def decoded_store(root, key, n, get, size, desc):
    """The n pictures get(i) -> (uint8 (3, size, size), label) decodes, kept on disk under `key`
    (aft.store): decoded once, in threads (PIL decodes and resizes without holding the GIL),
    read back on later runs. Returns (DiskImages, labels, info); info["bad"] lists the rows whose
    picture could not be read, as [row, reason]."""
    return open_store(decoded_folder(root), key, n) or write_store(decoded_folder(root), key, n, size, get, workers(),
                                                                   desc=f"decoding {desc}")
