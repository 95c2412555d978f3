"""From a collated batch of uint8 images to the model's inputs and the criterion's targets."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn

from if3d.data.transforms import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["BatchPreparer", "forward_model", "model_streams", "unwrap_model"]


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module under DDP and ``torch.compile`` wrappers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def model_streams(model: nn.Module) -> tuple[str, ...]:
    """The inputs ``model.forward`` takes, in order: its ``input_streams`` (``("photo",)`` when absent)."""
    return tuple(getattr(unwrap_model(model), "input_streams", ("photo",)))


def forward_model(model: nn.Module, inputs: Sequence[torch.Tensor]):
    """``model(photo)`` or ``model(photo, render)``: the prepared inputs in the model's stream order."""
    return model(*inputs)


class BatchPreparer:
    """Moves a collated batch to the device and turns uint8 images into normalised model inputs.

    Training batches go through the batched paired augmentation
    (:class:`~if3d.data.transforms.PairedAugment`: the same geometry for photo and render,
    erasing on the photo only; it returns normalised float) on the training device;
    evaluation batches are only normalised (:func:`~if3d.data.transforms.normalize`).

    Args:
        device: where the model runs.
        streams: the model's input streams (:func:`model_streams`).
        channels_last: give the inputs NHWC memory format.
        augment: apply the training augmentation to training batches.
        image_size: side S of the images.
        mean, std: the normalisation of the model's backbone (``BackboneSpec``; ImageNet by default).
    """

    def __init__(self, device: torch.device, streams: Sequence[str], channels_last: bool,
                 augment: bool, image_size: int, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD) -> None:
        from if3d.data.transforms import PairedAugment, normalize

        self.device = device
        self.streams = tuple(streams)
        self.channels_last = channels_last
        self.mean, self.std = tuple(mean), tuple(std)
        self.normalize = normalize
        self.augment = PairedAugment(image_size=image_size, mean=self.mean, std=self.std).train() \
            if augment else None

    @classmethod
    def for_model(cls, model: nn.Module, device: torch.device, channels_last: bool, augment: bool,
                  image_size: int) -> BatchPreparer:
        """A preparer with the model's streams and its backbone's normalisation."""
        spec = getattr(unwrap_model(model), "backbone_spec", None)
        norm = {"mean": spec.mean, "std": spec.std} if spec is not None else {}
        return cls(device, model_streams(model), channels_last, augment, image_size, **norm)

    def __call__(self, batch: Mapping[str, Any], train: bool) -> tuple[tuple[torch.Tensor, ...], dict]:
        """Returns ``(inputs, targets)``: inputs ``(photo,)`` or ``(photo, render)`` float [B,3,S,S];
        targets ``label`` [B] int64, ``valence``/``arousal`` [B] float32, ``has_va`` [B] bool."""
        nb = self.device.type == "cuda"
        photo = batch["photo"].to(self.device, non_blocking=nb)
        render = batch["render"].to(self.device, non_blocking=nb) if "render" in self.streams else None
        if train and self.augment is not None:
            inputs = [self.augment(photo)] if render is None else list(self.augment(photo, render))
        else:
            inputs = [self.normalize(x, self.mean, self.std) for x in (photo, render) if x is not None]
        if self.channels_last:
            inputs = [x.contiguous(memory_format=torch.channels_last) for x in inputs]
        targets = {k: batch[k].to(self.device, non_blocking=nb) for k in ("label", "valence", "arousal", "has_va")}
        return tuple(inputs), targets
