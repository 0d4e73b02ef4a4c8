"""Inputs preprocessed once: token ids for text, decoded uint8 pixels for images.

Tokenising and decoding are the same every epoch, so they happen once here and the results live on
the device; a training step then only indexes those tensors (and, for images, resizes and
normalises the batch on the device).
"""
import math
import os
import queue
import sys
import threading

import PIL
import torch
import torch.nn.functional as F

from aft.store import DiskImages
from aft.errors import UserError
from aft.runtime import free_memory

# Pillow 13 resizes a picture whose height shrinks much more than its width vertically first
# (resized_crop follows the Pillow that timm's transform would run on here).
PIL_VERTICAL_FIRST = int(PIL.__version__.split(".")[0]) >= 13
# Rows of pictures made float at a time before the resize to the model's size: an evaluation batch of
# 512 pictures decoded at 320 px is 315 MB of floats whole, 39 MB in parts of 64.
FLOAT_ROWS = 64


class TextInputs:
    """Token ids padded to the longest example, with lengths so each batch is cut to its own longest."""

    def __init__(self, texts, tokenizer, max_length=None, truncation_side="right"):
        max_length = max_length or tokenizer.model_max_length
        if max_length > 10_000:  # some tokenizers report a huge sentinel: cap them at 512, as the paper's code does
            max_length = 512
        tokenizer.truncation_side = truncation_side
        if tokenizer.pad_token is None:  # decoder-only LMs ship without one; pad with EOS
            tokenizer.pad_token = tokenizer.eos_token
        enc = tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
        self.lengths = torch.tensor([len(e) for e in enc])
        self.ids = torch.full((len(enc), int(self.lengths.max())), tokenizer.pad_token_id, dtype=torch.int32)
        for i, e in enumerate(enc):
            self.ids[i, :len(e)] = torch.tensor(e, dtype=torch.int32)
        self.device_lengths = self.lengths

    def __len__(self):
        return len(self.lengths)

    def to(self, device):
        # lengths stay on the host too: batch widths are computed there, once per epoch
        self.ids, self.device_lengths = self.ids.to(device), self.lengths.to(device)
        return self

    def batch(self, idx, width, augment=False):
        """Rows `idx` cut to `width` tokens (the batch's longest, computed on the host beforehand)."""
        ids = self.ids[idx, :width].long()
        mask = torch.arange(width, device=ids.device) < self.device_lengths[idx, None]
        return {"input_ids": ids, "attention_mask": mask.long()}

    def widths(self, batches):
        """Per-batch width for a list of index tensors (host side, once per epoch)."""
        return [int(self.lengths[b].max()) for b in batches]

    def expect(self, batches):
        """Token ids live on the device: nothing to fetch ahead."""


def resized_side(size, crop_pct):
    """timm's eval transform resizes a picture to size / crop_pct (floored), then takes the central
    size x size."""
    return int(math.floor(size / crop_pct))


class ImageInputs:
    """Decoded uint8 images kept as they are (N, C, H, W), on the device; each batch is resized to the
    model's input size, cropped and normalised there, in a few fused tensor ops.

    Resizing per batch on the device costs microseconds on a GPU and keeps memory at the dataset's
    native size (CIFAR at 518 px would be 40 GB). Images are square: loaders of sets with other
    shapes make them square first.

    `interpolation` is the model's own (timm's data config: bicubic for most ViTs, bilinear for
    ResNets). `index` maps row i to image index[i] when several rows share one image (SNLI-VE: 530k
    hypotheses about 30k pictures), so every picture is stored once.

    Pictures decoded to disk (an aft.store.DiskImages) move whole to the device when they fit
    its free memory with room to spare; else they stay on disk and each batch is read from there by a
    background thread, ahead of the step that needs it (expect()), into pinned memory on CUDA, and
    copied to the device while the previous step runs. $AFT_IMAGE_STORE=memory or disk decides instead.
    """

    def __init__(self, images, size, mean, std, crop_pct=1.0, interpolation="bilinear", index=None):
        self.images, self.normalisation = images, (tuple(mean), tuple(std))
        self.paper_augment = None  # (originals, timm's training transform) under --paper_exact
        self.index = index
        self.host_index = index
        # a BatchReader while the pictures are read from disk per batch (until to() places them)
        self.reader = BatchReader(images, torch.device("cpu")) if isinstance(images, DiskImages) else None
        self.size = size
        self.interpolation = interpolation if interpolation in ("bilinear", "bicubic") else "bilinear"
        self.resized = resized_side(size, crop_pct)
        self.mean = torch.tensor(mean).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(std).view(1, 3, 1, 1) * 255
        self.channels_last = False  # on CUDA, where image models run channels-last: batches come out NHWC

    def __len__(self):
        return len(self.images) if self.index is None else len(self.index)

    def to(self, device):
        if isinstance(self.images, DiskImages):
            self.images = self.place(self.images, device)
        self.reader = BatchReader(self.images, device) if isinstance(self.images, DiskImages) else None
        if self.reader is None:
            self.images = self.images.to(device)
        self.mean, self.std = self.mean.to(device), self.std.to(device)
        self.channels_last = device.type == "cuda"
        if self.index is not None:
            self.index = self.index.to(device)
        return self

    @staticmethod
    def place(images, device):
        """The pictures of `images` in the device's memory when they fit there with room to spare (half of
        what is free), else `images` itself, read from disk per batch; one line says which."""
        choice = os.environ.get("AFT_IMAGE_STORE", "auto").strip().lower() or "auto"
        if choice not in ("auto", "memory", "disk"):
            raise UserError(f"AFT_IMAGE_STORE={choice} must be auto, memory or disk; unset it to decide by the "
                            f"free memory")
        gib, where = images.nbytes / 2 ** 30, "the GPU" if device.type == "cuda" else "memory"
        if choice == "memory" or (choice == "auto" and images.nbytes < free_memory(device) / 2):
            print(f"pictures: {len(images)} at {images.size} px ({gib:.2f} GiB) held in {where}", flush=True)
            return images.load().to(device)
        print(f"pictures: {len(images)} at {images.size} px ({gib:.2f} GiB) read from disk a batch at a time "
              f"({'AFT_IMAGE_STORE=disk' if choice == 'disk' else 'more than half the free ' + where})", flush=True)
        return images

    def expect(self, batches):
        """The batches of rows (host tensors) that batch() will be asked for next, in order: pictures read
        from disk are fetched ahead."""
        if self.reader is not None:
            self.reader.expect([b if self.host_index is None else self.host_index[b] for b in batches])

    def host_rows(self, idx):
        """The stored pictures of rows `idx` (a device tensor), as a host tensor: a wait for the device,
        only when a batch was not announced by expect()."""
        idx = idx.cpu()
        return idx if self.host_index is None else self.host_index[idx]

    def augment_as_paper(self, originals):
        """Augment as the paper's code does (--paper_exact): timm's own training transform
        (RandomResizedCrop, flip, ColorJitter, in PIL on uint8 pictures, then ToTensor and Normalize) on
        each picture as it is on disk, `originals(i)` being row i's (a PIL image). On the CPU, a picture
        at a time, in order, so the draws follow the seed."""
        import timm.data
        mean, std = self.normalisation
        self.paper_augment = originals, timm.data.create_transform(
            input_size=self.size, is_training=True, interpolation=self.interpolation, mean=mean, std=std)

    def paper_batch(self, idx):
        originals, transform = self.paper_augment
        rows = idx.tolist()  # a wait for the device: this path computes on the CPU anyway
        x = torch.stack([transform(originals(r).convert("RGB")) for r in rows]).to(self.mean.device)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def batch(self, idx, width=None, augment=False):
        if augment and self.paper_augment is not None:
            return self.paper_batch(idx)
        if self.reader is not None:
            x = self.reader.next(len(idx), lambda: self.host_rows(idx))
        else:
            x = self.images[idx if self.index is None else self.index[idx]]
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if augment:  # (one batch: its random draws are the batch's)
            x = timm_train_transform(x.float(), self.size, self.interpolation)
            if self.channels_last:  # the resize's matmuls write NCHW
                x = x.contiguous(memory_format=torch.channels_last)
        elif len(x) > FLOAT_ROWS and x.shape[-1] != self.size:  # row by row the same numbers, in less memory
            x = torch.cat([self.eval_transform(part.float()) for part in x.split(FLOAT_ROWS)])
        else:
            x = self.eval_transform(x.float())
        return (x - self.mean) / self.std

    def eval_transform(self, x):
        """timm's eval transform of float pixels: resize to size / crop_pct, then the central size x size."""
        if self.channels_last:  # converted at the source size, so the resize already writes NHWC
            x = x.contiguous(memory_format=torch.channels_last)
        if x.shape[-1] != self.resized:
            # A bilinear upscale (CIFAR to 224) is the same without antialiasing and takes the faster
            # plain kernel; bicubic keeps it always (its antialiased kernel is PIL's, a = -0.5).
            antialias = self.interpolation == "bicubic" or x.shape[-1] > self.resized
            x = F.interpolate(x, size=(self.resized, self.resized), mode=self.interpolation,
                              antialias=antialias, align_corners=False)
            if self.interpolation == "bicubic":  # bicubic overshoots; PIL (timm's path) clamps to uint8
                x = x.clamp(0, 255)
        top = int(round((self.resized - self.size) / 2.0))  # torchvision's CenterCrop (timm's eval crop)
        return x[:, :, top:top + self.size, top:top + self.size]

    def widths(self, batches):
        return [None] * len(batches)


def timm_train_transform(x, size, interpolation):
    """timm's training transform (`create_transform(**data_config, is_training=True)`) of a batch of
    pixels in [0, 255], (n, 3, side, side), on their device and all at once, with PIL's arithmetic
    (timm runs it on PIL images): RandomResizedCrop(size, scale=(0.08, 1), ratio=(3/4, 4/3)) with the
    model's interpolation, PIL's filter (bicubic a = -0.5, antialiased when shrinking) and its uint8
    rounding after each pass; RandomHorizontalFlip(0.5); ColorJitter(0.4, 0.4, 0.4), each adjustment
    PIL's blend, truncated to uint8. The random numbers come from torch's RNG on x's device. Unlike
    timm's, the crops come from the decoded square, not the original picture (--paper_exact runs timm
    itself on the original)."""
    n, side = len(x), x.shape[-1]
    top, left, height, width = sample_crops(n, side, x.device)
    flip = torch.rand(n, device=x.device) < 0.5
    x = resized_crop(x, top, left, height, width, size, interpolation, flip)
    return color_jitter(x, *sample_jitter(n, x.device))


def sample_crops(n, side, device, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), tries=10):
    """RandomResizedCrop's boxes (top, left, height, width), each (n,), in a side x side picture, as
    timm samples them: the first of 10 tries that fits, each an area fraction uniform in `scale` and
    an aspect ratio log-uniform in `ratio`. All tries are drawn at once, so nothing waits on the host."""
    area = torch.empty(n, tries, device=device).uniform_(*scale) * side ** 2
    aspect = torch.empty(n, tries, device=device).uniform_(math.log(ratio[0]), math.log(ratio[1])).exp()
    width, height = (area * aspect).sqrt().round(), (area / aspect).sqrt().round()
    fits = (width <= side) & (height <= side)
    first = fits.int().argmax(1, keepdim=True)  # argmax gives the first of equal maxima
    # No try fits: timm takes the central crop of the picture's ratio clamped into `ratio`, which for
    # a square is the whole picture.
    found = fits.any(1)
    width = torch.where(found, width.gather(1, first)[:, 0], side)
    height = torch.where(found, height.gather(1, first)[:, 0], side)
    return uniform_offset(side - height), uniform_offset(side - width), height, width


def uniform_offset(most):
    """An integer uniform in 0..most for each entry (random.randint(0, most)); min() guards the
    float rounding of rand() * (most + 1) up to most + 1."""
    return torch.minimum((torch.rand_like(most) * (most + 1)).floor(), most)


def resized_crop(x, top, left, height, width, size, interpolation, flip):
    """Each (square) picture's box resized to size x size and, where `flip`, mirrored left to right, as PIL
    resizes a cropped picture (torchvision's resized_crop on a PIL image): two passes, each a batched
    matmul with per-picture weights (resize_weights), rounded to uint8 after each. PIL runs the
    horizontal pass first, except (Pillow 13 on) where the height shrinks by more than twice as many
    pixels as the width: there the vertical one. Such a picture is run transposed, with its two sets
    of weights swapped, so one horizontal-first computation serves the whole batch (no wait for the
    device to say which pictures are which)."""
    with torch.autocast(x.device.type, enabled=False):  # float32 weights: bf16 would shift the pixels
        rows = resize_weights(top, height, x.shape[-2], size, interpolation)
        cols = resize_weights(left, width, x.shape[-1], size, interpolation)
        cols = torch.where(flip[:, None, None], cols.flip(1), cols)
        if PIL_VERTICAL_FIRST:
            upright = ~((height > size) & (height - size > 2 * (width - size)))[:, None, None]
            rows, cols = torch.where(upright, rows, cols), torch.where(upright, cols, rows)
            x = torch.where(upright[:, None], x, x.transpose(-1, -2))
        x = to_uint8_levels(x @ cols[:, None].transpose(-1, -2))
        x = to_uint8_levels(rows[:, None] @ x)
        return torch.where(upright[:, None], x, x.transpose(-1, -2)) if PIL_VERTICAL_FIRST else x


def to_uint8_levels(x):
    """Rounded to the nearest whole level (halves up) and clipped to [0, 255], as PIL stores a pass."""
    return (x + 0.5).floor().clamp(0, 255)


def resize_weights(start, length, in_size, out_size, interpolation):
    """(n, out_size, in_size) weights that resize pixels [start, start + length) of each picture's
    rows (or columns) to out_size as PIL's resampling does (Resample.c): output pixel i centred at
    (i + 0.5) * scale of the crop, scale = length / out_size; the filter (bicubic, a = -0.5, support 2;
    bilinear, support 1) stretched by the scale when shrinking (antialiasing); taps inside the crop
    only, their weights summing to 1."""
    scale = (length / out_size)[:, None, None]
    stretch = scale.clamp(min=1)
    support = (2.0 if interpolation == "bicubic" else 1.0) * stretch
    center = (torch.arange(out_size, device=start.device)[None, :, None] + 0.5) * scale
    # PIL's taps: from (int)(center - support + 0.5), truncated, to the crop's end; at most `taps` of them
    first = (center - support + 0.5).trunc().clamp(min=0)
    # the band's width, from the largest crop (the whole picture): known on the host, no wait for the device
    taps = int(2 * (2.0 if interpolation == "bicubic" else 1.0) * max(1.0, in_size / out_size) + 2)
    pixel = first + torch.arange(taps, device=start.device)  # (n, out_size, taps), in the crop's frame
    last = torch.minimum((center + support + 0.5).trunc(), length[:, None, None])
    weights = torch.where(pixel < last, pil_filter((pixel - center + 0.5) / stretch, interpolation), 0.0)
    weights = weights / weights.sum(-1, keepdim=True)
    # Laid out over the picture's pixels tap by tap, in a fixed order (scatter_add's atomics on CUDA
    # would make it nondeterministic).
    where = pixel + start[:, None, None]
    pixels = torch.arange(in_size, device=start.device)
    return sum(weights[..., k, None] * (where[..., k, None] == pixels) for k in range(taps))


def pil_filter(d, interpolation):
    """PIL's resampling filters at distance d: the triangle (bilinear), or the cubic with a = -0.5."""
    d = d.abs()
    if interpolation == "bilinear":
        return (1 - d).clamp(min=0)
    a = -0.5
    return torch.where(d < 1, ((a + 2) * d - (a + 3)) * d * d + 1,
                       torch.where(d < 2, (((d - 5) * d + 8) * d - 4) * a, 0.0))


def sample_jitter(n, device, strength=0.4):
    """ColorJitter's draws for each picture: brightness, contrast and saturation factors (n, 3)
    uniform in [1 - strength, 1 + strength], and the order the three are applied in (n, 3), a
    uniformly random permutation of 0, 1, 2."""
    factors = torch.empty(n, 3, device=device).uniform_(1 - strength, 1 + strength)
    return factors, torch.rand(n, 3, device=device).argsort(1)


BRIGHTNESS, CONTRAST, SATURATION = 0, 1, 2


def color_jitter(x, factors, order):
    """torchvision's ColorJitter of a PIL picture (PIL's ImageEnhance), on pixels in [0, 255] with the
    drawn factors and order: each adjustment blends a reference with the picture by its factor and
    truncates to uint8 (PIL's Image.blend). The reference is black (brightness), the mean of the grey
    picture rounded to a level (contrast) or the grey picture (saturation), grey being PIL's L."""
    for step in range(order.shape[1]):
        op = order[:, step, None, None, None]
        grey = grayscale(x)
        mean = (grey.double().mean((1, 2, 3), keepdim=True) + 0.5).floor().float()
        reference = torch.where(op == BRIGHTNESS, 0.0, torch.where(op == CONTRAST, mean, grey))
        factor = factors.gather(1, order[:, step, None])[:, :, None, None]
        x = (reference + factor * (x - reference)).clamp(0, 255).floor()
    return x


def grayscale(x):
    """(n, 1, H, W) PIL's L of RGB pixel levels: (299 R + 587 G + 114 B) / 1000 in its fixed point,
    rounded (exact in float32: the sums stay under 2^24)."""
    return ((x[:, 0] * 19595 + x[:, 1] * 38470 + x[:, 2] * 7471 + 32768) / 65536).floor().unsqueeze(1)


class BatchReader:
    """Batches of pictures read from disk in a background thread, in the order expect() announced
    them; next() takes the next one (or reads the asked rows at once when none was announced)."""

    AHEAD = 3  # batches read ahead of the step

    def __init__(self, images, device):
        self.images, self.device = images, device
        self.queue, self.stop, self.thread, self.left = None, None, None, 0

    def expect(self, batches):
        self.cancel()
        self.queue, self.stop, self.left = queue.Queue(self.AHEAD), threading.Event(), len(batches)
        self.thread = threading.Thread(target=self.read_all, args=(list(batches), self.queue, self.stop), daemon=True)
        self.thread.start()

    def read_all(self, batches, out, stop):
        pin = self.device.type == "cuda"
        for rows in batches:
            if stop.is_set():
                return
            try:
                buffer = torch.empty((len(rows), *self.images.shape[1:]), dtype=torch.uint8, pin_memory=pin)
                item = self.images.read(rows, out=buffer)
            except BaseException as e:  # handed to the step that needs the batch
                item = e
            while not stop.is_set():
                try:
                    out.put(item, timeout=0.1)
                    break
                except queue.Full:
                    pass

    def cancel(self):
        if self.thread is not None:
            self.stop.set()
            self.thread.join()
            self.thread = None

    def next(self, n, rows):
        """The next batch of n pictures on the device: the one read ahead, else those of rows() now."""
        if self.thread is None or self.left == 0:
            pixels = self.images.read(rows())
        else:
            pixels = self.queue.get()
            self.left -= 1
            if isinstance(pixels, BaseException):
                raise pixels
            if len(pixels) != n:
                raise RuntimeError(f"batch of {n} rows asked, {len(pixels)} read ahead: expect() was told other "
                                   f"batches")
        return pixels.to(self.device, non_blocking=True)


class ImageText:
    """Raw inputs of an image + text task (SNLI-VE): row i is picture `images[index[i]]` with text
    `texts[i]`. The pictures are decoded once, square uint8 (U, C, H, W), each stored once however many
    rows share it. Indexing with a tensor of rows gives the sub-split (images stay shared)."""

    def __init__(self, images, index, texts):
        assert len(index) == len(texts)
        self.images, self.index, self.texts = images, index, list(texts)

    def __len__(self):
        return len(self.texts)

    def __getitem__(self, idx):
        idx = torch.as_tensor(idx, dtype=torch.long)
        return ImageText(self.images, self.index[idx], [self.texts[i] for i in idx.tolist()])


def image_part(raw):
    """(images, index or None) of a split's raw inputs: an image model reads the pictures of any task."""
    return (raw.images, raw.index) if isinstance(raw, ImageText) else (raw, None)


def text_part(raw):
    """The texts of a split's raw inputs: a text model reads the texts of any task (SNLI-VE: hypotheses)."""
    return raw.texts if isinstance(raw, ImageText) else raw


class PairInputs:
    """Image and text inputs of one set of rows, batched together for a two-tower model (CLIP):
    a batch is {"image": normalised pixels, "text": token ids}. Text ids are fixed-width (CLIP's 77)."""

    def __init__(self, image_inputs, text_ids):
        assert len(image_inputs) == len(text_ids)
        self.image_inputs, self.text_ids = image_inputs, text_ids

    def __len__(self):
        return len(self.text_ids)

    def to(self, device):
        self.image_inputs = self.image_inputs.to(device)
        self.text_ids = self.text_ids.to(device)
        return self

    def batch(self, idx, width=None, augment=False):
        return {"image": self.image_inputs.batch(idx, None, augment), "text": self.text_ids[idx].long()}

    def widths(self, batches):
        return [None] * len(batches)

    def expect(self, batches):
        self.image_inputs.expect(batches)


def pictures_of(inputs):
    """The ImageInputs of a model's inputs (a two-tower model's image side), or None for text."""
    images = inputs.image_inputs if isinstance(inputs, PairInputs) else inputs
    return images if isinstance(images, ImageInputs) else None


MAX_UPSCALE = 4  # beyond this a picture is mostly interpolation: the model computes on blur, and slowly


def warn_upscale(inputs, model):
    """One warning line when a downstream model's inputs enlarge the dataset's pictures more than
    MAX_UPSCALE times (digits' 8 px at 224 px), naming the flag that avoids it."""
    images = pictures_of(inputs)
    if images is None:
        return
    native = images.images.shape[-1]
    if images.size > MAX_UPSCALE * native:
        print(f"warning: {model} enlarges the {native} px images {images.size / native:.0f}x, to {images.size} px; "
              f"a smaller --image_size (e.g. --image_size={MAX_UPSCALE * native}) avoids that", file=sys.stderr,
              flush=True)
