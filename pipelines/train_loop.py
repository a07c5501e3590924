"""The per-worker Ray Train loop: DDP training on P x K batch shards, validation, checkpoints, metrics.

Every epoch has its own dataset per worker (``train_epoch_NNNN_rank_RRR``) so a restarted worker group
resumes at the first epoch its checkpoint has not finished, and no epoch is trained twice.
"""

from __future__ import annotations

import contextlib
import logging
import math
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import ray.train
import ray.train.torch
import torch

from pipelines.progress import ProgressSink
from pipelines.rows import RoleImages, collect
from pipelines.streams import iter_epoch
from sbir.checkpoint import save_checkpoint
from sbir.config import Config
from sbir.data.manifest import ClassLists
from sbir.inference.encoder import Encoder
from sbir.inference.evaluate import evaluate_gallery
from sbir.methods import MethodFamily, family_of
from sbir.training import TrainingObjective, build_scheduler

logger = logging.getLogger(__name__)

STATE_FILE = "train_state.pt"
NOT_VALIDATED = -1.0  # val_score of epochs without validation (worse than any metric in [0, 1])


@dataclass(frozen=True)
class LoopConfig:
    """What the driver hands every worker (pickled once per worker group)."""

    config: Config
    classes: ClassLists  # train = the seen classes the model trains on, val, test = unseen
    val_roles: tuple[str, ...]  # prepared roles scored for model selection; empty = no validation
    run_name: str
    tracking_uri: str | None = None
    mlflow_run_id: str | None = None
    progress: ProgressSink | None = None  # rank 0's per-epoch lines for the driver's terminal

    @property
    def checkpoint_classes(self) -> dict[str, list[str]]:
        return {"seen": self.classes.train, "val": self.classes.val, "unseen": self.classes.test}


@dataclass
class WorkerState:
    """What a checkpoint carries beside the weights so a restarted worker group resumes where it stopped."""

    epoch: int = 0  # epochs finished
    history: list[dict[str, float]] = field(default_factory=list)  # per-epoch metrics, each epoch once
    attempt: int = 0  # worker-group restarts so far

    @classmethod
    def from_saved(cls, saved: dict[str, Any]) -> WorkerState:
        return cls(int(saved["epoch"]), list(saved["history"]), int(saved["attempt"]))


def epoch_dataset_name(epoch: int, rank: int) -> str:
    return f"train_epoch_{epoch:04d}_rank_{rank:03d}"


def _autocast(precision: str, device: torch.device):
    if precision == "fp32" or device.type != "cuda":
        return contextlib.nullcontext()
    dtype = torch.float16 if precision == "amp_fp16" else torch.bfloat16
    return torch.autocast(device_type="cuda", dtype=dtype)


def read_history(checkpoint: ray.train.Checkpoint) -> list[dict[str, float]]:
    """Per-epoch metrics of every epoch up to a checkpoint (each epoch once, with the attempt that trained it)."""
    with checkpoint.as_directory() as directory:
        state = torch.load(Path(directory) / STATE_FILE, map_location="cpu", weights_only=True)
    return list(state["history"])


def _restore(checkpoint: ray.train.Checkpoint, model, optimizer, scheduler, scaler) -> WorkerState:
    from safetensors.torch import load_model

    with checkpoint.as_directory() as directory:
        load_model(model, str(Path(directory) / "model.safetensors"), strict=False)
        state = torch.load(Path(directory) / STATE_FILE, map_location="cpu", weights_only=True)
    optimizer.load_state_dict(state.pop("optimizer"))
    scheduler.load_state_dict(state.pop("scheduler"))
    scaler_state = state.pop("scaler", None)
    if scaler_state:
        scaler.load_state_dict(scaler_state)
    torch.set_rng_state(state.pop("torch_rng"))
    return WorkerState.from_saved(state)


def validate(model: torch.nn.Module, family: MethodFamily, config: Config, images: RoleImages) -> dict[str, float]:
    """Metrics of ``train.val_mode`` on the validation images, scored where the model is (its device)."""
    from sbir.inference.gallery import GalleryItem

    was_training = model.training
    model.eval()
    try:
        encoder = Encoder(model, family, family.image_transform(config, model), batch_size=config.eval.batch_size)
        photos = encoder.encode(images.photos, "photo")
        items = [
            GalleryItem(i, path, class_id=int(label), pair_id=pair or None)
            for i, (path, label, pair) in enumerate(
                zip(images.photo_paths, images.photo_labels, images.photo_pairs, strict=True)
            )
        ]
        gallery = family.gallery(model, photos, items, config.index)
        result = evaluate_gallery(
            gallery,
            encoder.encode(images.sketches, "sketch"),
            images.sketch_labels,
            family.retrieval_modes([config.train.val_mode]),
            config.eval,
            query_pairs=images.sketch_pairs,
        )
    finally:
        model.train(was_training)
    return next(iter(result.metrics.values()))


class EpochTotals(NamedTuple):
    """What one epoch of optimizer steps adds up to on this rank."""

    sums: dict[str, float]  # loss parts summed over micro-batches
    micro: int  # micro-batches trained
    images: int  # sketches + photos consumed
    waited: float  # seconds spent waiting for the next batch
    seconds: float  # wall time of the epoch's steps


def _train_epoch(ddp, batches: Iterator[dict], optimizer, scheduler, scaler, train, world: int, device) -> EpochTotals:
    """Train on every batch of one epoch shard, stepping the optimizer every `train.grad_accum` micro-batches."""
    accum = train.grad_accum
    sums: dict[str, float] = {}
    micro = images = 0
    waited = 0.0
    started = time.perf_counter()
    while True:
        tick = time.perf_counter()
        batch = next(batches, None)
        waited += time.perf_counter() - tick
        if batch is None:
            break
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items() if k != "batch"}
        sync = (micro + 1) % accum == 0
        no_sync = ddp.no_sync() if (world > 1 and not sync and hasattr(ddp, "no_sync")) else contextlib.nullcontext()
        with no_sync, _autocast(train.precision, device):
            parts = ddp(batch)
        scaler.scale(parts["loss"] / accum).backward() if scaler.is_enabled() else (parts["loss"] / accum).backward()
        if sync:
            if scaler.is_enabled():
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
        for name, value in parts.items():
            sums[name] = sums.get(name, 0.0) + float(value.detach())
        micro += 1
        images += int(batch["sketch"].shape[0]) * 2
    return EpochTotals(sums, micro, images, waited, time.perf_counter() - started)


class _Run(NamedTuple):
    """One worker's training objects."""

    model: torch.nn.Module
    ddp: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    state: WorkerState


def _setup(loop: LoopConfig, family: MethodFamily, rank: int, device: torch.device) -> _Run:
    """Build the model (same initial weights on every rank), objective and optimiser; restore a checkpoint."""
    config, train = loop.config, loop.config.train
    torch.manual_seed(train.seed)
    model = family.build_model(config.model, class_names=loop.classes.train)
    objective = TrainingObjective(model, config, seed=train.seed * 1009 + rank)
    optimizer = family.optimizer(model, config)
    scheduler = build_scheduler(optimizer, config)
    scaler = torch.amp.GradScaler("cuda", enabled=train.precision == "amp_fp16" and device.type == "cuda")
    state = WorkerState()
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        state = _restore(checkpoint, model, optimizer, scheduler, scaler)
        state.attempt += 1
        logger.info("rank %d resumes after epoch %d (attempt %d)", rank, state.epoch, state.attempt)
    ddp = ray.train.torch.prepare_model(objective, parallel_strategy_kwargs={"find_unused_parameters": True})
    return _Run(model, ddp, optimizer, scheduler, scaler, state)


def _epoch_metrics(totals: EpochTotals, epoch: int, run: _Run) -> dict[str, float]:
    loss = totals.sums["loss"] / totals.micro
    if not math.isfinite(loss):
        raise FloatingPointError(f"training loss became {loss} in epoch {epoch + 1}; lower train.lr")
    metrics = {f"train_{k}": v / totals.micro for k, v in totals.sums.items()}
    return (
        metrics
        | {
            "epoch": epoch + 1,
            "attempt": run.state.attempt,
            "lr": run.optimizer.param_groups[0]["lr"],
            "samples_per_s": totals.images / totals.seconds,
            "input_wait_share": totals.waited / totals.seconds,
            "epoch_seconds": totals.seconds,
            "val_score": NOT_VALIDATED,
        }
        | _gpu_memory()
    )


def _gpu_memory() -> dict[str, float]:
    """Peak GPU memory this worker allocated so far (only when it trains on CUDA; `make gpu-check` reads it)."""
    if not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return {}
    return {"gpu_peak_memory_mb": torch.cuda.max_memory_allocated() / 2**20}


def _save_and_report(loop: LoopConfig, run: _Run, metrics: dict[str, float]) -> None:
    """Rank 0: the project checkpoint plus the resume state, reported to Ray Train with the metrics."""
    epoch = int(metrics["epoch"])
    with tempfile.TemporaryDirectory() as tmp:
        save_checkpoint(
            tmp,
            run.model,
            loop.config,
            classes=loop.checkpoint_classes,
            metrics={k: float(v) for k, v in metrics.items() if k.startswith("val_")},
            extra={"epoch": epoch, "run_name": loop.run_name},
        )
        resume_state = asdict(run.state) | {
            "optimizer": run.optimizer.state_dict(),
            "scheduler": run.scheduler.state_dict(),
            "scaler": run.scaler.state_dict() if run.scaler.is_enabled() else None,
            "torch_rng": torch.get_rng_state(),
        }
        torch.save(resume_state, Path(tmp) / STATE_FILE)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def train_loop_per_worker(train_loop_config: dict[str, LoopConfig]) -> None:
    """Ray Train entry point (runs on every worker); ``train_loop_config["loop"]`` is the :class:`LoopConfig`."""
    loop = train_loop_config["loop"]
    config, train = loop.config, loop.config.train
    family = family_of(config)
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    run = _setup(loop, family, rank, device)
    tracker = None
    if rank == 0 and loop.mlflow_run_id and loop.tracking_uri:
        from pipelines.tracking import Tracker

        tracker = Tracker.attach(loop.tracking_uri, loop.mlflow_run_id)

    val_images: RoleImages | None = None
    epochs = range(run.state.epoch, train.epochs)
    shards = {e: ray.train.get_dataset_shard(epoch_dataset_name(e, rank)) for e in epochs}
    for epoch in epochs:
        run.ddp.train()
        batches = iter_epoch(shards[epoch])
        totals = _train_epoch(run.ddp, batches, run.optimizer, run.scheduler, run.scaler, train, world, device)
        if totals.micro == 0:
            raise RuntimeError(f"rank {rank} got no batches for epoch {epoch + 1}; check steps_per_epoch and workers")
        metrics = _epoch_metrics(totals, epoch, run)
        due = epoch + 1 >= train.val_from_epoch and (epoch + 1 - train.val_from_epoch) % train.val_every == 0
        if rank == 0 and due and loop.val_roles:
            if val_images is None:
                val_images = collect(
                    ray.train.get_dataset_shard("val").iter_batches(batch_size=256, batch_format="numpy")
                )
            if len(val_images.sketch_labels) and len(val_images.photo_labels):
                val = validate(run.model, family, config, val_images)
                metrics |= {f"val_{k}": v for k, v in val.items() if not k.startswith("n_")}
                metrics["val_score"] = float(val[train.val_metric])
        run.state.epoch = epoch + 1
        run.state.history.append({k: float(v) for k, v in metrics.items()})
        if rank != 0:
            ray.train.report(metrics, checkpoint=None)
            continue
        _save_and_report(loop, run, metrics)
        if tracker is not None:
            tracker.log_metrics({k: float(v) for k, v in metrics.items() if k != "epoch"}, step=epoch + 1)
        if loop.progress is not None:
            loop.progress.epoch_done(metrics, train.epochs, train.steps_per_epoch, train.val_metric)
