"""The device setting: what auto, cpu and cuda resolve to, bf16 autocast, moving batches."""

from __future__ import annotations

import pytest
import torch

from recsys.config import SettingsError, get_settings
from recsys.devices import (
    CPU,
    autocast_dtype,
    device_of,
    placed,
    resolve_device,
    to_device,
)
from recsys.errors import RecsysError
from recsys.models import parse_settings
from recsys.training import TrainConfig


@pytest.fixture
def no_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """This machine has no CUDA device, whatever it really has."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def one_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """This machine has one CUDA device with bf16 (only resolution is tested with it)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)


@pytest.mark.usefixtures("no_cuda")
def test_auto_is_the_cpu_without_cuda_and_cuda_is_a_clear_error() -> None:
    assert resolve_device("auto") == CPU
    assert resolve_device("cpu") == CPU
    for name in ("cuda", "cuda:0", " CUDA "):
        with pytest.raises(RecsysError, match="sees no CUDA device: use device=cpu"):
            resolve_device(name)


@pytest.mark.usefixtures("one_cuda")
def test_auto_is_cuda_when_there_is_one_and_a_missing_index_is_an_error() -> None:
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda:0") == torch.device("cuda:0")
    assert resolve_device("cpu") == CPU
    with pytest.raises(RecsysError, match="only 1 CUDA device"):
        resolve_device("cuda:1")


@pytest.mark.parametrize("name", ["gpu", "cuda:", "cuda:x", "mps", ""])
def test_unknown_device_names_are_errors(name: str) -> None:
    with pytest.raises(RecsysError, match="use auto, cpu, cuda or cuda:N"):
        resolve_device(name)


def test_the_device_setting_comes_from_recsys_device(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RECSYS_DEVICE", raising=False)
    assert get_settings().device == "auto"
    monkeypatch.setenv("RECSYS_DEVICE", " CPU ")
    assert get_settings().device == "cpu"
    assert resolve_device(None) == CPU
    monkeypatch.setenv("RECSYS_DEVICE", "gpu")
    with pytest.raises(SettingsError, match="RECSYS_DEVICE"):
        get_settings()


def test_device_and_amp_are_training_settings() -> None:
    _, overrides = parse_settings("sasrec", ["device=cuda:1", "amp=off"], TrainConfig)
    assert overrides == {"device": "cuda:1", "amp": "off"}
    with pytest.raises(RecsysError, match="amp"):
        parse_settings("sasrec", ["amp=fp16"], TrainConfig)
    with pytest.raises(RecsysError, match="unknown device 'gpu'"):
        TrainConfig(device="gpu")


def test_amp_is_bf16_on_cuda_by_default_and_off_on_the_cpu(one_cuda: None) -> None:
    cuda = torch.device("cuda")
    assert autocast_dtype("auto", cuda) == torch.bfloat16
    assert autocast_dtype("auto", CPU) is None
    assert autocast_dtype("off", cuda) is None
    assert autocast_dtype("bf16", CPU) == torch.bfloat16  # CPU autocast, when asked for
    with pytest.raises(RecsysError, match="unknown amp"):
        autocast_dtype("fp16", cuda)


def test_amp_bf16_on_a_cuda_device_without_bf16_is_an_error(
    one_cuda: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)
    cuda = torch.device("cuda")
    assert autocast_dtype("auto", cuda) is None
    with pytest.raises(RecsysError, match="does not support bfloat16"):
        autocast_dtype("bf16", cuda)


def test_batches_stay_as_they_are_on_the_cpu() -> None:
    batch = {"history": torch.zeros(2, 3, dtype=torch.int64)}
    assert to_device(batch, CPU) is batch


def test_placed_moves_a_module_and_back_even_on_an_error() -> None:
    moves: list[torch.device] = []

    class Recorded(torch.nn.Linear):
        def to(self, *args: object, **kwargs: object) -> Recorded:
            moves.append(torch.device(str(args[0])))
            return self

    module = Recorded(2, 2)
    with pytest.raises(KeyError), placed(module, torch.device("meta")):
        raise KeyError("scoring failed")
    assert moves == [torch.device("meta"), CPU]
    assert device_of(torch.nn.ReLU()) == CPU  # nothing to move: the CPU


@pytest.mark.cuda
def test_batches_reach_cuda_through_pinned_memory() -> None:
    batch = {"history": torch.arange(6).view(2, 3), "target": torch.ones(2, 3)}
    moved = to_device(batch, torch.device("cuda"))
    torch.cuda.synchronize()
    assert all(t.device.type == "cuda" for t in moved.values())
    assert torch.equal(moved["history"].cpu(), batch["history"])
