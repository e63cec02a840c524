"""What a reader must see beside every head: the weights each backbone used (IMAGENET / FILE sha / RANDOM)."""

from __future__ import annotations

from typing import Any


def head_flags(info: dict[str, Any]) -> dict[str, str]:
    """backbone -> IMAGENET / FILE <sha> / RANDOM for one head (from metrics.json)."""
    return dict(info.get("weights") or {})


def flags_text(info: dict[str, Any]) -> str:
    """One head's weights flags, e.g. ``resnet18 RANDOM, vgg16 FILE 3f2a…`` (bold when random)."""
    parts = []
    for b, flag in head_flags(info).items():
        parts.append(f"{b} **{flag}**" if flag == "RANDOM" else f"{b} {flag}")
    return ", ".join(parts) or "?"


def tag(data: dict[str, Any], head: str) -> str:
    """A head's name with its weights in brackets, e.g. ``resnet18 [RANDOM]`` or ``svm [IMAGENET]``, for tables
    that do not have a weights column (mixed weights: ``[resnet18 RANDOM, vgg16 FILE …]``)."""
    flags = head_flags(data["heads"].get(head, {}))
    kinds = set(flags.values())
    if len(kinds) == 1:
        short = kinds.pop()
    else:
        short = ", ".join(f"{b} {f}" for b, f in flags.items()) or "?"
    return f"`{head}` [{short}]"


def random_heads(data: dict[str, Any]) -> list[str]:
    """Heads that read at least one random-weight backbone."""
    out = []
    for head, info in data["heads"].items():
        flags = head_flags(info)
        if flags and "RANDOM" in flags.values():
            out.append(head)
        elif not flags and set(info.get("backbones", [])) & set(random_backbones(data)):
            out.append(head)
    return out


def file_heads(data: dict[str, Any]) -> list[str]:
    """Heads that read at least one backbone whose weights came from a file (not ImageNet)."""
    files = set(file_backbones(data))
    return [head for head, info in data["heads"].items()
            if any(f.startswith("FILE") for f in head_flags(info).values())
            or (not head_flags(info) and set(info.get("backbones", [])) & files)]


def file_backbones(data: dict[str, Any]) -> list[str]:
    """Backbones the heads used whose weights came from a file."""
    used = {b for h in data["heads"].values() for b in h.get("backbones", [])}
    backbones = (data.get("provenance") or {}).get("backbones", {}) or {}
    return [b for b in sorted(used) if str(backbones.get(b, {}).get("weights_kind", "")) == "file"]


def warning_flags(data: dict[str, Any], head: str) -> list[str]:
    """What a table row must say beside a head's numbers: LEAKY (the paper's protocol), RANDOM (random-weight
    features), FILE (weights from a file, not ImageNet)."""
    flags = []
    if (data.get("protocol") or {}).get("leaky"):
        flags.append("LEAKY")
    if head in random_heads(data):
        flags.append("RANDOM")
    if head in file_heads(data):
        flags.append("FILE")
    return flags


FLAGS_LEGEND = (
    "Flags: LEAKY = the paper's leaky protocol; RANDOM = this head read random-weight features (not comparable "
    "with ImageNet); FILE = this head read features from weights loaded from a file (named by its SHA-256), "
    "not ImageNet weights."
)


def random_backbones(data: dict[str, Any]) -> list[str]:
    used = {b for h in data["heads"].values() for b in h.get("backbones", [])}
    backbones = (data.get("provenance") or {}).get("backbones", {}) or {}
    return [b for b in sorted(used) if str(backbones.get(b, {}).get("weights_kind", "")) == "random"]


def describe_weights(attrs: dict[str, Any]) -> str:
    """Human words for a backbone's weights; a file is named with its SHA-256, never called ImageNet."""
    kind = str(attrs.get("weights_kind", ""))
    sha = str(attrs.get("weights_sha256", "") or "")
    if kind == "random":
        return f"**RANDOM** (seed {attrs.get('seed', '?')}), not ImageNet"
    if kind == "imagenet":
        return f"ImageNet (`{attrs.get('weights', '')}`, SHA-256 `{sha}`)"
    if kind == "file":
        return f"file `{attrs.get('weights', '?')}` (SHA-256 `{sha}`)"
    return f"unknown (`{attrs.get('weights', '?')}`)"
