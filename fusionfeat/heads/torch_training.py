"""The torch heads' data plumbing and epoch loop: input statistics per block, rows to tensors (float16 kept),
chunked eval-mode logits, and AdamW training with early stopping on an inner validation split.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import torch
from sklearn.utils import assert_all_finite
from torch import nn

from fusionfeat.heads.modules import Blocks
from fusionfeat.runtime import autocast, head_precision, progress

STATS_ROWS = 256  # rows per chunk when computing input statistics and predicting


def block_stats(X: np.ndarray, blocks: Blocks) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per-block, per-channel mean and std over samples and tokens, one chunk at a time (torch converts float16
    several times faster than numpy). Values are shifted by the first chunk's channel means before summing
    (float32 within a chunk, float64 across chunks), so a large mean does not cancel the variance away.

    Also the one pass that checks every value of ``X`` is finite (a NaN or infinity makes its chunk's sum
    non-finite, and scikit-learn's check then names it) and within float32's range.
    """
    sums = [torch.zeros(c, dtype=torch.float64) for _, c in blocks]
    sqs = [torch.zeros(c, dtype=torch.float64) for _, c in blocks]
    shifts: list[torch.Tensor] = []
    for start in range(0, X.shape[0], STATS_ROWS):
        raw = host_rows(X, slice(start, start + STATS_ROWS))
        chunk = torch.from_numpy(raw).float()
        col = 0
        for i, (t, c) in enumerate(blocks):
            part = chunk[:, col : col + t * c].view(-1, t, c)  # a view: no copy of the block
            if len(shifts) <= i:
                shifts.append(part.mean(dim=(0, 1)))
            centred = part - shifts[i]
            total, square = centred.sum(dim=(0, 1)), centred.square().sum(dim=(0, 1))
            if not bool(torch.isfinite(total).all() and torch.isfinite(square).all()):
                assert_all_finite(raw, input_name="X")  # scikit-learn's message for the offending value
                raise ValueError("X has values beyond float32's range (about 3.4e38): the heads compute in float32")
            sums[i] += total.double()
            sqs[i] += square.double()
            col += t * c
    locs, scales = [], []
    for (t, _), s, q, shift in zip(blocks, sums, sqs, shifts, strict=True):
        n = X.shape[0] * t
        mean = s / n
        std = torch.sqrt(torch.clamp(q / n - mean**2, min=0.0))
        locs.append((shift.double() + mean).float())
        scales.append(torch.where(std > 1e-6, std, 1.0).float())
    return locs, scales


def host_rows(X: np.ndarray, rows: Any) -> np.ndarray:
    """``X[rows]`` as a C-contiguous array torch may wrap (a copy when ``X`` is read-only, e.g. a memory map)."""
    out = np.ascontiguousarray(X[rows])
    return out if out.flags.writeable else out.copy()


def rows_tensor(X: np.ndarray, idx: np.ndarray, device: torch.device, check: bool = False) -> torch.Tensor:
    """Rows ``idx`` of ``X`` as a tensor on ``device``: float16 rows stay float16 (half the bytes to move; the
    module's ``BlockInput`` converts them, pooling first where it can), any other dtype becomes float32."""
    batch = host_rows(X, idx)
    if check:
        assert_all_finite(batch, input_name="X")
    tensor = torch.from_numpy(batch)
    if tensor.dtype != torch.float16:
        tensor = tensor.float()  # on the host: a float64 or integer X travels as float32, not wider
    return tensor.to(device, non_blocking=True)


def eval_logits(module: nn.Module, X: np.ndarray, idx: np.ndarray, precision: str, check: bool = True) -> torch.Tensor:
    """Eval-mode float32 logits for rows ``idx``, in chunks; restores the module's train/eval mode. ``check``
    refuses non-finite rows (off for the validation rows of ``fit``, which checked all of X once)."""
    was_training = module.training
    module.eval()
    device = next(module.parameters()).device
    out = []
    with torch.inference_mode(), autocast(device, precision):
        for start in range(0, len(idx), STATS_ROWS):
            out.append(module(rows_tensor(X, idx[start : start + STATS_ROWS], device, check=check)).float())
    module.train(was_training)
    return torch.cat(out)


def train_epochs(
    module: nn.Module,
    X: np.ndarray,
    y: np.ndarray,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    weight: torch.Tensor | None,
    rng: np.random.RandomState,
    *,
    lr: float,
    weight_decay: float,
    batch_size: int,
    max_epochs: int,
    patience: int,
    label: str,
    show_progress: bool,
) -> tuple[list[dict], int]:
    """The epoch loop: AdamW on (optionally class-weighted) cross-entropy, early stopping on ``val_idx``
    (none when it is empty); leaves the best epoch's weights in ``module`` and returns ``(history, best_epoch)``."""
    device = next(module.parameters()).device
    precision = head_precision(device)
    optimizer = torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=weight_decay,
                                  fused=device.type in ("cpu", "cuda"))  # one kernel: 3× faster step on CPU
    y_t = torch.as_tensor(y, device=device)
    history: list[dict] = []
    best_loss, best_epoch, best_state, waited = math.inf, 0, None, 0
    bar = progress(max_epochs, show_progress, label, unit="epoch", leave=False)
    try:
        for epoch in range(1, max_epochs + 1):
            module.train()
            order = rng.permutation(train_idx)
            loss_sum = correct = 0.0
            for start in range(0, len(order), batch_size):
                idx = np.sort(order[start : start + batch_size])
                with autocast(device, precision):
                    logits = module(rows_tensor(X, idx, device))
                loss = nn.functional.cross_entropy(logits.float(), y_t[idx], weight=weight)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                loss_sum += loss.item() * len(idx)
                correct += (logits.argmax(1) == y_t[idx]).sum().item()
            row = {
                "epoch": epoch,
                "train_loss": loss_sum / len(order),
                "train_acc": correct / len(order),
                "val_loss": None,
                "val_acc": None,
            }
            if len(val_idx):
                logits = eval_logits(module, X, val_idx, precision, check=False)
                row["val_loss"] = nn.functional.cross_entropy(logits, y_t[val_idx], weight=weight).item()
                row["val_acc"] = (logits.argmax(1) == y_t[val_idx]).float().mean().item()
            history.append(row)
            bar.update(1)
            bar.set_postfix({k: f"{v:.3f}" for k, v in row.items() if k != "epoch" and v is not None})
            if not len(val_idx):
                best_epoch = epoch
                continue
            if row["val_loss"] < best_loss - 1e-4:
                best_loss, best_epoch, waited = row["val_loss"], epoch, 0
                best_state = copy.deepcopy(module.state_dict())
            else:
                waited += 1
                if waited >= patience:
                    break
    finally:
        bar.close()
    if best_state is not None:
        module.load_state_dict(best_state)
    return history, best_epoch
