"""Where training and evaluation run: the ``device`` setting, bf16 autocast, moving batches.

``device`` is ``auto`` (CUDA when PyTorch sees a CUDA device, else the CPU), ``cpu``,
``cuda`` or ``cuda:N``; a device that is not there is a :class:`RecsysError` before any work,
not a failure deep inside torch. ``amp`` is ``auto`` (bf16 autocast on CUDA, off on the CPU),
``bf16`` or ``off``. Models are built, exported and registered on the CPU; only the training
loop and scoring for evaluation move them (see :func:`placed`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import torch
from torch import Tensor, nn

from recsys.config import DEVICE_PATTERN, get_settings
from recsys.errors import RecsysError

Amp = Literal["auto", "bf16", "off"]
AMP_CHOICES: tuple[Amp, ...] = ("auto", "bf16", "off")
CPU = torch.device("cpu")


def resolve_device(name: str | None = None) -> torch.device:
    """The torch device a ``device`` setting names; ``None`` reads ``RECSYS_DEVICE``."""
    text = (name if name is not None else get_settings().device).strip().lower()
    if not DEVICE_PATTERN.fullmatch(text):
        raise RecsysError(f"unknown device {text!r}: use auto, cpu, cuda or cuda:N")
    if text == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else CPU
    if text == "cpu":
        return CPU
    if not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        raise RecsysError(
            f"device {text!r} asked for, but PyTorch {torch.__version__} ({build}) sees no "
            "CUDA device: use device=cpu or device=auto"
        )
    device = torch.device(text)
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise RecsysError(f"device {text!r} asked for, but only {count} CUDA device(s) are seen")
    return device


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of a training step: bf16, or None for full float32."""
    if amp not in AMP_CHOICES:
        raise RecsysError(f"unknown amp {amp!r}: use {', '.join(AMP_CHOICES)}")
    if amp == "off":
        return None
    bf16_ok = device.type != "cuda" or torch.cuda.is_bf16_supported()
    if amp == "auto":
        return torch.bfloat16 if device.type == "cuda" and bf16_ok else None
    if not bf16_ok:
        raise RecsysError(f"amp=bf16 asked for, but {device} does not support bfloat16")
    return torch.bfloat16


def autocast(device: torch.device, dtype: torch.dtype | None) -> torch.autocast:
    """Autocast of ``device``'s type to ``dtype``; disabled when ``dtype`` is None."""
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def to_device(batch: dict[str, Tensor], device: torch.device) -> dict[str, Tensor]:
    """A batch on ``device``: through pinned memory, without waiting, when that is CUDA.

    On the CPU the batch comes back as it is (no copy).
    """
    if device.type == "cpu":
        return batch
    if device.type == "cuda":
        return {
            key: value.pin_memory().to(device, non_blocking=True) for key, value in batch.items()
        }
    return {key: t.to(device) for key, t in batch.items()}


def device_of(module: nn.Module) -> torch.device:
    """Where a module's parameters (else buffers) are; the CPU for a module with neither."""
    for parameter in module.parameters():
        return parameter.device
    for buffer in module.buffers():
        return buffer.device
    return CPU


@contextmanager
def placed(module: nn.Module, device: torch.device) -> Iterator[nn.Module]:
    """Move ``module`` to ``device`` for the block, then back to where it was."""
    before = device_of(module)
    module.to(device)
    try:
        yield module
    finally:
        module.to(before)
