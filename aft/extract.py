"""Feature extraction: a pre-trained model over a dataset's train and test splits into the cache.

Used by save_features.py and by run.py when a cache is missing, so both produce the same file.
Texts are processed in order of length, so each batch is padded only to its own longest text.
"""
import time

import torch
from tqdm import tqdm

from aft.features import make_meta, write_features
from aft.models import check_modality, resolve_model
from aft.runtime import autocast, resolve_precision, speed_settings


def batches_for_extraction(inputs, batch_size):
    """Index batches covering every row once; text sorted by length (longest first)."""
    n = len(inputs)
    order = torch.argsort(inputs.lengths, descending=True, stable=True) if hasattr(inputs, "lengths") \
        else torch.arange(n)
    return list(order.split(batch_size))


def prepare_body(body, device, precision, modality):
    """A feature extractor ready for compute_features: on the device, in eval mode, in bf16 when
    that is the precision, channels-last for images on CUDA."""
    body = body.to(device).eval()
    if precision == "bf16":
        body = body.to(torch.bfloat16)
    if device.type == "cuda" and modality == "image":
        body = body.to(memory_format=torch.channels_last)
    return body


@torch.inference_mode()
def compute_features(body, inputs, batch_size, device, precision, desc="features"):
    """Features of every row of `inputs`, float32 on the host, in row order.

    The device never waits for the host between batches: the batch order goes to the device once,
    and each batch's features are copied back asynchronously (into pinned memory on CUDA) in batch
    order; the rows are put back in their own order once, at the end.
    """
    batches = batches_for_extraction(inputs, batch_size)
    widths = inputs.widths(batches)
    if not batches:
        return torch.empty((0, 0))
    order = torch.cat(batches)
    device_batches = order.to(device).split(batch_size)
    out, start = None, 0
    for idx, width in zip(tqdm(device_batches, desc=desc, leave=False, mininterval=2), widths):
        with autocast(device, precision):
            feats = body(inputs.batch(idx, width))
        if out is None:
            out = torch.empty((len(inputs), feats.shape[1]), dtype=torch.float32, pin_memory=device.type == "cuda")
        out[start:start + len(idx)].copy_(feats.float(), non_blocking=True)
        start += len(idx)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    result = torch.empty(out.shape, dtype=out.dtype)
    result[order] = out
    return result


def compute_features_adaptive(body, inputs, batch_size, device, precision, desc):
    """compute_features, halving the batch size whenever the GPU runs out of memory; returns the
    features and the batch size that worked (the next split starts from it). Text batches come
    longest first, so an oversized batch fails at once, not after most of the work."""
    while True:
        try:
            return compute_features(body, inputs, batch_size, device, precision, desc=desc), batch_size
        except torch.OutOfMemoryError:
            pass  # leave the except block first, so the failed batch's tensors can be freed
        if batch_size == 1:
            from aft.errors import UserError
            raise UserError(f"{desc}: out of GPU memory even one example at a time on {device}; use "
                            f"--precision=bf16, a smaller --image_size, or a GPU with more memory")
        if device.type == "cuda":
            torch.cuda.empty_cache()
        batch_size = max(1, batch_size // 2)
        print(f"{desc}: out of GPU memory; retrying with batch size {batch_size}", flush=True)


def extract_to_cache(model_name, task, path, batch_size, device, precision="auto", image_size=None):
    """Compute `model_name`'s features of `task` and write them atomically to `path`. Returns the cache."""
    spec = resolve_model(model_name)
    check_modality(spec, task)
    precision = resolve_precision(precision, device)
    start = time.time()
    speed_settings(device, precision)
    # Weights load straight in bf16 when that is the precision: a 7B LM then needs 14 GB, not 28.
    body, dim = spec.build(pretrained=True, dtype=torch.bfloat16 if precision == "bf16" else None)
    body = prepare_body(body, device, precision, spec.modality)
    feats = {}
    for split in ("train", "test"):
        inputs = spec.make_inputs(getattr(task, split).inputs, task, image_size).to(device)
        feats[split], batch_size = compute_features_adaptive(body, inputs, batch_size, device, precision,
                                                             f"{model_name} {task.name} {split}")
    # image_size 0: the model's own; the modality tells a reader that a text model's cache has none
    meta = make_meta(model_name, task.name, feats["train"], feats["test"], precision=precision, device=device.type,
                     modality=spec.modality, image_size=image_size or 0, seconds=round(time.time() - start, 1))
    write_features(path, feats["train"], feats["test"], meta)
    return {"train": feats["train"], "test": feats["test"], "meta": meta}
