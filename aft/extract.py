"""Feature extraction: a pre-trained model over a dataset's train and test splits into the cache.

Used by save_features.py and by run.py when a cache is missing, so both produce the same file.
Texts are processed in order of length, so each batch is padded only to its own longest text.

Each split's rows, in that order, are cut into chunks of `chunk_rows`; chunk k is computed by rank
k mod world size (torchrun; one process computes them all) and saved in its own file in
`{cache}.parts/`, named by split, k and the number of chunks, which depend on neither the ranks nor
the batch size. Then rank 0 merges the chunks into the cache and removes the folder. A killed
extraction started again, with any number of processes, reuses every chunk already saved that was
made of the same rows for the same model, dataset, image size and precision. Striding the chunks
over the ranks, rather than giving each rank one block, shares the long texts (first in the order)
among the ranks, so no rank waits for one that got all of them.
"""
import os
import shutil
import signal
import time
from contextlib import nullcontext

import torch
from tqdm import tqdm

from aft.distributed import SINGLE
from aft.errors import UserError, first_line
from aft.features import cache_lock, make_meta, missing_rows, save_cache
from aft.files import atomic_save, safe_load
from aft.models import check_modality
from aft.runtime import autocast, resolve_precision, speed_settings

CHUNK_ROWS = 4096  # rows per chunk file: what a kill can cost
# A test hook, unset in normal use: the process of the rank this variable names kills itself (SIGKILL)
# right after saving its first chunk, so a test interrupts an extraction at a known point.
KILL_AFTER_FIRST_CHUNK = "AFT_TEST_KILL_AFTER_FIRST_CHUNK"


def extraction_order(inputs, rows=None):
    """Every row of `rows` (None: all) once, in the order extraction computes them: text by length
    (longest first), so each batch is padded only to its own longest text; other inputs in row order."""
    rows = torch.arange(len(inputs)) if rows is None else torch.as_tensor(rows, dtype=torch.long).sort().values
    if hasattr(inputs, "lengths"):
        return rows[torch.argsort(inputs.lengths[rows], descending=True, stable=True)]
    return rows


def check_device_map(spec, device_map, world):
    """Refuse --device_map=auto where it cannot apply, before any work."""
    if not device_map:
        return
    if world.size > 1:
        raise UserError("--device_map=auto spreads one model over the GPUs of one process, and torchrun gives each "
                        "process its own GPU: use one or the other")
    if not spec.takes_device_map:
        raise UserError(f"--device_map=auto is for Hugging Face models and {spec.name} is not one; leave --device_map "
                        f"unset")
    try:
        import accelerate  # noqa: F401  (transformers places the model with it)
    except ImportError:
        raise UserError("--device_map=auto needs the package accelerate: pip install accelerate") from None


def prepare_body(body, device, precision, modality, placed=False):
    """A feature extractor ready for compute_features: on the device, in eval mode, in bf16 when
    that is the precision, channels-last for images on CUDA. `placed`: already spread over the GPUs
    by device_map (and loaded in its dtype), so it is only put in eval mode."""
    if placed:
        return body.eval()
    body = body.to(device).eval()
    if precision == "bf16":
        body = body.to(torch.bfloat16)
    if device.type == "cuda" and modality == "image":
        body = body.to(memory_format=torch.channels_last)
    return body


@torch.inference_mode()
def compute_features(body, inputs, batch_size, device, precision, desc="features", rows=None):
    """Features of every row of `inputs`, float32 on the host, in row order; or, given `rows`, of
    those rows, computed and returned in that order.

    The device never waits for the host between batches: the batch order goes to the device once,
    and each batch's features are copied back asynchronously (into pinned memory on CUDA) in batch
    order; the rows are put back in their own order once, at the end.
    """
    order = extraction_order(inputs) if rows is None else rows
    batches = list(order.split(batch_size))
    widths = inputs.widths(batches)
    inputs.expect(batches)
    if not batches:
        return torch.empty((0, 0))
    device_batches = order.to(device).split(batch_size)
    out, start = None, 0
    for idx, width in zip(tqdm(device_batches, desc=desc, leave=False, mininterval=2), widths):
        with autocast(device, precision):
            feats = body(inputs.batch(idx, width))
        if out is None:
            out = torch.empty((len(order), feats.shape[1]), dtype=torch.float32, pin_memory=device.type == "cuda")
        out[start:start + len(idx)].copy_(feats.float(), non_blocking=True)
        start += len(idx)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    result = torch.empty(out.shape, dtype=out.dtype)
    if rows is None:
        result[order] = out
    else:
        result.copy_(out)
    return result


def compute_features_adaptive(body, inputs, batch_size, device, precision, desc, rows=None):
    """compute_features, halving the batch size whenever the GPU runs out of memory; returns the
    features and the batch size that worked (the next split starts from it). Text batches come
    longest first, so an oversized batch fails at once, not after most of the work."""
    while True:
        try:
            return compute_features(body, inputs, batch_size, device, precision, desc=desc, rows=rows), batch_size
        except torch.OutOfMemoryError:
            pass  # leave the except block first, so the failed batch's tensors can be freed
        if batch_size == 1:
            raise UserError(f"{desc}: out of GPU memory even one example at a time on {device}; use "
                            f"--precision=bf16, a smaller --image_size, or a GPU with more memory")
        if device.type == "cuda":
            torch.cuda.empty_cache()
        batch_size = max(1, batch_size // 2)
        print(f"{desc}: out of GPU memory; retrying with batch size {batch_size}", flush=True)


def chunk_path(folder, split, index, count):
    return os.path.join(folder, f"{split}-{index:05d}-of-{count:05d}.pt")


def load_chunk(path, identity, rows):
    """The features saved at `path` when that chunk holds `rows` of the extraction `identity`; else
    None (no such file, an unreadable one, or one of another extraction: computed again)."""
    if not os.path.exists(path):
        return None
    try:
        chunk = safe_load(path, "chunk of features", mmap=True)
    except UserError:
        return None
    if not (isinstance(chunk, dict) and chunk.get("identity") == identity and isinstance(chunk.get("rows"), torch.Tensor)
            and torch.equal(chunk["rows"], rows)):
        return None
    return chunk["features"]


def extract_chunks(body, inputs, folder, identity, chunk_rows, world, batch_size, device, precision, desc,
                   rows=None):
    """Compute and save this rank's chunks of one split (of its `rows`; None: all) that no earlier run
    saved; returns the chunks' rows and the batch size that worked."""
    chunks = extraction_order(inputs, rows).split(chunk_rows)
    for k in range(world.rank, len(chunks), world.size):
        path = chunk_path(folder, identity["split"], k, len(chunks))
        if load_chunk(path, identity, chunks[k]) is not None:
            continue
        feats, batch_size = compute_features_adaptive(body, inputs, batch_size, device, precision,
                                                      f"{desc} chunk {k + 1}/{len(chunks)}", rows=chunks[k])
        # clone: a view would save the whole split's order with it
        atomic_save({"identity": identity, "rows": chunks[k].clone(), "features": feats}, path)
        if os.environ.get(KILL_AFTER_FIRST_CHUNK) == str(world.rank):
            os.kill(os.getpid(), signal.SIGKILL)
    return chunks, batch_size


def merge_chunks(folder, identity, chunks, dim):
    """(rows, features) of the split's chunk files, in the chunks' order (`dim` wide when it has none)."""
    feats = []
    for k, rows in enumerate(chunks):
        path = chunk_path(folder, identity["split"], k, len(chunks))
        feats.append(load_chunk(path, identity, rows))  # memory-mapped: only the merged cache holds the split
        if feats[-1] is None:
            raise UserError(f"{path} is missing or holds other rows after every rank finished; run the "
                            f"extraction again")
    rows = torch.cat(chunks) if chunks else torch.zeros(0, dtype=torch.long)
    return rows, torch.cat(feats) if feats else torch.empty((0, dim))


def splits_of(task):
    return [split for split in ("train", "test", "val") if getattr(task, split) is not None]


def extract_to_cache(spec, task, path, batch_size, device, precision="auto", image_size=None,
                     chunk_rows=CHUNK_ROWS, world=SINGLE, device_map=None, need=None):
    """Compute the features of model `spec` (an aft.models ModelSpec) of `task` and write them
    atomically to `path`, through chunk files in `{path}.parts/` (see the module docstring); `world`:
    this process's rank among those torchrun started; `device_map`: "auto" spreads a Hugging Face
    model over the GPUs (accelerate; check_device_map first). Returns the cache on rank 0, None on the
    others.

    `need`: None makes the whole cache afresh; {split: rows (a LongTensor, or None for all)} computes
    only the rows the cache lacks and adds them to it (a cache of other settings is made afresh), so a
    run on 2% of a set computes 2% of its features. The cache's lock is held meanwhile: other
    processes that need it wait, then find their rows there."""
    check_modality(spec, task)
    precision = resolve_precision(precision, device)
    start = time.time()
    splits = splits_of(task)
    settings = dict(model=spec.name, dataset=task.name, precision=precision, modality=spec.modality,
                    image_size=image_size or 0, decoded_size=task.decoded_size, data_fingerprint=task.fingerprint,
                    paper_pictures=task.model_ready or None,
                    features=spec.describe_features() if spec.describe_features else None)
    with cache_lock(path) if world.is_main else nullcontext():
        old = kept_cache(path, settings, task) if world.is_main and need is not None else None
        todo = {split: (need or {}).get(split) if old is None else missing_rows(old, split, (need or {}).get(split))
                for split in splits if need is None or split in need}
        todo = {split: torch.arange(len(getattr(task, split))) if rows is None else rows for split, rows in
                world.gather_objects(todo)[0].items()}
        if not any(len(rows) for rows in todo.values()):
            if world.is_main:
                print(f"features {path}: another process made the rows this needs meanwhile", flush=True)
            return old
        speed_settings(device, precision)
        # Weights load straight in bf16 when that is the precision: a 7B LM then needs 14 GB, not 28.
        body, dim = spec.build(pretrained=True, dtype=torch.bfloat16 if precision == "bf16" else None,
                               **({"device_map": device_map} if device_map else {}))
        body = prepare_body(body, device, precision, spec.modality, placed=bool(device_map))
        folder = f"{path}.parts"
        done = {}
        for split, rows in todo.items():
            if not len(rows):  # this split has every row this needs
                continue
            inputs = spec.make_inputs(getattr(task, split).inputs, task, image_size).to(device)
            identity = dict(model=spec.name, dataset=task.name, split=split, rows=len(inputs),
                            image_size=image_size or 0, precision=precision, fingerprint=task.fingerprint)
            chunks, batch_size = extract_chunks(body, inputs, folder, identity, chunk_rows, world, batch_size, device,
                                                precision, f"{spec.name} {task.name} {split}", rows)
            done[split] = identity, chunks
        world.barrier()  # every rank's chunks are saved
        if not world.is_main:
            return None
        cache = merged(old, {split: merge_chunks(folder, identity, chunks, dim) for split, (identity, chunks)
                             in done.items()}, task, splits, dim)
        # image_size 0: the model's own; the modality tells a reader that a text model's cache has none
        # decoded_size: the side the dataset's pictures were decoded to first (0: kept as they are)
        meta = make_meta(spec.name, task.name, cache["train"], cache["test"], device=device.type,
                         world_size=world.size, seconds=round(time.time() - start, 1), classes=task.class_names,
                         skipped_rows=task.skipped,
                         **{k: v for k, v in settings.items() if v is not None and k not in ("model", "dataset")})
        try:
            save_cache(path, cache["train"], cache["test"], meta, cache.get("val"), cache.get("present"))
        except OSError as e:  # a full disk: the chunks stay, so the same command later only merges them
            raise UserError(f"cannot write {path} ({first_line(e)}); the computed features are kept in {folder}: "
                            f"make room and run the same command again") from None
    shutil.rmtree(folder, ignore_errors=True)
    return dict(cache, meta=meta)


def kept_cache(path, settings, task):
    """The cache at `path` when it was made with these settings of this data, so rows can be added to it;
    else None (it is then made afresh)."""
    if not os.path.exists(path):
        return None
    try:
        cache = safe_load(path, "feature file")
    except UserError:
        return None
    meta = cache.get("meta", {}) if isinstance(cache, dict) else {}
    same = all(meta.get(k, 0 if k in ("image_size", "decoded_size") else "" if k == "data_fingerprint" else None)
               == v for k, v in settings.items())
    sizes = all(len(cache.get(split, ())) == len(getattr(task, split)) for split in splits_of(task))
    return cache if same and sizes else None


def merged(old, new, task, splits, dim):
    """The cache's split tensors and `present` masks: `old` (or zeros) with the rows of `new` ({split:
    (rows, features)}) written in; a mask only for a split that still lacks rows."""
    out, present = {}, {}
    for split in splits:
        n = len(getattr(task, split))
        feats = old[split].clone() if old is not None else torch.zeros((n, dim))
        mask = (old.get("present", {}).get(split, torch.ones(n, dtype=torch.bool)).clone() if old is not None
                else torch.zeros(n, dtype=torch.bool))
        if split in new:
            rows, part = new[split]
            feats = feats if feats.shape[1] == part.shape[1] else torch.zeros((n, part.shape[1]))
            feats[rows], mask[rows] = part, True
        out[split] = feats
        if not bool(mask.all()):
            present[split] = mask
    if present:
        out["present"] = present
    return out
