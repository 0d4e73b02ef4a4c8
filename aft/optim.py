"""The optimizer and the learning-rate schedule every trainer uses."""
import math

import torch


def make_optimizer(groups, optimizer, lr, wd, device):
    """Adam or SGD (momentum 0.9) over parameter groups; groups without their own lr/wd take `lr`, `wd`."""
    fused = {"fused": True} if device.type == "cuda" else {}
    if optimizer == "adam":
        return torch.optim.Adam(groups, lr=lr, weight_decay=wd, **fused)
    return torch.optim.SGD(groups, lr=lr, momentum=0.9, weight_decay=wd, **fused)


def cosine_schedule(optimizer, steps):
    """Cosine from each group's lr to 0 over `steps` steps, stepped every step."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
