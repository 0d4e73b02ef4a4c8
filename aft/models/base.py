"""What every model family shares: the spec a name resolves to, the downstream classifier, and the
one-line errors for weights that are not available offline."""
from dataclasses import dataclass
from typing import Callable

import torch.nn as nn

from aft.errors import UserError
from aft.product import ProductLinear


@dataclass
class ModelSpec:
    name: str
    modality: str  # "text", "image", or "image_text" (a two-tower model: CLIP)
    # build(pretrained: bool, dtype=None, num_classes=0) -> (body, d) for a feature extractor, body being
    # an nn.Module mapping a batch to (B, d) features; with num_classes > 0, (body, head) of a downstream
    # model: the architecture built for that many classes, as its library builds it, split at the last
    # linear layer of its classifier (head: an nn.Linear; CLIP's, linear in a product, an
    # aft.product.ProductLinear), body giving that layer's input (phi).
    # `dtype` (e.g. torch.bfloat16) loads the weights in that precision: large extractors on CUDA.
    build: Callable
    make_inputs: Callable  # make_inputs(split_inputs, task, image_size) -> TextInputs | ImageInputs | PairInputs
    # build also takes device_map="auto": the model spread over the GPUs by accelerate (Hugging Face models)
    takes_device_map: bool = False
    # image_preprocess(image_size) -> dict(size, mean, std, crop_pct, interpolation): the eval transform of
    # a model that reads pictures, at input size `image_size` (None: its own); None for a text model
    image_preprocess: Callable = None
    downstream_only: str = ""  # why the model cannot be a pre-trained model, when it cannot (CLIP)
    # describe_features() -> what the model's features are, in words, where earlier versions of this tool
    # computed them otherwise (sentence-transformers models, once pooled by their family's head): a cache
    # records it and is refused when it records another, or none (aft.features.read_features)
    describe_features: Callable = None
    # least_pixels() -> the side of the pixels its first layer takes at a time (its patches or strides): the
    # smallest input it can read; None where it is not known
    least_pixels: Callable = None
    # "hf": a Hugging Face model, which the paper's code builds from pre-trained weights even as a student
    # trained from random ones (--paper_exact does too)
    family: str = ""

    @property
    def product_factors(self):
        """The modalities of the factors of this model's features when they are a tensor product kept
        factored (CLIP's image (x) text), in order; None for a model with plain features."""
        return ["image", "text"] if self.modality == "image_text" else None

    def pixels(self, image_size=None):
        """The side this model's eval transform resizes pictures to (input size / crop fraction), the
        size to decode pictures at for it; None for a model that reads no pictures."""
        if self.image_preprocess is None:
            return None
        from aft.inputs import resized_side
        p = self.image_preprocess(image_size)
        return resized_side(p["size"], p["crop_pct"])

    def accepts(self, task_modality):
        """A single-modality model also reads its part of an image + text task (SNLI-VE's pictures or
        hypotheses), as the paper's pre-trained models did."""
        return self.modality == task_modality or (task_modality == "image_text" and self.modality in ("image", "text"))


def check_modality(spec, task):
    if not spec.accepts(task.modality):
        raise UserError(f"model {spec.name} takes {spec.modality} but dataset {task.name} is {task.modality}")


class Classifier(nn.Module):
    """A downstream model: forward(inputs) -> (logits, phi), phi being the input of `head`, the last
    linear layer of the architecture's classifier (for CLIP, a layer linear in its product phi)."""

    def __init__(self, body, head):
        super().__init__()
        self.body, self.head = body, head

    @property
    def phi_dims(self):
        """The width of phi, or the widths of its factors when phi is a product (aft.product)."""
        return self.head.dims if isinstance(self.head, ProductLinear) else self.head.in_features

    def forward(self, inputs):
        phi = self.body(inputs)
        return self.head(phi), phi


def offline_error(what, reason, elsewhere="", note=""):
    """One line for weights that cannot be loaded: what failed and why, where they must be offline (the
    Hugging Face cache; `elsewhere` adds the family's other places) and how to go online."""
    from huggingface_hub.constants import HF_HUB_CACHE
    return UserError(f"cannot load {what} ({reason}); offline the files must be in the Hugging Face cache "
                     f"{HF_HUB_CACHE} (set HF_HOME or HF_HUB_CACHE){elsewhere}; with a network unset "
                     f"HF_HUB_OFFLINE{note}")


# The safetensors file a loader reads in place of a .bin one when the repo has it.
SAFETENSORS_TWINS = {"pytorch_model.bin": "model.safetensors",
                     "open_clip_pytorch_model.bin": "open_clip_model.safetensors"}


def uncached_hub_file(repo, filename):
    """Offline, "repo/filename" when neither that file nor its safetensors twin is in the hub cache; else
    None (online the hub fetches it). Checked before a model is built, so that a missing file is said
    at once, not after building a billion random weights."""
    from huggingface_hub import constants, try_to_load_from_cache
    if not constants.HF_HUB_OFFLINE:
        return None
    twin = SAFETENSORS_TWINS.get(filename) or (filename[:-4] + ".safetensors" if filename.endswith(".bin") else None)
    if any(isinstance(try_to_load_from_cache(repo, f), str) for f in (filename, twin) if f):
        return None
    return f"{repo}/{filename}"


def image_inputs(raw, task, size, mean, std, **preprocess):
    """The pictures of `raw` (an image task's, or those of an image + text task), decoded once, for a
    model that takes `size` pixels normalised by `mean` and `std` (`preprocess`: crop and interpolation:
    a ModelSpec's image_preprocess). Pictures decoded to exactly this model's input (task.model_ready,
    --paper_exact) are only normalised."""
    from aft.inputs import ImageInputs, image_part
    images, index = image_part(raw)
    if task is not None and task.model_ready:  # (task None: pictures given without their set)
        preprocess = dict(preprocess, crop_pct=1.0)
    return ImageInputs(images, size, mean, std, index=index, **preprocess)
