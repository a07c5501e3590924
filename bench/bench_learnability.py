"""How fast do the tiny demo models learn from scratch, and does it transfer to unseen classes?

In-process (no Ray), so only the model and the loss are measured: each arm trains on class-balanced
P x K batches of the seen classes of a synthetic dataset and reports unseen-class (and seen-class)
mAP@all of ``ret`` retrieval at a few step counts. Arms:

* ``synthetic_zse`` and ``synthetic_clip_at`` with their own objectives (``TrainingObjective``), once with
  the presets' conv-BN stem and once with the paper's patch embedding (``stem: patch``);
* the same two models (conv-BN stem) with a supervised InfoNCE loss on their retrieval embeddings, to
  separate the loss from the architecture;
* a reference 4-layer CNN (not part of sbir) with the same InfoNCE loss, to show whether the
  synthetic data supports zero-shot transfer at all.

    .venv/bin/python bench/bench_learnability.py --write docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from report import machine_line, write_section
from torch import nn

from sbir.config import Config, load_config
from sbir.data.readers import read_split
from sbir.data.synth import write_synthetic_dataset
from sbir.inference.transforms import Geometry, ImageTransform
from sbir.methods import MethodFamily, family_of
from sbir.metrics import compute_metrics
from sbir.training.objective import TrainingObjective
from sbir.training.optim import build_optimizer

SECTION = "## Learnability: tiny models from scratch"
Images = dict[str, tuple[torch.Tensor, np.ndarray]]  # modality -> (images, class ids)
Embed = Callable[[torch.Tensor, str], torch.Tensor]

log = logging.getLogger("bench_learnability")


@dataclass
class Arm:
    name: str
    model: nn.Module
    embed: Embed  # images, modality -> B x E retrieval embedding (with gradients)
    transform: ImageTransform
    loss: Callable[[dict[str, torch.Tensor]], torch.Tensor]
    optimizer: torch.optim.Optimizer


@dataclass
class Point:
    arm: str
    step: int
    unseen: float
    seen: float
    seconds: float


def load_role(split, transform: ImageTransform, role: str) -> Images:
    out: Images = {}
    for modality in ("sketch", "photo"):
        records = [r for r in split.records if r.role == role and r.modality == modality]
        images = [transform(Image.open(Path(split.root) / r.path).convert("RGB"), modality) for r in records]
        out[modality] = (torch.stack(images), np.array([split.class_id(r.class_name) for r in records]))
    return out


def info_nce(embed: Embed) -> Callable[[dict[str, torch.Tensor]], torch.Tensor]:
    """Supervised, symmetric InfoNCE over the batch's sketch x photo cosine matrix (temperature 0.1)."""

    def loss(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        s = F.normalize(embed(batch["sketch"], "sketch"), dim=-1)
        p = F.normalize(embed(batch["photo"], "photo"), dim=-1)
        logits = s @ p.T / 0.1
        positive = (batch["sketch_label"][:, None] == batch["photo_label"][None, :]).float()
        rows = -(F.log_softmax(logits, 1) * positive).sum(1) / positive.sum(1)
        cols = -(F.log_softmax(logits.T, 1) * positive.T).sum(1) / positive.T.sum(1)
        return rows.mean() + cols.mean()

    return loss


class ReferenceCNN(nn.Module):
    """Shared 4-block conv encoder (conv3x3-BN-ReLU-maxpool) with global pooling: the transfer yardstick."""

    def __init__(self, dim: int = 64) -> None:
        super().__init__()
        blocks, channels = [], [3, 32, 64, 128, 128]
        for c_in, c_out in itertools.pairwise(channels):
            blocks += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(), nn.MaxPool2d(2)]
        self.net = nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels[-1], dim))

    def forward(self, images: torch.Tensor, modality: str) -> torch.Tensor:
        return self.net(images)


def sbir_embed(model: nn.Module, family: MethodFamily) -> Embed:
    """The family's retrieval embedding (normalised [Ret] token, or the CLIP-AT embedding), with gradients."""

    def embed(images: torch.Tensor, modality: str) -> torch.Tensor:
        return family.encode(model, images, modality).retrieval_embeddings()

    return embed


def build_arms(config: Config, train_classes: list[str], lr: float) -> list[Callable[[], Arm]]:
    """Factories, so each arm builds (and seeds) its model only when it runs."""

    def sbir_arm(preset: str, objective: str, stem: str) -> Callable[[], Arm]:
        def make() -> Arm:
            method = load_config(preset, []).model.method
            cfg = load_config(preset, [f"model.{method}.stem={stem}"])
            torch.manual_seed(cfg.train.seed)
            family = family_of(cfg)
            model = family.build_model(cfg.model, class_names=train_classes, load_pretrained=False)
            embed = sbir_embed(model, family)
            if objective == "own":
                training = TrainingObjective(model, cfg, seed=0)

                def loss(batch: dict[str, torch.Tensor]) -> torch.Tensor:
                    return training(batch)["loss"]
            else:
                loss = info_nce(embed)
            transform = family.image_transform(cfg, model)
            name = f"{preset}, {stem} stem ({objective} loss)"
            return Arm(name, model, embed, transform, loss, build_optimizer(model, cfg))

        return make

    def cnn_arm() -> Arm:
        torch.manual_seed(0)
        model = ReferenceCNN()
        white_pad = Geometry("pad", "bicubic", fill=255)
        transform = ImageTransform(config.model.zse.image_size, white_pad, white_pad)
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-2)
        return Arm("reference CNN (InfoNCE)", model, model, transform, info_nce(model), optimizer)

    return [
        sbir_arm("synthetic_zse", "own", "conv_bn"),
        sbir_arm("synthetic_zse", "own", "patch"),
        sbir_arm("synthetic_zse", "InfoNCE", "conv_bn"),
        sbir_arm("synthetic_clip_at", "own", "conv_bn"),
        sbir_arm("synthetic_clip_at", "own", "patch"),
        sbir_arm("synthetic_clip_at", "InfoNCE", "conv_bn"),
        cnn_arm,
    ]


@torch.no_grad()
def map_all(arm: Arm, data: Images) -> float:
    arm.model.eval()
    sketches = torch.cat([arm.embed(x, "sketch") for x in data["sketch"][0].split(128)])
    photos = torch.cat([arm.embed(x, "photo") for x in data["photo"][0].split(128)])
    scores = F.normalize(sketches, dim=-1) @ F.normalize(photos, dim=-1).T
    return compute_metrics(scores.numpy(), data["sketch"][1], data["photo"][1])["map_all_voc"]


def chance_map(split) -> float:
    """Unseen mAP@all of uniformly random scores: the floor every arm starts near."""
    test = [r for r in split.records if r.role == "test"]
    sketch = np.array([split.class_id(r.class_name) for r in test if r.modality == "sketch"])
    photo = np.array([split.class_id(r.class_name) for r in test if r.modality == "photo"])
    rng = np.random.default_rng(0)
    runs = [compute_metrics(rng.random((len(sketch), len(photo))), sketch, photo)["map_all_voc"] for _ in range(5)]
    return float(np.mean(runs))


def run_arm(arm: Arm, split, steps: int, checkpoints: set[int], classes_per_batch: int, k: int) -> list[Point]:
    train, test = load_role(split, arm.transform, "train"), load_role(split, arm.transform, "test")
    seen_probe = {m: (x[::3], y[::3]) for m, (x, y) in train.items()}  # a third of the seen images
    rng = np.random.default_rng(0)
    classes = np.unique(train["photo"][1])
    index = {m: {c: np.flatnonzero(train[m][1] == c) for c in classes} for m in ("sketch", "photo")}
    points = [Point(arm.name, 0, map_all(arm, test), map_all(arm, seen_probe), 0.0)]
    started = time.perf_counter()
    for step in range(1, steps + 1):
        arm.model.train()
        chosen = rng.choice(classes, classes_per_batch, replace=False)
        batch: dict[str, torch.Tensor] = {}
        for m in ("sketch", "photo"):
            rows = np.concatenate([rng.choice(index[m][c], k, replace=len(index[m][c]) < k) for c in chosen])
            batch[m] = train[m][0][rows]
            batch[f"{m}_label"] = torch.as_tensor(train[m][1][rows])
        loss = arm.loss(batch)
        arm.optimizer.zero_grad()
        loss.backward()
        arm.optimizer.step()
        if step in checkpoints:
            elapsed = time.perf_counter() - started
            points.append(Point(arm.name, step, map_all(arm, test), map_all(arm, seen_probe), elapsed))
            log.info("%s step %d: unseen %.4f seen %.4f (%.0f s)", arm.name, step, points[-1].unseen,
                     points[-1].seen, elapsed)  # fmt: skip
    return points


def report_body(args, points: list[Point], counts: dict[str, int], chance_note: str) -> str:
    steps = sorted({p.step for p in points})
    header = "| arm | " + " | ".join(f"step {s}" for s in steps) + " | s/step |"
    lines = [header, "|---|" + "---:|" * (len(steps) + 1)]
    for arm in dict.fromkeys(p.arm for p in points):
        mine = {p.step: p for p in points if p.arm == arm}
        cells = [f"{mine[s].unseen:.3f} / {mine[s].seen:.3f}" for s in steps]
        last = mine[steps[-1]]
        lines.append(f"| {arm} | " + " | ".join(cells) + f" | {last.seconds / max(last.step, 1):.3f} |")
    table = "\n".join(lines)
    return f"""Measured {dt.date.today()} on the project machine with `bench/bench_learnability.py`: {machine_line()},
torch {torch.__version__} with {args.threads} threads, in one process (no Ray: the input pipeline is not measured).
Data: the built-in synthetic generator, {args.classes} classes x {args.per_class} sketches + {args.per_class} photos at
{args.size} px, 20% unseen ({counts["train"]} seen-class training images, {counts["test"]} unseen-class images).
Each arm trains {args.steps} steps on P x K = {args.p} x {args.k} batches of the seen classes (seed 0).
Cells are **unseen / seen** mAP@all of `ret` retrieval (`map_all_voc`): unseen = every unseen-class sketch against
every unseen-class photo; seen = a third of the training sketches against a third of the training photos.
{chance_note}

{table}

Each arm is the preset as shipped except for its `stem`: *conv_bn* is the presets' setting
(`sbir/models/conv_stem.py`: 3x3 conv-BN-ReLU-maxpool stages in place of the patch embedding), *patch* the papers'
patch embedding. *own loss* is the preset's training objective (ZSE-SBIR: triplet on both features + relation
MSE; CLIP-AT: its category-level triplet + classification objective). *InfoNCE* replaces it with a supervised
symmetric InfoNCE (temperature 0.1) on the same retrieval embedding.
The reference CNN (4 conv-BN-ReLU-maxpool blocks, global average pooling, shared by
both modalities, AdamW lr {args.lr}) is not part of sbir: it is the yardstick that shows whether the data allows
zero-shot transfer from scratch in this step budget.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--per-class", type=int, default=30)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--evals", type=int, default=4, help="evaluations after training starts")
    parser.add_argument("--p", type=int, default=8, help="classes per batch")
    parser.add_argument("--k", type=int, default=3, help="sketches and photos per class")
    parser.add_argument("--lr", type=float, default=1e-3, help="reference CNN learning rate")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", default="", help="comma-separated substrings of arm names to run")
    parser.add_argument("--write", type=Path, help="update this Markdown file's section")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="sbir-bench-learn-"))
    try:
        write_synthetic_dataset(
            tmp / "data", seed=0, num_classes=args.classes, sketches_per_class=args.per_class,
            photos_per_class=args.per_class, image_size=args.size, unseen_fraction=0.2,
            workers=min(2, os.cpu_count() or 1), progress=False,
        )  # fmt: skip
        split = read_split("synthetic", tmp / "data", "zeroshot1")
        counts = {role: sum(r.role == role for r in split.records) for role in ("train", "test")}
        checkpoints = {round(args.steps * (i + 1) / args.evals) for i in range(args.evals)}
        config = load_config("synthetic_zse", [])
        points: list[Point] = []
        wanted = [w for w in args.only.split(",") if w]
        for make in build_arms(config, split.train_classes, args.lr):
            arm = make()
            if wanted and not any(w in arm.name for w in wanted):
                continue
            log.info("arm %s", arm.name)
            points += run_arm(arm, split, args.steps, checkpoints, args.p, args.k)
        chance_note = f"A random ranking scores {chance_map(split):.3f} unseen mAP@all (mean of 5 seeds)."
        body = report_body(args, points, counts, chance_note)
        print(body)
        if args.write:
            write_section(args.write, SECTION, body)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
