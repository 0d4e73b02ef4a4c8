"""Where the data lives, and the image decoding the image families share.

The data folder: `--data_dir`, else `$AFT_DATA_DIR`, else `~/data` (the paper code's root). Offline
(`HF_HUB_OFFLINE`, `HF_DATASETS_OFFLINE` or `TRANSFORMERS_OFFLINE` set) nothing is downloaded and a
missing set is one line naming what to download and where to put it.

Images of varying size (flowers, pets, aircraft, dtd, food, SNLI-VE, your own) are decoded once per
model that reads them: the shorter side resized to the model's decode side (bicubic, antialiased; the
longer side truncated to a whole pixel, as torchvision's Resize in timm's eval transform), then the
central square. The decode side is the side the model's eval transform resizes pictures to (its input
size / its crop fraction: 248 for ViT-S/16 at 224 and crop 0.9, 518 for DINOv2 ViT-G/14), so each
model sees the picture resized once from the original, as timm's transform does, and the pixels a
model reads depend on that model alone, never on which other models' features are cached.
`AFT_IMAGE_SIZE` overrides the side, and DEFAULT_DECODE_SIZE serves a load that feeds no model
(logme.py reads only labels). Each model then resizes its square on the device to its own size, crop
fraction, interpolation, mean and std (timm's eval transform applied to the square). Under
--paper_exact each picture goes through timm's own eval transform instead (Decoding.timm), straight to
the model's input. The decoded pictures are kept on disk (aft.store) in `{data folder}/aft-decoded/`
(`$AFT_DECODED_DIR` instead, when set), one file per split and decoding, so later runs skip decoding
and a set larger than memory is read a batch at a time (delete the folder after changing a registered
dataset's files; your own data's files are fingerprinted).
"""
import functools
import io
import os
from dataclasses import dataclass

import numpy as np
import torch

from aft.store import open_store, write_store
from aft.errors import UserError

DEFAULT_DECODE_SIZE = 256  # side of the decoded squares when no model of the run says what it needs
SQUARE_GEOMETRY = "shorter side bicubic, longer truncated, central square"  # square_uint8's
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


def decode_size(side=None):
    """Side of the decoded squares: $AFT_IMAGE_SIZE when set, else `side` (the side a model resizes
    pictures to), else DEFAULT_DECODE_SIZE."""
    override = os.environ.get("AFT_IMAGE_SIZE", "").strip()
    if override:
        if not override.isdigit() or int(override) == 0:
            raise UserError(f"AFT_IMAGE_SIZE={override} must be a whole number of pixels > 0; unset it to decode at "
                            f"the size the run's models need")
        return int(override)
    return side or DEFAULT_DECODE_SIZE


@dataclass(frozen=True)
class Decoding:
    """How each picture of varying size is decoded, once, for a model: to the square of side `side`
    (square_uint8), which the model's eval transform then resizes and crops on the device; or, for
    --paper_exact (`timm` set: the model's input size, crop fraction and interpolation), through timm's
    own eval transform on the picture (PIL's resize and the central crop), to exactly the crop the
    model reads, as the paper's code computes it."""
    side: int
    timm: tuple = None  # (size, crop_pct, interpolation)

    @property
    def key(self):
        """The decoding in the names of decoded-picture files."""
        return f"{self.side}px" if self.timm is None else f"timm-{self.timm[0]}-{self.timm[1]:g}-{self.timm[2]}"

    @property
    def geometry(self):
        """How the pictures were resized and cropped, kept with them: decoded pictures are reused only
        when made the same way."""
        return SQUARE_GEOMETRY if self.timm is None else "timm eval transform"

    @property
    def model_ready(self):
        """Whether the pictures come out as the model's input (no resize or crop left to do)."""
        return self.timm is not None

    def __call__(self, img):
        """A PIL image as its (3, side, side) uint8 tensor."""
        if self.timm is None:
            return square_uint8(img, self.side)
        return timm_eval_pil(*self.timm)(img.convert("RGB"))


@functools.lru_cache(maxsize=None)
def timm_eval_pil(size, crop_pct, interpolation):
    """timm's eval transform up to its crop (PIL resize of the shorter side, central crop), as a uint8
    C x H x W tensor: create_transform(is_training=False) without its ToTensor and Normalize."""
    from timm.data import transforms_factory
    return transforms_factory.transforms_imagenet_eval(img_size=size, crop_pct=crop_pct, interpolation=interpolation,
                                                       use_prefetcher=True)


def decoding_for(spec, image_size, paper_exact):
    """How pictures are decoded for model `spec` at input size `image_size` (0: its own): squares at its
    side (AFT_IMAGE_SIZE overrides it), or, under --paper_exact, exactly its input through timm's eval
    transform."""
    if spec.image_preprocess is None:  # reads no pictures
        return decode_size()
    side = decode_size(spec.pixels(image_size or None))
    if not paper_exact:
        return side
    p = spec.image_preprocess(image_size or None)
    return Decoding(p["size"], timm=(p["size"], p["crop_pct"], p["interpolation"]))


def as_decoding(decode):
    """A Decoding from a side (an int) or a Decoding."""
    return decode if isinstance(decode, Decoding) else Decoding(int(decode or 0))


def square_uint8(img, size):
    """A PIL image as a (3, size, size) uint8 tensor: shorter side to `size` (bicubic, which PIL
    antialiases when shrinking; the longer side truncated to a whole pixel, as torchvision's Resize,
    timm's eval transform, does), then the central square."""
    from PIL import Image
    img = img.convert("RGB")
    w, h = img.size
    short, long = min(w, h), max(w, h)
    long = int(size * long / short)
    nw, nh = (size, long) if w <= h else (long, size)
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


def decoded_store(root, key, n, get, decoding, desc):
    """The n pictures get(i) -> (uint8 (3, side, side), label) decodes with `decoding`, kept on disk
    under `key` (aft.store): decoded once, in threads (PIL decodes and resizes without holding the GIL),
    read back on later runs; pictures decoded with another geometry (an earlier version's) are decoded
    anew. Returns (DiskImages, labels, info); info["bad"] lists the rows whose picture could not be
    read, as [row, reason]."""
    extra = {"geometry": decoding.geometry}
    return open_store(decoded_folder(root), key, n, extra) or write_store(
        decoded_folder(root), key, n, decoding.side, get, workers(), desc=f"decoding {desc}", extra=extra)
