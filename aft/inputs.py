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
    """

    def __init__(self, images, size, mean, std, crop_pct=1.0, interpolation="bilinear", index=None):
        self.images = images
        self.index = index
        self.size = size
        self.interpolation = interpolation if interpolation in ("bilinear", "bicubic") else "bilinear"
        self.resized = resized_side(size, crop_pct)
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
        if augment:
            x = timm_train_transform(x, self.size, self.interpolation)
            if self.channels_last:  # the resize's matmuls write NCHW
                x = x.contiguous(memory_format=torch.channels_last)
        else:
            x = self.eval_transform(x)
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
    float pixels in [0, 255], (n, 3, side, side), on their device and all at once:
    RandomResizedCrop(size, scale=(0.08, 1), ratio=(3/4, 4/3)) with the model's interpolation,
    RandomHorizontalFlip(0.5), ColorJitter(0.4, 0.4, 0.4). The random numbers come from torch's RNG
    on x's device. Unlike timm's, the crops come from the decoded square, not the original picture,
    and a crop shrunk to `size` is not antialiased (PIL's resize is)."""
    n, side = len(x), x.shape[-1]
    top, left, height, width = sample_crops(n, side, x.device)
    flip = torch.rand(n, device=x.device) < 0.5
    x = resized_crop(x, top, left, height, width, size, interpolation, flip)
    x = x.clamp(0, 255)  # bicubic overshoots; PIL (timm's path) clamps to uint8
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
    """Each picture's box resized to size x size and, where `flip`, mirrored left to right: two
    batched matmuls with per-picture resize weights (see resize_weights)."""
    with torch.autocast(x.device.type, enabled=False):  # float32 weights: bf16 would shift the pixels
        rows = resize_weights(top, height, x.shape[-2], size, interpolation)
        cols = resize_weights(left, width, x.shape[-1], size, interpolation)
        cols = torch.where(flip[:, None, None], cols.flip(1), cols)
        return rows[:, None] @ x @ cols[:, None].transpose(-1, -2)


def resize_weights(start, length, in_size, out_size, interpolation):
    """(n, out_size, in_size) weights that resize pixels [start, start + length) of each picture's
    rows (or columns) to out_size, as F.interpolate(align_corners=False, antialias=False) resizes the
    cropped picture: taps beyond the crop repeat its edge, and nothing is read outside it."""
    src = (torch.arange(out_size, device=start.device) + 0.5) * (length / out_size)[:, None] - 0.5
    if interpolation == "bilinear":
        src = src.clamp(min=0)  # as PyTorch's linear kernels do (its cubic one does not)
        offsets = torch.arange(0, 2, device=start.device)
    else:
        offsets = torch.arange(-1, 3, device=start.device)
    taps = src.floor()[..., None] + offsets  # (n, out_size, taps), in the crop's own pixels
    weights = kernel(src[..., None] - taps, interpolation)
    taps = torch.minimum(taps.clamp(min=0), length[:, None, None] - 1) + start[:, None, None]
    # Summed tap by tap, in a fixed order (scatter_add's atomics on CUDA would make it nondeterministic).
    pixels = torch.arange(in_size, device=start.device)
    return sum(weights[..., k, None] * (taps[..., k, None] == pixels) for k in range(len(offsets)))


def kernel(d, interpolation):
    """The interpolation kernel at distance d: linear, or PyTorch's cubic convolution (a = -0.75)."""
    d = d.abs()
    if interpolation == "bilinear":
        return (1 - d).clamp(min=0)
    a = -0.75
    return torch.where(d <= 1, ((a + 2) * d - (a + 3)) * d * d + 1, ((a * d - 5 * a) * d + 8 * a) * d - 4 * a)


def sample_jitter(n, device, strength=0.4):
    """ColorJitter's draws for each picture: brightness, contrast and saturation factors (n, 3)
    uniform in [1 - strength, 1 + strength], and the order the three are applied in (n, 3), a
    uniformly random permutation of 0, 1, 2."""
    factors = torch.empty(n, 3, device=device).uniform_(1 - strength, 1 + strength)
    return factors, torch.rand(n, 3, device=device).argsort(1)


BRIGHTNESS, CONTRAST, SATURATION = 0, 1, 2


def color_jitter(x, factors, order):
    """torchvision's ColorJitter of float pixels in [0, 255] with the drawn factors and order: each
    adjustment blends the picture with a reference by its factor, then clamps. The reference is
    black (brightness), the mean of the grey picture (contrast) or the grey picture (saturation)."""
    for step in range(order.shape[1]):
        op = order[:, step, None, None, None]
        grey = grayscale(x)
        reference = torch.where(op == BRIGHTNESS, 0.0,
                                torch.where(op == CONTRAST, grey.mean((1, 2, 3), keepdim=True), grey))
        factor = factors.gather(1, order[:, step, None])[:, :, None, None]
        x = (factor * x + (1 - factor) * reference).clamp(0, 255)
    return x


def grayscale(x):
    """(n, 1, H, W) luma of RGB pixels, with torchvision's (and PIL's) ITU-R 601-2 weights."""
    return (0.2989 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)


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
