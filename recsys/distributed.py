"""Data-parallel training: one model trained by several processes with ``torch.distributed``.

:func:`train_parallel` starts ``nproc`` processes (``torch.multiprocessing``, spawned), joins
them in a process group (gloo on CPU, NCCL when the training device is CUDA; rank ``r`` then
uses GPU ``r``) and runs :func:`recsys.training.train` in each. There the model is wrapped in
``DistributedDataParallel``: every rank draws the same seeded batches of ``batch_size /
nproc`` and takes every ``nproc``-th one, so a step still learns from ``batch_size`` examples
(the gradients are averaged across ranks) and an epoch takes as many steps as in one process.
Decisions that must agree across ranks do: rank 0 computes the validation score and
broadcasts it (early stopping), and a rank out of time stops every rank at the same step.

Only rank 0 writes its result (the best weights and the :class:`TrainResult`); the caller's
process then evaluates, exports and registers once, as after a one-process run. Closed-form
models (EASE, popularity) are fitted in one process whatever ``nproc`` says.
"""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.multiprocessing.spawn import spawn
from torch.nn.parallel import DistributedDataParallel

from recsys.errors import RecsysError

if TYPE_CHECKING:
    from recsys.data.splits import Split
    from recsys.models.base import Recommender

# recsys.training's train, TrainConfig and TrainResult: passed in, since the training loop
# imports this module (the packages import one another one way).
TrainFunction = Callable[..., Any]

_T = TypeVar("_T")
MAX_PROCESSES = 64


def world() -> tuple[int, int]:
    """(rank, number of processes) of this process; (0, 1) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard(batches: Iterator[_T], rank: int, size: int) -> Iterator[_T]:
    """Rank ``rank``'s batches: one of every ``size`` in turn. Every rank gets as many: a
    last round with fewer than ``size`` batches is left out (a rank waiting for a gradient
    that never comes would hang)."""
    if size == 1:
        yield from batches
        return
    round_: list[_T] = []
    for batch in batches:
        round_.append(batch)
        if len(round_) == size:
            yield round_[rank]
            round_ = []


class _LossOf(nn.Module):
    """The model's training loss as ``forward``: DDP averages gradients of what its forward
    computed, and the models compute their loss in ``loss``."""

    def __init__(self, model: Recommender) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        return self.model.loss(batch)


def loss_function(model: Recommender) -> Callable[[dict[str, Tensor]], Tensor]:
    """``model.loss``, through ``DistributedDataParallel`` inside a process group of several."""
    _, size = world()
    if size == 1:
        return model.loss
    parameter = next(model.parameters(), None)
    on_cuda = parameter is not None and parameter.device.type == "cuda"
    wrapped = DistributedDataParallel(
        _LossOf(model), device_ids=[parameter.device] if on_cuda and parameter else None
    )
    return wrapped  # type: ignore[no-any-return]


def agreed_score(value: float) -> float:
    """Rank 0's ``value`` on every rank (the validation score early stopping reads)."""
    _, size = world()
    if size == 1:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=_collective_device())
    dist.broadcast(tensor, src=0)
    return float(tensor.item())


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on any (e.g. one rank ran out of time)."""
    _, size = world()
    if size == 1:
        return flag
    tensor = torch.tensor([1 if flag else 0], dtype=torch.int32, device=_collective_device())
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item())


def _collective_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def train_parallel(
    train: TrainFunction,
    build: Callable[[], Recommender],
    data: Split,
    config: Any,
    nproc: int,
) -> tuple[dict[str, Tensor], Any]:
    """Train ``build()``'s model on ``data`` with ``train`` (recsys.training's, given its
    TrainConfig) in ``nproc`` processes; rank 0's best weights and TrainResult. ``build``
    must be picklable (a module-level function or a partial of one)."""
    if not 1 <= nproc <= MAX_PROCESSES:
        raise RecsysError(f"nproc must be between 1 and {MAX_PROCESSES}, got {nproc}")
    backend = "nccl" if str(getattr(config, "device", "cpu")).startswith("cuda") else "gloo"
    if backend == "nccl" and torch.cuda.device_count() < nproc:
        raise RecsysError(
            f"nproc {nproc} needs as many GPUs; this machine has {torch.cuda.device_count()}"
        )
    with tempfile.TemporaryDirectory(prefix="recsys-ddp-") as scratch:
        out = Path(scratch) / "rank0.pt"
        spawn(  # type: ignore[no-untyped-call]
            _worker,
            args=(nproc, _free_port(), backend, train, build, data, config, out),
            nprocs=nproc,
            join=True,
        )
        saved: dict[str, Any] = torch.load(out, weights_only=False)
    return saved["state"], saved["result"]


def _worker(
    rank: int,
    nproc: int,
    port: int,
    backend: str,
    train: TrainFunction,
    build: Callable[[], Recommender],
    data: Split,
    config: Any,
    out: Path,
) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    if backend == "nccl":
        torch.cuda.set_device(rank)
    dist.init_process_group(backend, rank=rank, world_size=nproc)
    try:
        # ``batch_size`` stays the batch of one step: each rank computes its part of it, so an
        # epoch takes as many steps as in one process, with the same learning rate. The cores
        # are shared out too: each rank gets its part of the threads asked for.
        threads = config.threads or os.cpu_count() or 1
        config = replace(
            config,
            batch_size=max(1, config.batch_size // nproc),
            threads=max(1, threads // nproc),
            **({"device": f"cuda:{rank}"} if backend == "nccl" else {}),
        )
        torch.manual_seed(config.seed)  # the same initial weights on every rank
        model = build()
        result = train(model, data, config)
        _check_in_step(model, rank, nproc)
        if rank == 0:
            torch.save({"state": model.state_dict(), "result": result}, out)
        # Every rank is done before any tears the group down: gloo aborted a rank whose peer
        # had already closed its connections (SIGABRT in a README run of --nproc 2).
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _check_in_step(model: Recommender, rank: int, nproc: int) -> None:
    """Every rank must end with rank 0's weights (the gradients were averaged each step)."""
    device = _collective_device()
    total = sum(
        (p.detach().double().sum() for p in model.parameters()),
        torch.zeros((), dtype=torch.float64),
    )
    mine = total.reshape(1).to(device)
    every = [torch.zeros(1, dtype=torch.float64, device=device) for _ in range(nproc)]
    dist.all_gather(every, mine)
    sums = [float(t.item()) for t in every]
    if rank == 0 and any(abs(s - sums[0]) > 1e-9 * max(1.0, abs(sums[0])) for s in sums):
        raise RecsysError(f"the training processes' weights diverged: parameter sums {sums}")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
