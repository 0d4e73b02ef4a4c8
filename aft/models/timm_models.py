"""timm image models: registry names (with or without a `.tag`), `hf-hub:` ids and folders saved by
timm. Preprocessing follows each model's own data config (timm's eval transform)."""
import json
import os

import torch
import torch.nn as nn

from aft.errors import UserError, first_line
from aft.models.base import ModelSpec, image_inputs, offline_error, uncached_hub_file
from aft.models.hub import check_hub

TIMM_SOURCES = ("hf-hub:", "local-dir:")  # prefixes timm.create_model reads itself


class TimmFeatures(nn.Module):
    """A timm model without its classifier (built with num_classes=0, or reset_classifier(0)): its
    output is the pre-logits feature, model.forward_head(model.forward_features(x), pre_logits=True)
    of the full model."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x)


def _folder_config(path):
    """The config.json of a model folder, or None when there is no readable one."""
    try:
        with open(os.path.join(path, "config.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def is_timm_folder(path):
    """A folder saved by timm (save_for_hf): config.json names an `architecture`, not a `model_type`."""
    cfg = _folder_config(path)
    return isinstance(cfg, dict) and "architecture" in cfg and "model_type" not in cfg


def is_timm_name(name):
    """A name in timm's registry, with or without a pretrained tag (`resnet50.a1_in1k`)."""
    import timm
    return timm.is_model(name) or timm.is_model(name.split(".")[0])


def _pretrained_cfg(create_name):
    """The data config (input size, mean, std, crop, interpolation) of a timm name, without building it."""
    import timm
    if create_name.startswith("local-dir:"):
        return (_folder_config(create_name[len("local-dir:"):]) or {}).get("pretrained_cfg") or {}
    cfg = timm.models.get_pretrained_cfg(create_name.removeprefix("hf-hub:"))
    return cfg.to_dict() if cfg is not None else {}


def _uncached_weights(create_name):
    """Offline, the hub file a timm name's weights come from when it is not cached ("repo/file"), else
    None (online, cached, a local folder, or weights from elsewhere: timm itself then decides)."""
    import timm
    if create_name.startswith("local-dir:"):
        return None
    if create_name.startswith("hf-hub:"):
        repo, filename = create_name[len("hf-hub:"):], "pytorch_model.bin"
    else:
        cfg = timm.models.get_pretrained_cfg(create_name)
        if cfg is None or not cfg.hf_hub_id or cfg.file:
            return None
        repo, filename = cfg.hf_hub_id, cfg.hf_hub_filename or "pytorch_model.bin"
    return uncached_hub_file(repo.split("@")[0], filename)


def as_linear(classifier, name):
    """A timm classifier as one nn.Linear: itself, or the equivalent of a 1x1 Conv2d (ResNetV2 / BiT)."""
    if isinstance(classifier, nn.Linear):
        return classifier
    if isinstance(classifier, nn.Conv2d) and classifier.kernel_size == (1, 1) and classifier.groups == 1:
        linear = nn.Linear(classifier.in_channels, classifier.out_channels, bias=classifier.bias is not None)
        with torch.no_grad():
            linear.weight.copy_(classifier.weight.flatten(1))
            if classifier.bias is not None:
                linear.bias.copy_(classifier.bias)
        return linear
    raise UserError(f"timm model {name!r} has a classifier of type {type(classifier).__name__}, not one linear "
                    f"layer, so it cannot be a downstream model here; pick another architecture")


def timm_spec(name, create_name=None):
    """A timm model; `create_name` is what timm.create_model takes (`local-dir:` + a folder), if not `name`."""
    import timm
    create_name = create_name or name
    resolved = {}  # the data config of the built model, when it has been built

    def missing(reason):
        return offline_error(f"timm weights for {name!r}", reason, elsewhere=" or the torch hub cache (TORCH_HOME), "
                             "or pass a folder saved by timm as the model name")

    def build(pretrained, dtype=None, num_classes=0):
        if pretrained:
            check_hub(create_name.removeprefix("local-dir:"))
            absent = _uncached_weights(create_name)
            if absent:
                raise missing(f"{absent} is not in the cache")
        try:
            # As the paper's code: the classifier timm builds (and initialises) for num_classes; timm loads a
            # checkpoint's own only when it has that many classes.
            model = timm.create_model(create_name, pretrained=pretrained, num_classes=num_classes)
        except Exception as e:  # hub errors come in many types; all mean the weights are not here
            if not pretrained:
                raise UserError(f"cannot build timm model {name!r} ({first_line(e)})") from e
            raise missing(first_line(e)) from e
        resolved.update(timm.data.resolve_model_data_config(model))
        if dtype is not None:
            model = model.to(dtype)
        if not num_classes:
            return TimmFeatures(model), getattr(model, "head_hidden_size", None) or model.num_features
        head = as_linear(model.get_classifier(), name)
        model.reset_classifier(0)
        return TimmFeatures(model), head

    def preprocess(image_size=None):
        cfg = resolved or _pretrained_cfg(create_name)
        return dict(size=image_size or (cfg.get("input_size") or (3, 224, 224))[-1],
                    mean=cfg.get("mean") or timm.data.IMAGENET_DEFAULT_MEAN,
                    std=cfg.get("std") or timm.data.IMAGENET_DEFAULT_STD, crop_pct=cfg.get("crop_pct") or 1.0,
                    interpolation=cfg.get("interpolation") or "bicubic")

    def make_inputs(raw, task, image_size=None):
        return image_inputs(raw, task, **preprocess(image_size))

    def least_pixels():
        """The reduction of the model's first feature map: built on the meta device, which costs no memory."""
        try:
            with torch.device("meta"):
                model = timm.create_model(create_name, pretrained=False)
            return int(model.feature_info[0]["reduction"])
        except Exception:  # an architecture without feature_info, or one meta tensors cannot build
            return 0

    return ModelSpec(name, "image", build, make_inputs, image_preprocess=preprocess, least_pixels=least_pixels)
