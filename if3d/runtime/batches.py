"""From a collated batch of uint8 images to the model's inputs and the criterion's targets."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn

from if3d.data.source import CLIP_STREAMS, IMAGE_STREAMS
from if3d.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from networks.inference import predict_logits

__all__ = ["CLIP_STREAMS", "IMAGE_STREAMS", "BatchPreparer", "forward_model", "model_streams", "unwrap_model"]


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
    """``model(photo)`` or ``model(photo, render)``: the prepared inputs in the model's stream order.

    A model in eval mode that carries an inference policy (a checkpoint's temperature and test-time flip
    averaging, :mod:`networks.inference`) is run with it; a model in training mode never is.
    """
    return predict_logits(model, inputs)




class BatchPreparer:
    """Moves a collated batch to the device and turns it into the model's inputs and the criterion's targets.

    Image streams (:data:`IMAGE_STREAMS`, uint8 [B, 3, S, S]): training batches go through the batched
    paired augmentation (:class:`~if3d.data.transforms.PairedAugment`: the same geometry for photo and
    render, erasing on the photo only; it returns normalised float) on the training device; evaluation
    batches are only normalised (:func:`~if3d.data.transforms.normalize`). Any other stream the model
    declares (a landmark cloud, a voxel grid …) is read from the batch under its name and moved to the
    device unchanged (its dataset gives it ready to use). Targets are every other key of the batch
    except ``index`` (``label``, ``valence``, ``arousal``, ``has_va``, and whatever a criterion needs).

    Clip streams (video models, :data:`CLIP_STREAMS`: ``clip`` and ``render_clip`` uint8 [B, T, 3, S, S],
    ``frame_mask`` bool [B, T]): in training, ``clip_frames`` frames are drawn per clip, one from each of as
    many equal segments (:func:`if3d.data.clips.sample_segment_frames`, from the torch RNG the engine reseeds
    every step), and augmented with one geometry per clip (:meth:`~if3d.data.transforms.PairedAugment.
    augment_clips`); the mask becomes all True. In evaluation every frame is normalised and the padded batch
    keeps its mask (the model ignores padded frames).

    Args:
        device: where the model runs.
        streams: the model's input streams (:func:`model_streams`).
        channels_last: give the inputs NHWC memory format.
        augment: apply the training augmentation to training batches.
        image_size: side S of the images.
        mean, std: the normalisation of the model's backbone (``BackboneSpec``; ImageNet by default).
        clip_frames: training frames per clip of a video model (its ``clip_frames``); None keeps every frame.
        augment_preset: the training augmentation's recipe (:data:`if3d.data.transforms.PRESETS`:
            ``affectnet``, DDAMFN/If3D's strong geometry; ``rafdb``, milder; ``light``, ``rafdb`` without
            erasing; ``none``).
    """

    def __init__(self, device: torch.device, streams: Sequence[str], channels_last: bool,
                 augment: bool, image_size: int, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD, clip_frames: int | None = None,
                 augment_preset: str = "affectnet") -> None:
        from if3d.data.transforms import PairedAugment, normalize

        self.device = device
        self.streams = tuple(streams)
        self.channels_last = channels_last
        self.mean, self.std = tuple(mean), tuple(std)
        self.normalize = normalize
        self.clip_frames = clip_frames
        self.augment = PairedAugment(image_size=image_size, preset=augment_preset, mean=self.mean,
                                     std=self.std).train() if augment else None
        self._clip_eval = PairedAugment(image_size=image_size, mean=self.mean, std=self.std).eval()

    @classmethod
    def for_model(cls, model: nn.Module, device: torch.device, channels_last: bool, augment: bool,
                  image_size: int, augment_preset: str = "affectnet") -> BatchPreparer:
        """A preparer with the model's streams and its backbone's normalisation."""
        spec = getattr(unwrap_model(model), "backbone_spec", None)
        norm = {"mean": spec.mean, "std": spec.std} if spec is not None else {}
        return cls(device, model_streams(model), channels_last, augment, image_size, **norm,
                   clip_frames=getattr(unwrap_model(model), "clip_frames", None), augment_preset=augment_preset)

    def __call__(self, batch: Mapping[str, Any], train: bool) -> tuple[tuple[torch.Tensor, ...], dict]:
        """Returns ``(inputs, targets)``: inputs in the model's stream order (``photo``/``render`` float
        [B,3,S,S], other streams as the dataset gives them); targets by name (``label`` [B] int64,
        ``valence``/``arousal`` [B] float32, ``has_va`` [B] bool, …).

        Raises:
            KeyError: the batch lacks a stream the model reads (the message names it).
        """
        nb = self.device.type == "cuda"
        missing = [s for s in self.streams if s not in batch]
        if missing:
            raise KeyError(f"the batch has no {', '.join(missing)} stream (it has {', '.join(sorted(batch))}); "
                           "the dataset does not provide what this model reads")
        images = {s: batch[s].to(self.device, non_blocking=nb) for s in self.streams if s in IMAGE_STREAMS}
        if images:
            names = [s for s in IMAGE_STREAMS if s in images]  # photo first: the augmentation's order
            if train and self.augment is not None:
                out = self.augment(*(images[s] for s in names))
                out = (out,) if isinstance(out, torch.Tensor) else tuple(out)
            else:
                out = tuple(self.normalize(images[s], self.mean, self.std) for s in names)
            if self.channels_last:
                out = tuple(x.contiguous(memory_format=torch.channels_last) for x in out)
            images = dict(zip(names, out, strict=True))
        if "clip" in self.streams:
            images.update(self._clips(batch, train, nb))
        inputs = tuple(images[s] if s in images else batch[s].to(self.device, non_blocking=nb) for s in self.streams)
        targets = {k: v.to(self.device, non_blocking=nb) for k, v in batch.items()
                   if k != "index" and k not in self.streams and k not in IMAGE_STREAMS and k not in CLIP_STREAMS
                   and isinstance(v, torch.Tensor)}
        return inputs, targets

    def _clips(self, batch: Mapping[str, Any], train: bool, nb: bool) -> dict[str, torch.Tensor]:
        """The clip streams of a video model: training frames drawn and augmented, or all frames normalised."""
        from if3d.data.clips import sample_segment_frames

        mask = batch["frame_mask"]
        clip = batch["clip"]
        render = batch.get("render_clip") if "render_clip" in self.streams else None
        if train and self.clip_frames is not None:
            idx = sample_segment_frames(mask, int(self.clip_frames))  # [B, K], global RNG (reseeded per step)
            rows = torch.arange(clip.shape[0])[:, None]
            clip = clip[rows, idx]
            render = render[rows, idx] if render is not None else None
            mask = torch.ones(idx.shape, dtype=torch.bool)
        clip = clip.to(self.device, non_blocking=nb)
        render = render.to(self.device, non_blocking=nb) if render is not None else None
        aug = self.augment if (train and self.augment is not None) else self._clip_eval
        out = aug.augment_clips(clip, render)
        clip, render = (out, None) if render is None else out
        streams = {"clip": clip, "frame_mask": mask.to(self.device, non_blocking=nb)}
        if render is not None:
            streams["render_clip"] = render
        return streams
