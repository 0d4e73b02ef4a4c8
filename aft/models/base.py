"""What every model family shares: the spec a name resolves to, the downstream classifier, and the
one-line errors for weights that are not available offline."""
from dataclasses import dataclass
from typing import Callable

import torch.nn as nn

from aft.errors import UserError


@dataclass
class ModelSpec:
    name: str
    modality: str  # "text", "image", or "image_text" (a two-tower model: CLIP)
    # build(pretrained: bool, dtype=None) -> (body: nn.Module mapping a batch to (B, d) features, d).
    # `dtype` (e.g. torch.bfloat16) loads the weights in that precision: large extractors on CUDA.
    build: Callable
    make_inputs: Callable  # make_inputs(split_inputs, task, image_size) -> TextInputs | ImageInputs | PairInputs
    # build also takes device_map="auto": the model spread over the GPUs by accelerate (Hugging Face models)
    takes_device_map: bool = False

    def accepts(self, task_modality):
        """A single-modality model also reads its part of an image + text task (SNLI-VE's pictures or
        hypotheses), as the paper's pre-trained models did."""
        return self.modality == task_modality or (task_modality == "image_text" and self.modality in ("image", "text"))


def check_modality(spec, task):
    if not spec.accepts(task.modality):
        raise UserError(f"model {spec.name} takes {spec.modality} but dataset {task.name} is {task.modality}")


class Classifier(nn.Module):
    """A downstream model: forward(inputs) -> (logits, phi), phi being the head's input."""

    def __init__(self, body, feature_dim, num_classes):
        super().__init__()
        self.body = body
        self.head = nn.Linear(feature_dim, num_classes)

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


def image_inputs(raw, size, mean, std, **preprocess):
    """The pictures of `raw` (an image task's, or those of an image + text task), decoded once, for a
    model that takes `size` pixels normalised by `mean` and `std` (`preprocess`: crop and interpolation)."""
    from aft.inputs import ImageInputs, image_part
    images, index = image_part(raw)
    return ImageInputs(images, size, mean, std, index=index, **preprocess)
