"""`CLIP`: the paper's CLIP ResNet-50 for SNLI-VE, through open_clip (pip install open-clip-torch):
timm has only its image tower (resnet50_clip.openai) and transformers no CLIP ResNet at all, while
open_clip holds both towers and OpenAI's weights. Its feature is the outer product of its image and
text embeddings (1024 x 1024), as in the paper's code, kept as its two factors (aft.product): its head
is linear in the product, and the methods read the product from the factors, so the 1,048,576-wide
rows are never written out. For the same reason it is a downstream model only: as a pre-trained
model its features would be far too large to cache."""
import torch
import torch.nn as nn

from aft.errors import UserError, first_line
from aft.models.base import ModelSpec, image_inputs, offline_error, uncached_hub_file
from aft.models.hub import check_hub
from aft.product import Product, ProductLinear

CLIP_ARCH = "RN50"  # OpenAI's CLIP ResNet-50, the paper's `CLIP` (its code: clip.load("RN50"))
CLIP_DIM = 1024  # width of its image and of its text embedding


class CLIPPairFeatures(nn.Module):
    """The paper's CLIP model for SNLI-VE: its feature is the outer product of the image embedding
    and the text embedding of the hypothesis, 1024 x 1024 = 1,048,576 numbers, as an aft.product.Product
    of the two embeddings."""

    def __init__(self, clip):
        super().__init__()
        self.clip = clip

    def forward(self, x):
        return Product([self.clip.encode_image(x["image"]), self.clip.encode_text(x["text"])])


def _import_open_clip(name):
    try:
        import open_clip
    except ImportError:
        raise UserError(f"model {name} (OpenAI CLIP ResNet-50, image and text towers) needs the package "
                        f"open-clip-torch: pip install open-clip-torch") from None
    return open_clip


def clip_spec(name):
    """CLIP ResNet-50 with both towers and OpenAI's weights; its inputs are image + text pairs."""

    downstream_only = (f"{name} can only be the downstream model (--model_class={name}): its feature is a "
                       f"{CLIP_DIM * CLIP_DIM:,}-wide outer product, far too large to cache as a pre-trained model's; "
                       f"give an image model and a text model as --pretrained_models instead")

    def build(pretrained, dtype=None, num_classes=0):
        if not num_classes:
            raise UserError(downstream_only)
        open_clip = _import_open_clip(name)
        if pretrained:
            check_hub()
            repo = (open_clip.get_pretrained_cfg(CLIP_ARCH, "openai").get("hf_hub") or "").strip("/")
            absent = repo and uncached_hub_file(repo, "open_clip_pytorch_model.bin")
            if absent:
                raise offline_error("CLIP ResNet-50 weights", f"{absent} is not in the cache")
            try:
                model = open_clip.create_model(CLIP_ARCH, pretrained="openai", force_quick_gelu=True,
                                               require_pretrained=True)
            except Exception as e:  # hub / download errors of several types
                source = f"; open_clip fetches them from the hub repo {repo}" if repo else ""
                raise offline_error("CLIP ResNet-50 weights", first_line(e) + source) from e
        else:
            model = open_clip.create_model(CLIP_ARCH, force_quick_gelu=True)
        if dtype is not None:
            model = model.to(dtype)
        # The pair features never use CLIP's logit scale: frozen, since data-parallel training needs a
        # gradient for every trained parameter.
        model.logit_scale.requires_grad_(False)
        # The paper's CLIP classifier: one linear layer on the outer product, initialised as nn.Linear.
        return CLIPPairFeatures(model), ProductLinear([CLIP_DIM, CLIP_DIM], num_classes)

    def preprocess(image_size=None):
        open_clip = _import_open_clip(name)
        return dict(size=image_size or 224, mean=open_clip.OPENAI_DATASET_MEAN, std=open_clip.OPENAI_DATASET_STD,
                    crop_pct=1.0, interpolation="bicubic")

    def make_inputs(raw, task, image_size=None):
        from aft.inputs import ImageText, PairInputs
        if not isinstance(raw, ImageText):
            raise UserError(f"model {name} takes image + text pairs (snli-ve), not dataset {task.name}")
        open_clip = _import_open_clip(name)
        ids = open_clip.get_tokenizer(CLIP_ARCH)(raw.texts).to(torch.int32)  # (N, 77), truncated like CLIP
        return PairInputs(image_inputs(raw, task, **preprocess(image_size)), ids)

    return ModelSpec(name, "image_text", build, make_inputs, image_preprocess=preprocess,
                     downstream_only=downstream_only)
