"""Weights for timm encoders, offline: checkpoints as their authors publish them, and the local hub cache.

``published_state`` turns a DINOv2-style training checkpoint (DinoBloom's published files: a dict whose
``teacher`` state dict has backbone keys under ``backbone.``, ``dino_head.``/``ibot_head.`` keys, a
``mask_token``, blocks possibly chunked as ``blocks.<chunk>.<i>.``) or a plain state dict into backbone keys;
timm's own checkpoint filter then renames DINOv2 keys (``mask_token`` dropped, SwiGLU ``w12``/``w3``) and
interpolates position embeddings to the model's grid. ``hub_file`` finds timm's published weights in the local
Hugging Face (or torch hub) cache; nothing is ever downloaded here.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from fusionfeat.errors import WeightsError

HEAD_PREFIXES = ("dino_head.", "ibot_head.", "dino_loss.", "ibot_patch_loss.")
CONTAINERS = ("teacher", "state_dict", "model", "model_state_dict", "trunk")
HUB_FILES = ("model.safetensors", "pytorch_model.bin")
_CHUNKED = re.compile(r"^blocks\.\d+\.(\d+)\.")


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """A checkpoint file (torch or safetensors) as backbone keys → tensors; one-line ``WeightsError`` otherwise."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            raw = load_file(str(path), device="cpu")
        else:
            raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(f"cannot read weights file {path}: not a torch or safetensors checkpoint "
                           f"({type(exc).__name__})") from None
    state = published_state(raw) if isinstance(raw, dict) else None
    if not state:
        raise WeightsError(f"weights file {path} holds no state dict of tensors (nor a 'teacher' one)")
    return state


def published_state(raw: dict) -> dict[str, torch.Tensor]:
    """Backbone keys of a published DINOv2/DinoBloom checkpoint or of a plain state dict.

    Unwraps ``teacher`` (or ``state_dict``, ``model``, ...), keeps the ``backbone.`` keys when there are any
    (dropping ``dino_head``/``ibot_head``), strips ``module.``/``backbone.`` and un-chunks ``blocks.<c>.<i>.``
    to ``blocks.<i>.``. Non-tensor values (a training iteration, say) are left out.
    """
    state = raw
    for key in CONTAINERS:
        if isinstance(state.get(key), dict):
            state = state[key]
            break
    state = {str(k).removeprefix("module."): v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if any(k.startswith("backbone.") for k in state):
        state = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
    state = {k: v for k, v in state.items() if not k.startswith(HEAD_PREFIXES)}
    return {_CHUNKED.sub(r"blocks.\1.", k): v for k, v in state.items()}


def hub_locations(cfg: dict) -> list[Path]:
    """Where the published weights of a timm pretrained config would sit in the local caches."""
    places = []
    hub_id = cfg.get("hf_hub_id") or ""
    if hub_id:
        from huggingface_hub import constants

        folder = Path(constants.HF_HUB_CACHE) / f"models--{hub_id.replace('/', '--')}"
        names = [cfg["hf_hub_filename"]] if cfg.get("hf_hub_filename") else list(HUB_FILES)
        places += [folder / "snapshots" / "<revision>" / name for name in names]
    if cfg.get("url"):
        places.append(Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(str(cfg["url"])))
    return places


def hub_file(cfg: dict) -> Path | None:
    """The cached weights file of a timm pretrained config (Hugging Face cache, then torch hub), or None."""
    hub_id = cfg.get("hf_hub_id") or ""
    if hub_id:
        from huggingface_hub import try_to_load_from_cache

        names = [cfg["hf_hub_filename"]] if cfg.get("hf_hub_filename") else list(HUB_FILES)
        for name in names:
            found = try_to_load_from_cache(hub_id, name)
            if isinstance(found, str) and Path(found).is_file():
                return Path(found)
    url = cfg.get("url")
    if url:
        target = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(str(url))
        if target.is_file():
            return target
    return None


def load_error(exc: Exception, source: str, name: str) -> WeightsError:
    """timm's strict-loading error as one line: counts and the first key of each kind."""
    text = str(exc)
    parts = []
    for label, pattern in (("missing", r"Missing key\(s\) in state_dict: (.*?)(?:\.\s*$|\.\s*\n)"),
                           ("unexpected", r"Unexpected key\(s\) in state_dict: (.*?)(?:\.\s*$|\.\s*\n)")):
        found = re.search(pattern, text, re.S)
        if found:
            keys = re.findall(r'"([^"]+)"', found.group(1))
            parts.append(f"{len(keys)} {label} key(s) (first {keys[0] if keys else '?'})")
    sizes = re.findall(r"size mismatch for ([^:]+): copying a param with shape (torch\.Size\(\[[^\]]*\]\))", text)
    if sizes:
        parts.append(f"{len(sizes)} shape mismatch(es) (first {sizes[0][0]} {sizes[0][1]})")
    if not parts:
        parts.append(" ".join(text.split())[:160])
    return WeightsError(f"weights file {source} does not fit {name}: {'; '.join(parts)}")
