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
from pathlib import Path
from typing import Any, NamedTuple

import ray.train
import ray.train.torch
import torch

from pipelines.rows import collect
from pipelines.streams import iter_epoch
from sbir.checkpoint import save_checkpoint
from sbir.config import Config
from sbir.evaluation import encode_images, evaluate_encoded
from sbir.models import build_model
from sbir.training import TrainingObjective, build_optimizer, build_scheduler

logger = logging.getLogger(__name__)

STATE_FILE = "train_state.pt"
NOT_VALIDATED = -1.0  # val_score of epochs without validation (worse than any metric in [0, 1])


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


def _restore(checkpoint: ray.train.Checkpoint, model, optimizer, scheduler, scaler) -> dict[str, Any]:
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
    return state


def _validate(model, config: Config, val_images, device) -> dict[str, float]:
    method = config.model.method
    model.eval()
    sketches = encode_images(model, method, val_images.sketches.to(device), "sketch", config.eval.batch_size)
    photos = encode_images(model, method, val_images.photos.to(device), "photo", config.eval.batch_size)
    result = evaluate_encoded(
        model,
        method,
        _cpu(sketches),
        val_images.sketch_labels,
        _cpu(photos),
        val_images.photo_labels,
        config.eval,
        [config.train.val_mode],
        pair_index=val_images.pair_index(),
    )
    model.train()
    return next(iter(result.metrics.values()))


def _cpu(encoding):
    return encoding.to("cpu") if hasattr(encoding, "to") else encoding


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


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train entry point (runs on every worker)."""
    config = Config.model_validate(loop_config["config"])
    train = config.train
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.manual_seed(train.seed)  # identical initial weights on every rank
    device = ray.train.torch.get_device()

    model = build_model(config.model, class_names=loop_config["train_classes"])
    objective = TrainingObjective(model, config, seed=train.seed * 1009 + rank)
    optimizer = build_optimizer(model, config)
    scheduler = build_scheduler(optimizer, config)
    scaler = torch.amp.GradScaler("cuda", enabled=train.precision == "amp_fp16" and device.type == "cuda")

    state: dict[str, Any] = {"epoch": 0, "history": [], "attempt": 0, "best_val": NOT_VALIDATED}
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        state = _restore(checkpoint, model, optimizer, scheduler, scaler)
        state["attempt"] += 1
        logger.info("rank %d resumes after epoch %d (attempt %d)", rank, state["epoch"], state["attempt"])

    ddp = ray.train.torch.prepare_model(objective, parallel_strategy_kwargs={"find_unused_parameters": True})
    tracker = None
    if rank == 0 and loop_config.get("mlflow_run_id"):
        from pipelines.tracking import Tracker

        tracker = Tracker.attach(loop_config["tracking_uri"], loop_config["mlflow_run_id"])

    val_images = None
    epochs = range(state["epoch"], train.epochs)
    shards = {e: ray.train.get_dataset_shard(epoch_dataset_name(e, rank)) for e in epochs}
    for epoch in epochs:
        ddp.train()
        sums, micro, images, waited, seconds = _train_epoch(
            ddp, iter_epoch(shards[epoch]), optimizer, scheduler, scaler, train, world, device
        )
        if micro == 0:
            raise RuntimeError(f"rank {rank} got no batches for epoch {epoch + 1}; check steps_per_epoch and workers")
        loss = sums["loss"] / micro
        if not math.isfinite(loss):
            raise FloatingPointError(f"training loss became {loss} in epoch {epoch + 1}; lower train.lr")

        metrics: dict[str, Any] = {f"train_{k}": v / micro for k, v in sums.items()}
        metrics |= {
            "epoch": epoch + 1,
            "attempt": state["attempt"],
            "lr": optimizer.param_groups[0]["lr"],
            "samples_per_s": images / seconds,
            "input_wait_share": waited / seconds,
            "epoch_seconds": seconds,
            "val_score": NOT_VALIDATED,
        }
        due = epoch + 1 >= train.val_from_epoch and (epoch + 1 - train.val_from_epoch) % train.val_every == 0
        if rank == 0 and due and loop_config["val_roles"]:
            if val_images is None:
                val_images = collect(
                    ray.train.get_dataset_shard("val").iter_batches(batch_size=256, batch_format="numpy")
                )
            if len(val_images.sketch_labels) and len(val_images.photo_labels):
                val = _validate(model, config, val_images, device)
                metrics |= {f"val_{k}": v for k, v in val.items() if not k.startswith("n_")}
                metrics["val_score"] = float(val[train.val_metric])
        state["epoch"] = epoch + 1
        state["history"].append({k: float(v) for k, v in metrics.items()})
        if metrics["val_score"] > state["best_val"]:
            state["best_val"] = metrics["val_score"]

        if rank == 0:
            with tempfile.TemporaryDirectory() as tmp:
                save_checkpoint(
                    tmp,
                    model,
                    config,
                    classes=loop_config["classes"],
                    metrics={k: float(v) for k, v in metrics.items() if k.startswith("val_")},
                    extra={"epoch": epoch + 1, "run_name": loop_config["run_name"]},
                )
                torch.save(
                    state
                    | {
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "scaler": scaler.state_dict() if scaler.is_enabled() else None,
                        "torch_rng": torch.get_rng_state(),
                    },
                    Path(tmp) / STATE_FILE,
                )
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
            if tracker is not None:
                tracker.log_metrics({k: float(v) for k, v in metrics.items() if k != "epoch"}, step=epoch + 1)
        else:
            ray.train.report(metrics, checkpoint=None)
