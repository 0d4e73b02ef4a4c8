"""Feature extraction: a pre-trained model over a dataset's train and test splits into the cache.

Used by save_features.py and by run.py when a cache is missing, so both produce the same file.
Texts are processed in order of length, so each batch is padded only to its own longest text.
"""
import time

import torch
from tqdm import tqdm

from aft.features import make_meta, write_features
from aft.models import resolve_model
from aft.runtime import autocast, resolve_precision


def batches_for_extraction(inputs, batch_size):
    """Index batches covering every row once; text sorted by length (longest first)."""
    n = len(inputs)
    order = torch.argsort(inputs.lengths, descending=True, stable=True) if hasattr(inputs, "lengths") \
        else torch.arange(n)
    return list(order.split(batch_size))


@torch.inference_mode()
def compute_features(body, inputs, batch_size, device, precision, desc="features"):
    batches = batches_for_extraction(inputs, batch_size)
    widths = inputs.widths(batches)
    out = None
    for idx, width in zip(tqdm(batches, desc=desc, leave=False, mininterval=2), widths):
        with autocast(device, precision):
            feats = body(inputs.batch(idx.to(device), width))
        if out is None:
            out = torch.empty((len(inputs), feats.shape[1]), dtype=torch.float32)
        out[idx] = feats.float().cpu()
    return out


def extract_to_cache(model_name, task, path, batch_size, device, precision="auto", image_size=None):
    """Compute `model_name`'s features of `task` and write them atomically to `path`. Returns the cache."""
    spec = resolve_model(model_name)
    if spec.modality != task.modality:
        from aft.errors import UserError
        raise UserError(f"model {model_name} takes {spec.modality} but dataset {task.name} is {task.modality}")
    precision = resolve_precision(precision, device)
    start = time.time()
    body, dim = spec.build(pretrained=True)
    body = body.to(device).eval()
    if precision == "bf16":
        body = body.to(torch.bfloat16)
    if device.type == "cuda" and spec.modality == "image":
        body = body.to(memory_format=torch.channels_last)
    feats = {}
    for split in ("train", "test"):
        inputs = spec.make_inputs(getattr(task, split).inputs, task, image_size).to(device)
        feats[split] = compute_features(body, inputs, batch_size, device, precision,
                                        desc=f"{model_name} {task.name} {split}")
    meta = make_meta(model_name, task.name, feats["train"], feats["test"], precision=precision,
                     device=device.type, image_size=image_size or 0, seconds=round(time.time() - start, 1))
    write_features(path, feats["train"], feats["test"], meta)
    return {"train": feats["train"], "test": feats["test"], "meta": meta}
