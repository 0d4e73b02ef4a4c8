"""Models by name, for both roles: a downstream model (features phi plus a task head) and a feature
extractor (features psi). As in the paper's code, a downstream model is the architecture its library
builds for the task's classes, its head the last linear layer of that classifier and phi that layer's
input; psi is the input of the whole classifier (the two differ where the classifier has more layers:
RoBERTa's and T5's dense + tanh). A sentence-transformers model's features are its sentence embedding.

One module a family: `hf` (Hugging Face text models), `tiny_bert`, `timm_models`, `efficientnet_lite`
and `clip`, all built on `base`. Every resolved model knows how its inputs are preprocessed (a
tokenizer, or the image size, crop, interpolation, mean and std of its own timm data config), so
aft.inputs does that once. Offline, a model whose weights are not cached is one line naming the file,
the cache and the variables, before anything large is built; a process that finds the hub
unreachable goes offline before its first download (`hub`), so that line comes at once.

Names resolve in one place, `resolve_model`, through the registry `MODELS`: an embedded name, else the
first of these rules that matches, in this order, after an alias is replaced by its name (`ALIASES`):

  1. an embedded model (`EMBEDDED`: all-MiniLM-L6-v2, tiny_bert, efficientnet_lite2, CLIP) -> itself;
     `none` (the paper's STL row, no pre-trained model) -> an error saying what to pass instead
  2. `timm:NAME` -> timm, NAME being a timm name or a folder saved by timm; `hf-hub:ID` and
     `local-dir:FOLDER` -> timm, which reads those two prefixes itself
  3. `hf:NAME` -> Hugging Face, NAME being a hub id or a folder saved by transformers
  4. an existing local folder -> timm when its config.json names an `architecture` and no
     `model_type` (timm's save_for_hf), else Hugging Face
  5. a timm registry name, with or without a pretrained tag (`resnet50`, `resnet50.a1_in1k`) -> timm
  6. an `org/name` id, or a name that starts with a Hugging Face family prefix (`HF_PREFIXES`:
     gpt2, bert-, distilbert-, ...) -> Hugging Face
  anything else -> one error listing the valid names.

The prefixes of rules 2 and 3 let a user force the family of a name that the later rules would give
to the other one (a hub id that is a timm model, a folder whose config looks like the other's).
"""
import os

from aft.errors import UserError
from aft.models.base import Classifier, check_modality
from aft.models.clip import clip_spec
from aft.models.efficientnet_lite import efficientnet_lite2_spec
from aft.models.hf import hf_spec, load_tokenizer, minilm_path
from aft.models.timm_models import TIMM_SOURCES, is_timm_folder, is_timm_name, timm_spec
from aft.models.tiny_bert import tiny_bert_spec
from aft.registry import Registry

__all__ = ["ALIASES", "Classifier", "EMBEDDED", "HF_PREFIXES", "MODELS", "PAPER_MODELS",
           "build_classifier", "check_modality", "create_classifier", "load_tokenizer", "minilm_path", "resolve_model"]

EMBEDDED = {
    "all-MiniLM-L6-v2": lambda name: hf_spec(name, minilm_path()),
    "tiny_bert": tiny_bert_spec,
    "efficientnet_lite2": efficientnet_lite2_spec,
    "CLIP": clip_spec,
}
ALIASES = {"sentence-transformers/all-MiniLM-L6-v2": "all-MiniLM-L6-v2"}

# The model table of the paper's README (name in the paper: name here). Any other timm name, Hugging
# Face id or local folder works too.
PAPER_MODELS = {
    "ResNet-50": "resnet50.a1_in1k", "Mixer-B": "mixer_b16_224.goog_in21k_ft_in1k",
    "ViT-S": "vit_small_patch16_224.augreg_in1k", "ViT-L DINO": "vit_large_patch14_dinov2.lvd142m",
    "ViT-G CLIP": "vit_giant_patch14_clip_224.laion2b", "ViT-G DINO": "vit_giant_patch14_dinov2.lvd142m",
    "ViT-L CLIP": "vit_large_patch14_clip_224.laion2b", "ViT-H CLIP": "vit_huge_patch14_clip_224.laion2b",
    "ViT-S DINO": "vit_small_patch14_dinov2.lvd142m", "ViT-B DINO": "vit_base_patch14_dinov2.lvd142m",
    "BiT 50x1": "resnetv2_50x1_bit.goog_in21k", "BiT 50x3": "resnetv2_50x3_bit.goog_in21k",
    "BiT 101x1": "resnetv2_101x1_bit.goog_in21k", "BiT 101x3": "resnetv2_101x3_bit.goog_in21k",
    "BiT 152x2": "resnetv2_152x2_bit.goog_in21k", "BiT 152x4": "resnetv2_152x4_bit.goog_in21k",
    "FlanT5-S": "google/flan-t5-small", "FlanT5-B": "google/flan-t5-base", "FlanT5-L": "google/flan-t5-large",
    "GPT-2 S": "gpt2", "GPT-2 M": "gpt2-medium", "GPT-2 L": "gpt2-large", "GPT-2 XL": "gpt2-xl",
    "BERT Small": "prajjwal1/bert-small", "DistilBERT": "distilbert-base-uncased",
    "LLaMA 7B": "meta-llama/Llama-2-7b-hf", "LLaMA Chat 7B": "meta-llama/Llama-2-7b-chat-hf",
    "CLIP ResNet50 for SNLI-VE": "CLIP",
}

# Hub ids without an org that name Hugging Face families (the hub's oldest models: gpt2, bert-base-uncased, ...).
HF_PREFIXES = ("gpt2", "bert-", "distilbert-", "roberta-", "t5-", "distilgpt2", "albert-", "xlnet-", "xlm-roberta-")


def _no_model(name):
    raise UserError("model 'none' (the paper's STL row) means no pre-trained features: use --method=init "
                    "and leave --pretrained_models empty")


def _timm_name_or_folder(name):
    return timm_spec(name, f"local-dir:{name}") if os.path.isdir(name) else timm_spec(name)


def _forced_timm(name):
    name = name[len("timm:"):]
    if not (name.startswith(TIMM_SOURCES) or os.path.isdir(name) or is_timm_name(name)):
        raise UserError(f"unknown timm model {name!r}; valid: a name of timm.list_models() (with or without a "
                        f"pretrained tag), hf-hub:ID, local-dir:FOLDER or a folder saved by timm")
    return _timm_name_or_folder(name)


def _timm_names():
    import timm
    return timm.list_models()


# Each entry makes a model's spec from its name: the embedded models by name; any other name goes
# through the family rules (the module docstring's numbers), tried in order.
MODELS = Registry(
    "model",
    rules=[
        (lambda name: name.lower() == "none", _no_model),  # 1
        (lambda name: name.startswith("timm:"), _forced_timm),  # 2
        (lambda name: name.startswith(TIMM_SOURCES), timm_spec),  # 2
        (lambda name: name.startswith("hf:"), lambda name: hf_spec(name[len("hf:"):])),  # 3
        (lambda name: os.path.isdir(name) and is_timm_folder(name), _timm_name_or_folder),  # 4
        (os.path.isdir, hf_spec),  # 4
        # 5: no timm name holds a '/', so hub ids skip importing timm
        (lambda name: "/" not in name and is_timm_name(name), timm_spec),
        (lambda name: "/" in name or name.startswith(HF_PREFIXES), hf_spec),  # 6
    ],
    valid="the embedded models " + ", ".join(EMBEDDED) + "; a timm name (timm.list_models(); README's Models lists "
          "the paper's), a Hugging Face id (org/name) or a local model folder; a prefix timm: or hf: forces the family",
    more_names=lambda: list(PAPER_MODELS.values()) + _timm_names())
for _name, _make in EMBEDDED.items():  # 1
    MODELS.register(_name, _make)


def resolve_model(name):
    """The spec of model `name`: an embedded one, else by the first family rule that matches (see the
    module docstring)."""
    name = os.path.expanduser(ALIASES.get(name, name))  # a folder given as ~/models/m (not expanded after --flag=)
    return MODELS.get(name)(name)


def build_classifier(spec, num_classes, pretrained):
    """The downstream model of `spec`, built for `num_classes` as its library builds it; its head is the
    last linear layer of the architecture's classifier (pretrained: every other layer is loaded)."""
    body, head = spec.build(pretrained, num_classes=num_classes)
    return Classifier(body, head)


def create_classifier(name, num_classes, pretrained):
    """build_classifier of model `name`; returns the model and its spec."""
    spec = resolve_model(name)
    return build_classifier(spec, num_classes, pretrained), spec
