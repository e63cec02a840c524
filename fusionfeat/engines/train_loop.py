"""The fine-tuning engine: one backbone with a small classification head, trained on one fold's images.

Research parts (the head, the loss, the augmentation) sit apart from the engineering (devices, precision,
DistributedDataParallel, checkpoints). Everything random is drawn from seeds fixed per epoch and shared by
all ranks, so a run resumed from its last saved epoch continues as if it had never stopped, and a run on
several processes sees the same batches and augmentations as a single process.
"""

from __future__ import annotations

import io
import math
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from fusionfeat import runtime
from fusionfeat.encoders import Stage, embed, get_backbone
from fusionfeat.engines.distributed import SINGLE, DistContext
from fusionfeat.engines.image_bank import ImageBank
from fusionfeat.errors import DamagedBatchWarning, FusionfeatError
from fusionfeat.fsio import atomic_write_bytes, write_json
from fusionfeat.runtime import autocast

FINETUNE_BALANCES = ("weight", "sampler", "none")
AUGMENTS = ("flip", "rot90", "jitter")
EVAL_BATCH = 128


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one fine-tuning; all of them are recorded beside the checkpoint."""

    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    backbone_lr_scale: float = 0.1
    weight_decay: float = 0.01
    warmup_epochs: float = 1.0
    freeze_stages: int = 0
    label_smoothing: float = 0.0
    balance: str = "weight"
    patience: int = 3
    augment: tuple[str, ...] = AUGMENTS
    jitter: float = 0.1
    head_dropout: float = 0.2
    val_fraction: float = 0.15
    seed: int = 0

    def __post_init__(self):
        for name in ("lr", "backbone_lr_scale", "weight_decay", "warmup_epochs", "label_smoothing", "jitter",
                     "head_dropout", "val_fraction"):  # 0 and 0.0 are one setting: the settings hash must agree
            value = getattr(self, name)
            if isinstance(value, int | float) and not isinstance(value, bool):
                object.__setattr__(self, name, float(value))
        checks = [
            (self.epochs >= 1, "--epochs must be 1 or more"),
            (self.batch_size >= 2, "--batch-size must be 2 or more (batch norm needs two images)"),
            (math.isfinite(self.lr) and self.lr > 0, "--lr must be a positive finite number"),
            (math.isfinite(self.backbone_lr_scale) and self.backbone_lr_scale >= 0,
             "--backbone-lr-scale must be a finite number of 0 or more (0 trains the head only)"),
            (math.isfinite(self.weight_decay) and self.weight_decay >= 0, "--weight-decay must be a finite 0 or more"),
            (math.isfinite(self.warmup_epochs) and self.warmup_epochs >= 0,
             "--warmup-epochs must be a finite 0 or more"),
            (self.freeze_stages >= 0, "--freeze-stages must be 0 or more"),
            (0 <= self.label_smoothing < 1, "--label-smoothing must be in [0, 1)"),
            (self.balance in FINETUNE_BALANCES,
             f"--balance {self.balance!r}: choose one of {', '.join(FINETUNE_BALANCES)}"),
            (self.patience >= 0, "--patience must be 0 (no early stopping) or more"),
            (0 <= self.jitter < 1, "colour jitter strength must be in [0, 1)"),
            (0 <= self.head_dropout < 1, "--head-dropout must be in [0, 1)"),
            (0 <= self.val_fraction < 0.9, "--val-fraction must be in [0, 0.9) (0: no inner validation)"),
        ]
        for ok, message in checks:
            if not ok:
                raise FusionfeatError(message)
        unknown = [a for a in self.augment if a not in AUGMENTS]
        if unknown:
            raise FusionfeatError(f"--augment {','.join(unknown)}: choose from {', '.join(AUGMENTS)} or none")

    def as_dict(self) -> dict:
        return {**asdict(self), "augment": list(self.augment)}


def parse_augment(value: str) -> tuple[tuple[str, ...], float]:
    """``"flip,rot90,jitter=0.15"`` → (names, jitter strength); ``"none"`` → no augmentation."""
    names, jitter = [], TrainConfig.jitter
    for part in (p.strip().lower() for p in value.split(",")):
        if not part or part == "none":
            continue
        name, sep, amount = part.partition("=")
        if sep:
            if name != "jitter":
                raise FusionfeatError(f"--augment {part!r}: only jitter takes a strength (jitter=0.1)")
            try:
                jitter = float(amount)
            except ValueError:
                raise FusionfeatError(f"--augment {part!r}: the jitter strength must be a number") from None
        names.append(name)
    unknown = [n for n in names if n not in AUGMENTS]
    if unknown:
        raise FusionfeatError(f"--augment {','.join(unknown)}: choose from {', '.join(AUGMENTS)} or none")
    return tuple(dict.fromkeys(names)), jitter


# ----------------------------------------------------------------------------------------------- model


class FineTuneNet(nn.Module):
    """A backbone trunk, its pooled vector (``backbones.embed``) and a dropout + linear head (thrown away later)."""

    def __init__(self, trunk: nn.Module, dim: int, n_classes: int = 2, dropout: float = 0.2, seed: int = 0,
                 backbone: str = ""):
        super().__init__()
        self.trunk = trunk
        self.backbone = backbone  # registry name: where --freeze-stages finds the stages
        with torch.random.fork_rng(devices=[]):  # the same head on every rank and every rerun
            torch.manual_seed(seed)
            self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(dim, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(embed(self.trunk, x, tokens=False)[0])


def trunk_stages(trunk: nn.Module, backbone: str) -> list[Stage]:
    """The trunk's stages, input first, as its registry entry defines them (ResNet: stem + 4 layers; VGG: 5 conv
    blocks); items are modules or bare parameters (a ViT's class token)."""
    return get_backbone(backbone).stages(trunk)


def freeze_stages(model: FineTuneNet, n: int) -> list[nn.Module]:
    """Freeze the first ``n`` stages (no gradients, batch norm statistics kept); returns the frozen modules."""
    if n == 0:
        return []
    stages = trunk_stages(model.trunk, model.backbone)
    if n > len(stages):
        raise FusionfeatError(f"--freeze-stages {n}: the {model.backbone} backbone has {len(stages)} stages")
    frozen = [m for stage in stages[:n] for m in stage]
    for item in frozen:
        item.requires_grad_(False)
    return [m for m in frozen if isinstance(m, nn.Module)]


def param_groups(model: FineTuneNet, config: TrainConfig) -> list[dict]:
    """AdamW groups: backbone at ``lr * backbone_lr_scale``, head at ``lr``; no weight decay on biases and norms."""
    groups = []
    for part, lr in ((model.trunk, config.lr * config.backbone_lr_scale), (model.head, config.lr)):
        params = [p for p in part.parameters() if p.requires_grad]
        if lr == 0:
            for p in params:
                p.requires_grad_(False)
            continue
        decay = [p for p in params if p.ndim > 1]
        rest = [p for p in params if p.ndim <= 1]
        groups += [{"params": ps, "lr": lr, "base_lr": lr, "weight_decay": wd}
                   for ps, wd in ((decay, config.weight_decay), (rest, 0.0)) if ps]
    return groups


def lr_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """Linear warm-up from ``1/warmup`` to 1, then cosine decay to 0 at ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


# ----------------------------------------------------------------------------------------------- data


def class_weights(labels: np.ndarray, balance: str) -> np.ndarray:
    """Per-class loss weights: ``n / (2 n_c)`` for ``weight``, ones otherwise."""
    counts = np.bincount(labels, minlength=2).astype(np.float64)
    if balance != "weight":
        return np.ones(len(counts))
    return np.where(counts > 0, counts.sum() / (len(counts) * np.maximum(counts, 1)), 0.0)


def epoch_order(labels: np.ndarray, balance: str, seed: int, epoch: int) -> np.ndarray:
    """Positions into the training rows for one epoch: a permutation, or class-balanced draws (``sampler``)."""
    rng = np.random.default_rng([seed, epoch, 11])
    if balance == "sampler":
        counts = np.bincount(labels, minlength=2)
        p = 1.0 / counts[labels]
        return rng.choice(len(labels), size=len(labels), replace=True, p=p / p.sum())
    return rng.permutation(len(labels))


def global_batches(order: np.ndarray, batch_size: int, world: int) -> list[np.ndarray]:
    """Split an epoch into full global batches (the short tail is dropped, as the order changes every epoch).

    Fewer images than one batch make one short batch, if it still gives each process 2 images (batch norm).
    The split does not depend on ``world`` otherwise, so N processes take the same steps as one.
    """
    if len(order) < batch_size:
        return [order] if len(order) >= 2 * world else []
    return [order[lo:lo + batch_size] for lo in range(0, len(order) - batch_size + 1, batch_size)]


def draw_augment(n: int, config: TrainConfig, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Random parameters for ``n`` images (drawn for the whole global batch, so every rank draws the same)."""
    j = config.jitter if "jitter" in config.augment else 0.0
    return {
        "hflip": (torch.rand(n, generator=gen) < 0.5) & ("flip" in config.augment),
        "vflip": (torch.rand(n, generator=gen) < 0.5) & ("flip" in config.augment),
        "rot": torch.randint(0, 4, (n,), generator=gen) * int("rot90" in config.augment),
        "brightness": 1 + j * (2 * torch.rand(n, generator=gen) - 1),
        "contrast": 1 + j * (2 * torch.rand(n, generator=gen) - 1),
        "saturation": 1 + j * (2 * torch.rand(n, generator=gen) - 1),
    }


def augment(x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
    """Flips, 90° rotations and mild brightness/contrast/saturation jitter of float images in [0, 1]."""
    dev = x.device
    for key, dims in (("hflip", (-1,)), ("vflip", (-2,))):
        mask = params[key].to(dev)
        if mask.any():
            x = torch.where(mask.view(-1, 1, 1, 1), x.flip(dims), x)
    rot = params["rot"].to(dev)
    for k in (1, 2, 3):
        if (rot == k).any():
            x = torch.where((rot == k).view(-1, 1, 1, 1), torch.rot90(x, k, dims=(-2, -1)), x)
    shape = (-1, 1, 1, 1)
    x = x * params["brightness"].to(dev).view(shape)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * params["contrast"].to(dev).view(shape) + mean
    grey = (x * torch.tensor([0.299, 0.587, 0.114], device=dev).view(1, 3, 1, 1)).sum(1, keepdim=True)
    x = (x - grey) * params["saturation"].to(dev).view(shape) + grey
    return x.clamp_(0.0, 1.0)


# ----------------------------------------------------------------------------------------------- training


@dataclass
class TrainTask:
    """One backbone on one fold: where its files go and which rows it may learn from."""

    name: str  # "fold 0 resnet18", for messages
    folder: Path
    model: FineTuneNet
    fit_rows: np.ndarray  # store rows trained on
    val_rows: np.ndarray  # store rows that pick the epoch (from the same fold's training samples)
    labels: np.ndarray  # (N,) labels of every store row
    mean: tuple[float, ...]
    std: tuple[float, ...]
    settings_sha256: str
    best_payload: dict = field(default_factory=dict)  # extra entries saved in best.pt (config, sample ids)


@dataclass
class TrainOutcome:
    best_epoch: int
    epochs_run: int
    stopped_early: bool
    resumed_from: int  # epochs already done when this call started (0: fresh start)
    history: list[dict]
    images_per_s: float  # training throughput of the epochs run in this call (0 when none ran)


def train(task: TrainTask, config: TrainConfig, bank: ImageBank, device: torch.device, precision: str,
          ctx: DistContext = SINGLE, progress: bool = True) -> TrainOutcome:
    """Fine-tune ``task.model`` (resuming from ``last.pt`` when present); ``best.pt`` keeps the best epoch."""
    model = task.model
    if ctx.active and device.type == "cuda":
        nn.SyncBatchNorm.convert_sync_batchnorm(model)  # in place below the top module: batch statistics of all GPUs
    frozen = freeze_stages(model, config.freeze_stages)
    layout = memory_format(device)
    model.to(device, memory_format=layout)
    optimizer = torch.optim.AdamW(param_groups(model, config), lr=config.lr)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    state = _resume(task, model, optimizer, scaler, device)
    if state["done"]:
        return TrainOutcome(state["best_epoch"], state["epoch"], state["stopped_early"], state["epoch"],
                            state["history"], 0.0)
    if config.batch_size < 2 * ctx.world:
        raise FusionfeatError(f"--batch-size {config.batch_size} is the global batch: with {ctx.world} processes "
                              f"give at least {2 * ctx.world} (2 per process)")
    net = _wrap(model, device, ctx)
    fit_labels = task.labels[task.fit_rows]
    weights = torch.as_tensor(class_weights(fit_labels, config.balance), dtype=torch.float32, device=device)
    steps_per_epoch = len(global_batches(np.arange(len(task.fit_rows)), config.batch_size, ctx.world))
    if steps_per_epoch == 0:
        raise FusionfeatError(f"{task.name}: {len(task.fit_rows)} training images are too few for one batch "
                              f"across {ctx.world} process(es)")
    total_steps = steps_per_epoch * config.epochs
    warmup = round(config.warmup_epochs * steps_per_epoch)
    mean = torch.tensor(task.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(task.std, device=device).view(1, 3, 1, 1)
    started, seen, spent = state["epoch"], 0, 0.0
    for epoch in range(started, config.epochs):
        torch.manual_seed(config.seed * 100_003 + epoch * 101 + ctx.rank)  # dropout
        gen = torch.Generator().manual_seed(config.seed * 100_003 + epoch)
        batches = global_batches(epoch_order(fit_labels, config.balance, config.seed, epoch), config.batch_size,
                                 ctx.world)
        net.train()
        for module in frozen:
            module.eval()
        bar = runtime.progress(sum(len(b) for b in batches), progress and ctx.is_main, f"{task.name} epoch {epoch + 1}")
        t0, sums = time.perf_counter(), np.zeros(4)  # weighted loss, weight, correct, images (this rank)
        for step, batch in enumerate(batches):
            for group in optimizer.param_groups:
                group["lr"] = group["base_lr"] * lr_factor(epoch * steps_per_epoch + step, warmup, total_steps)
            params = draw_augment(len(batch), config, gen)
            part = np.array_split(np.arange(len(batch)), ctx.world)[ctx.rank]
            rows = task.fit_rows[batch[part]]
            x = bank.batch(rows, device).float().div_(255.0)
            x = augment(x, {k: v[part] for k, v in params.items()})
            x = ((x - mean) / std).contiguous(memory_format=layout)
            y = torch.as_tensor(task.labels[rows], device=device)
            with autocast(device, precision):
                logits = net(x)
            per_sample = F.cross_entropy(logits.float(), y, reduction="none", label_smoothing=config.label_smoothing)
            w = weights[y]
            total_w = float(weights[torch.as_tensor(task.labels[task.fit_rows[batch]], device=device)].sum())
            loss = (per_sample * w).sum() * (ctx.world / total_w)  # DDP averages: the mean over the global batch
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            correct = float((logits.argmax(1) == y).sum())
            sums += [float((per_sample * w).detach().sum()), float(w.sum()), correct, len(rows)]
            bar.update(len(batch))
            bar.set_postfix(loss=f"{sums[0] / max(sums[1], 1e-12):.4f}", acc=f"{sums[2] / max(1, sums[3]):.3f}",
                            refresh=False)
        loss_sum, w_sum, correct, _ = ctx.all_sum(sums.tolist())
        if not math.isfinite(loss_sum):
            raise _diverged(task, config, epoch + 1, "training loss")
        seconds = time.perf_counter() - t0
        n_images = sum(len(b) for b in batches)
        seen, spent = seen + n_images, spent + seconds
        record = {"epoch": epoch + 1, "train_loss": loss_sum / w_sum, "train_acc": correct / n_images,
                  "lr": optimizer.param_groups[-1]["lr"], "seconds": seconds, "images_per_s": n_images / seconds}
        record.update(_validate(model, task, bank, device, precision, ctx))
        if not math.isfinite(record.get("val_loss", 0.0)):
            raise _diverged(task, config, epoch + 1, "validation loss")
        bar.set_postfix(loss=f"{record['train_loss']:.4f}", acc=f"{record['train_acc']:.3f}",
                        val_loss=f"{record.get('val_loss', float('nan')):.4f}",
                        img_s=f"{record['images_per_s']:.0f}")
        bar.close()
        state = _after_epoch(task, model, optimizer, scaler, state, record, config, ctx)
        if state["done"]:
            break
    return TrainOutcome(state["best_epoch"], state["epoch"], state["stopped_early"], started, state["history"],
                        seen / spent if spent else 0.0)


def memory_format(device: torch.device) -> torch.memory_format:
    """channels_last where it pays (CUDA tensor cores); on the CPU it slows training down."""
    return torch.channels_last if device.type == "cuda" else torch.contiguous_format


def _wrap(model: nn.Module, device: torch.device, ctx: DistContext) -> nn.Module:
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if not ctx.active:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


@torch.inference_mode()
def _validate(model: FineTuneNet, task: TrainTask, bank: ImageBank, device: torch.device, precision: str,
              ctx: DistContext) -> dict:
    """Loss, accuracy and balanced accuracy on this rank's share of the validation rows, summed over ranks."""
    if len(task.val_rows) == 0:
        return {}
    model.eval()
    mine = task.val_rows[ctx.rank::ctx.world]
    mean = torch.tensor(task.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(task.std, device=device).view(1, 3, 1, 1)
    sums = np.zeros(5)  # loss, tn, fp, fn, tp
    for lo in range(0, len(mine), EVAL_BATCH):
        rows = mine[lo:lo + EVAL_BATCH]
        x = (bank.batch(rows, device).float() / 255.0 - mean) / std
        x = x.contiguous(memory_format=memory_format(device))
        y = torch.as_tensor(task.labels[rows], device=device)
        with autocast(device, precision):
            logits = model(x)
        sums[0] += float(F.cross_entropy(logits.float(), y, reduction="sum"))
        pred = logits.argmax(1)
        for i, (t, p) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1))):
            sums[1 + i] += float(((y == t) & (pred == p)).sum())
    loss, tn, fp, fn, tp = ctx.all_sum(sums.tolist())
    n = tn + fp + fn + tp
    recalls = [tp / (tp + fn) if tp + fn else float("nan"), tn / (tn + fp) if tn + fp else float("nan")]
    return {"val_loss": loss / n, "val_acc": (tp + tn) / n, "val_bacc": float(np.nanmean(recalls))}


# ----------------------------------------------------------------------------------------------- checkpoints


def _fresh_state() -> dict:
    return {"epoch": 0, "best_epoch": 0, "best_loss": float("inf"), "bad_epochs": 0, "done": False,
            "stopped_early": False, "history": []}


def _resume(task: TrainTask, model: FineTuneNet, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
            device: torch.device) -> dict:
    """Load ``last.pt`` if this task has one (its settings are checked by the caller's config.json)."""
    last = task.folder / "last.pt"
    if not last.is_file():
        return _fresh_state()
    saved = load_checkpoint(last, device, LAST_KEYS)
    if saved is None or (not saved["done"] and not {"model", "optimizer", "scaler"} <= set(saved)) or (
            saved["done"] and load_checkpoint(task.folder / "best.pt", "cpu", BEST_KEYS) is None):
        warnings.warn(f"{task.name}: the checkpoint in {task.folder} is damaged (a kill or a full disk while it was "
                      "written?); training this task again from the start", DamagedBatchWarning, stacklevel=2)
        for name in ("last.pt", "best.pt", "history.json"):
            (task.folder / name).unlink(missing_ok=True)
        return _fresh_state()
    if saved.get("settings_sha256") != task.settings_sha256:
        raise FusionfeatError(f"{last} was made with other settings; rerun with --overwrite to start over")
    if not saved["done"]:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scaler.load_state_dict(saved["scaler"])
    return {k: saved[k] for k in _fresh_state()}


def _after_epoch(task: TrainTask, model: FineTuneNet, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                 state: dict, record: dict, config: TrainConfig, ctx: DistContext) -> dict:
    """Book-keeping after an epoch: best epoch, early stopping, then ``best.pt``, ``last.pt``, history (rank 0)."""
    state = dict(state, epoch=record["epoch"], history=[*state["history"], record])
    score = record.get("val_loss", -record["epoch"])  # without validation the last epoch is the best
    improved = score < state["best_loss"]
    if improved:
        state.update(best_loss=score, best_epoch=record["epoch"], bad_epochs=0)
    else:
        state["bad_epochs"] += 1
    state["stopped_early"] = bool(config.patience and "val_loss" in record and state["bad_epochs"] >= config.patience)
    state["done"] = state["stopped_early"] or state["epoch"] >= config.epochs
    if ctx.is_main:
        if improved:
            save_atomic(task.folder / "best.pt", best_checkpoint(model, task, record["epoch"]))
        last = {**state, "settings_sha256": task.settings_sha256}
        if not state["done"]:  # a finished task needs only best.pt: drop the weights and optimizer moments
            last.update(model=model.state_dict(), optimizer=optimizer.state_dict(), scaler=scaler.state_dict())
        save_atomic(task.folder / "last.pt", last)
        history = {"task": task.name, "best_epoch": state["best_epoch"], "stopped_early": state["stopped_early"],
                   "done": state["done"], "epochs": state["history"]}
        write_json(task.folder / "history.json", history)
    ctx.barrier()
    return state


def best_checkpoint(model: FineTuneNet, task: TrainTask, epoch: int) -> dict:
    """A ``weights_only``-loadable dict: the trunk's state dict (torchvision keys), head, config and sample ids."""
    return {"state_dict": {k: v.detach().cpu() for k, v in model.trunk.state_dict().items()},
            "head": {k: v.detach().cpu() for k, v in model.head.state_dict().items()},
            "epoch": epoch, "settings_sha256": task.settings_sha256, **task.best_payload}


LAST_KEYS = frozenset({"epoch", "best_epoch", "best_loss", "bad_epochs", "done", "stopped_early", "history",
                       "settings_sha256"})
BEST_KEYS = frozenset({"state_dict", "head", "epoch", "settings_sha256"})


def save_atomic(path: Path, obj: object) -> None:
    """``torch.save`` to memory, then a temporary file, fsync and rename: a kill or a full disk leaves the previous
    checkpoint (a write error is an ``OSError``, which the caller words in one line, not torch's RuntimeError)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    data = buffer.getbuffer()
    atomic_write_bytes(path, lambda fh: fh.write(data))


def load_checkpoint(path: Path, device: torch.device | str, keys: frozenset[str]) -> dict | None:
    """A checkpoint written by ``save_atomic`` with at least ``keys``, or None when it is missing or damaged."""
    if not path.is_file():
        return None
    try:
        saved = torch.load(path, map_location=device, weights_only=True)
    except Exception:  # truncated zip, bad pickle stream, wrong format: all mean "damaged" here
        return None
    return saved if isinstance(saved, dict) and keys <= set(saved) else None


def _diverged(task: TrainTask, config: TrainConfig, epoch: int, what: str) -> FusionfeatError:
    return FusionfeatError(f"{task.name}: training diverged at epoch {epoch} with --lr {config.lr:g} ({what} is not "
                           "finite); lower --lr (or use --precision fp32) and rerun")
