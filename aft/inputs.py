"""Inputs preprocessed once: token ids for text, decoded uint8 pixels for images.

Tokenising and decoding are the same every epoch, so they happen once here and the results live on
the device; a training step then only indexes those tensors (and, for images, resizes and
normalises the batch on the device).
"""
import math
import sys

import torch
import torch.nn.functional as F


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


class ImageInputs:
    """Decoded uint8 images kept as they are (N, C, H, W), on the device; each batch is resized to the
    model's input size, cropped and normalised there, in a few fused tensor ops.

    Resizing per batch on the device costs microseconds on a GPU and keeps memory at the dataset's
    native size (CIFAR at 518 px would be 40 GB). Images are square: loaders of sets with other
    shapes make them square first.

    `interpolation` is the model's own (timm's data config: bicubic for most ViTs, bilinear for
    ResNets). `index` maps row i to image index[i] when several rows share one image (SNLI-VE: 530k
    hypotheses about 30k pictures), so every picture is stored once.
    """

    def __init__(self, images, size, mean, std, crop_pct=1.0, interpolation="bilinear", index=None):
        self.images = images
        self.index = index
        self.size = size
        self.interpolation = interpolation if interpolation in ("bilinear", "bicubic") else "bilinear"
        # timm's eval transform: resize to size / crop_pct, then take the central size x size
        self.resized = int(math.floor(size / crop_pct))
        self.mean = torch.tensor(mean).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(std).view(1, 3, 1, 1) * 255
        self.channels_last = False  # on CUDA, where image models run channels-last: batches come out NHWC

    def __len__(self):
        return len(self.images) if self.index is None else len(self.index)

    def to(self, device):
        self.images, self.mean, self.std = self.images.to(device), self.mean.to(device), self.std.to(device)
        self.channels_last = device.type == "cuda"
        if self.index is not None:
            self.index = self.index.to(device)
        return self

    def batch(self, idx, width=None, augment=False):
        x = self.images[idx if self.index is None else self.index[idx]].float()
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
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
        x = x[:, :, top:top + self.size, top:top + self.size]
        if augment:
            x = random_crop_flip(x)
        return (x - self.mean) / self.std

    def widths(self, batches):
        return [None] * len(batches)


def random_crop_flip(x, pad_frac=0.125):
    """The usual train augmentation, done on the device for the whole batch: pad-and-crop plus flip."""
    n, _, h, w = x.shape
    pad = max(1, int(math.ceil(pad_frac * h)))
    padded = F.pad(x, (pad, pad, pad, pad), mode="replicate" if x.is_floating_point() else "constant")
    dy = torch.randint(0, 2 * pad + 1, (n,), device=x.device)
    dx = torch.randint(0, 2 * pad + 1, (n,), device=x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    out = padded[torch.arange(n, device=x.device)[:, None, None, None],
                 torch.arange(x.shape[1], device=x.device)[None, :, None, None], rows, cols]
    flip = torch.rand(n, device=x.device) < 0.5
    return torch.where(flip[:, None, None, None], out.flip(-1), out)


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


MAX_UPSCALE = 4  # beyond this a picture is mostly interpolation: the model computes on blur, and slowly


def warn_upscale(inputs, model):
    """One warning line when a downstream model's inputs enlarge the dataset's pictures more than
    MAX_UPSCALE times (digits' 8 px at 224 px), naming the flag that avoids it."""
    images = inputs.image_inputs if isinstance(inputs, PairInputs) else inputs
    if not isinstance(images, ImageInputs):
        return
    native = images.images.shape[-1]
    if images.size > MAX_UPSCALE * native:
        print(f"warning: {model} enlarges the {native} px images {images.size / native:.0f}x, to {images.size} px; "
              f"a smaller --image_size (e.g. --image_size={MAX_UPSCALE * native}) avoids that", file=sys.stderr,
              flush=True)
