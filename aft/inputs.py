"""Inputs preprocessed once (SPEC 8): token ids for text, decoded uint8 pixels for images.

Tokenising and decoding are the same every epoch, so they happen once here and the results live on
the device; a training step then only indexes those tensors (and, for images, resizes and
normalises the batch on the device).
"""
import math

import torch
import torch.nn.functional as F


class TextInputs:
    """Token ids padded to the longest example, with lengths so each batch is cut to its own longest."""

    def __init__(self, texts, tokenizer, max_length=None, truncation_side="right"):
        max_length = max_length or tokenizer.model_max_length
        if max_length > 10_000:  # some tokenizers report a huge sentinel: SPEC 6 caps them at 512
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
    """

    def __init__(self, images, size, mean, std, crop_pct=1.0):
        self.images = images
        self.size = size
        # timm's eval transform: resize to size / crop_pct, then take the central size x size
        self.resized = int(math.floor(size / crop_pct))
        self.mean = torch.tensor(mean).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(std).view(1, 3, 1, 1) * 255

    def __len__(self):
        return len(self.images)

    def to(self, device):
        self.images, self.mean, self.std = self.images.to(device), self.mean.to(device), self.std.to(device)
        return self

    def batch(self, idx, width=None, augment=False):
        x = self.images[idx].float()
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[-1] != self.resized:
            x = F.interpolate(x, size=(self.resized, self.resized), mode="bilinear", antialias=True,
                              align_corners=False)
        top = (self.resized - self.size) // 2
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
