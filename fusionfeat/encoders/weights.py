"""Which weights an encoder starts from (``imagenet``, ``random`` with its seed, or a state-dict file), and
loading them strictly into its trunk with their provenance (name, kind, SHA-256, path, seed).
"""

from __future__ import annotations

import functools
import os
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn
from torchvision.models import get_model_builder

from fusionfeat.encoders.registry import BackboneSpec, get_backbone
from fusionfeat.encoders.timm_models import DINOBLOOM_SOURCE, TimmSpec
from fusionfeat.encoders.timm_weights import hub_file, hub_locations, load_error, read_checkpoint
from fusionfeat.errors import FusionfeatError, WeightsError, WeightsWarning
from fusionfeat.fsio import sha256_file

RANDOM = "random"


IMAGENET = "imagenet"


FILE = "file"


@dataclass(frozen=True)
class WeightsChoice:
    """Which weights a backbone starts from: ``imagenet``, ``random`` (with its seed) or a state-dict ``file``."""

    kind: str
    path: str = ""
    seed: int = 0

    @classmethod
    def parse(cls, value: str | WeightsChoice, seed: int | None = None) -> WeightsChoice:
        """``imagenet`` | ``random`` | a file path; ``seed`` (default: a choice's own, else 0) seeds random weights."""
        if isinstance(value, WeightsChoice):
            return value if seed is None else replace(value, seed=seed)
        value, seed = value.strip(), seed or 0
        if value in (IMAGENET, RANDOM):
            return cls(value, "", seed)
        return cls(FILE, value, seed)

    @classmethod
    def from_provenance(cls, name: str, attrs: dict, override: str | None = None) -> WeightsChoice:
        """The choice recorded in a store's (or bundle's) provenance of ``name``; ``override`` points at a file
        that moved. Refuses a random/non-random swap and a missing file; the caller checks the SHA-256."""
        kind, seed = str(attrs["weights_kind"]), int(attrs.get("seed", 0))
        recorded = cls(kind, "" if kind in (RANDOM, IMAGENET) else str(attrs.get("weights_path", "")), seed)
        choice = recorded if override is None else cls.parse(override, seed)
        if (kind == RANDOM) != (choice.kind == RANDOM):
            raise WeightsError(f"{name} was made with {kind} weights; --weights {name}={override} does not match")
        if choice.kind == FILE and not Path(choice.path).expanduser().is_file():
            raise WeightsError(f"the {name} weights file {attrs.get('weights_path')} is missing; "
                               f"pass --weights {name}=FILE (SHA-256 {attrs.get('weights_sha256')})")
        return choice

    def __str__(self) -> str:
        return self.path if self.kind == FILE else self.kind


def parse_weights(value: str, backbones: list[str], seed: int = 0) -> dict[str, WeightsChoice]:
    """``--weights`` → one choice per backbone: ``imagenet``, ``random`` or a file path.

    Accepts one value for all (``random``), or per backbone (``vgg16=FILE,resnet18=random``);
    backbones not named get ``imagenet``.
    """
    value = value.strip()
    if "=" not in value:
        if value not in (IMAGENET, RANDOM) and len(backbones) > 1:
            raise FusionfeatError(
                f"--weights {value!r} is one file for {len(backbones)} backbones; "
                f"name the backbone it belongs to, e.g. --weights {backbones[-1]}={value},"
                f"{backbones[0]}={RANDOM}"
            )
        return {b: WeightsChoice.parse(value, seed) for b in backbones}
    choice = {b: WeightsChoice(IMAGENET, "", seed) for b in backbones}
    for part in value.split(","):
        name, sep, item = part.partition("=")
        name = name.strip().lower()
        if not sep or not item.strip():
            raise FusionfeatError(f"--weights part {part!r} should read BACKBONE=imagenet|random|FILE")
        if name not in backbones:
            raise FusionfeatError(f"--weights names {name!r}, which is not among --backbones {','.join(backbones)}")
        choice[name] = WeightsChoice.parse(item, seed)
    return choice


def random_backbones(weights: dict[str, WeightsChoice | str]) -> list[str]:
    """The backbones of a ``parse_weights`` result that use random weights."""
    return [b for b, w in weights.items() if str(w) == RANDOM]


@dataclass(frozen=True)
class LoadedBackbone:
    """A trunk ready to run, with the provenance of its weights."""

    spec: BackboneSpec
    trunk: nn.Module
    weights: str  # "imagenet:IMAGENET1K_V1", "random", or the file name
    weights_kind: str  # "imagenet" | "file" | "random"
    weights_sha256: str  # "" for random
    weights_path: str
    seed: int

    def provenance(self) -> dict:
        return {
            "backbone": self.spec.name,
            "weights": self.weights,
            "weights_kind": self.weights_kind,
            "weights_sha256": self.weights_sha256,
            "weights_path": self.weights_path,
            "seed": self.seed,
            "pooled_dim": self.spec.dim,
        }


def load_backbone(name: str, weights: str | WeightsChoice = IMAGENET, seed: int | None = None) -> LoadedBackbone:
    """Build a backbone's trunk with ``imagenet``, ``random`` (seeded) or a state-dict file's weights.

    ``seed`` (default: the ``WeightsChoice``'s own, else 0) seeds random weights and is recorded in any case.
    """
    spec = get_backbone(name)
    choice = WeightsChoice.parse(weights, seed)
    if isinstance(spec, TimmSpec):
        return load_timm_backbone(spec, choice)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(choice.seed)
        model = spec.build_model()
    trunk = spec.trunk(model)
    if choice.kind == RANDOM:
        return LoadedBackbone(spec, trunk.eval(), RANDOM, RANDOM, "", "", choice.seed)
    if choice.kind == IMAGENET:
        path = imagenet_file(spec)
        kind, label = IMAGENET, f"{IMAGENET}:{spec.imagenet_weights.name}"
    else:
        path = Path(choice.path).expanduser()
        if not path.is_file():
            raise WeightsError(f"weights file for {name} not found: {path} (or use imagenet / random)")
        kind, label = FILE, path.name
    state = read_state_dict(path)
    load_trunk_state(trunk, spec, state, str(path))
    return LoadedBackbone(spec, trunk.eval(), label, kind, sha256_file(path), str(path.resolve()), choice.seed)


def load_timm_backbone(spec: TimmSpec, choice: WeightsChoice) -> LoadedBackbone:
    """A timm entry with random (seeded) weights, its published weights from the local cache, or a file in
    the authors' published layout or a plain state dict (``fusionfeat.encoders.timm_weights``)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(choice.seed)
        trunk = spec.trunk(spec.build_model())
    if choice.kind == RANDOM:
        return LoadedBackbone(spec, trunk.eval(), RANDOM, RANDOM, "", "", choice.seed)
    if choice.kind == IMAGENET:
        path, kind = timm_pretrained_file(spec), IMAGENET
        label = f"hf-hub:{spec.pretrained_cfg().get('hf_hub_id') or spec.model}"
    else:
        path, kind = Path(choice.path).expanduser(), FILE
        if not path.is_file():
            raise WeightsError(f"weights file for {spec.name} not found: {path} (or use random)")
        label = path.name
    state = read_checkpoint(path)
    try:
        state = spec.adapt_state(state, trunk.model)
    except Exception as exc:  # timm's filter meets a checkpoint of another architecture
        raise load_error(exc, str(path), spec.name) from None
    try:
        load_trunk_state(trunk, spec, {f"model.{k}": v for k, v in state.items()}, str(path))
    except WeightsError as exc:  # name keys as the checkpoint does, without the trunk's "model." prefix
        raise WeightsError(str(exc).replace("(first model.", "(first ")) from None
    sha = sha256_file(path)
    if kind == FILE and spec.known_sha256 and sha != spec.known_sha256:
        warnings.warn(f"{spec.name}: {path.name} is not the published {spec.published or 'file'} (its SHA-256 "
                      f"{sha[:12]}… differs from the authors' {spec.known_sha256[:12]}…); the features come from "
                      "other weights", WeightsWarning, stacklevel=3)
    return LoadedBackbone(spec, trunk.eval(), label, kind, sha, str(path.resolve()), choice.seed)


def timm_pretrained_file(spec: TimmSpec) -> Path:
    """The locally cached published weights of a timm entry; never downloaded (one line says where to put them)."""
    if not spec.hub and spec.published:
        raise WeightsError(f"{spec.name} has no built-in weights: pass the authors' checkpoint, --weights "
                           f"{spec.name}={spec.published} ({DINOBLOOM_SOURCE}), or --weights {spec.name}=random")
    if not spec.hub:
        raise WeightsError(f"timm publishes no weights for {spec.model}: pass --weights {spec.name}=FILE or random")
    cfg = spec.pretrained_cfg()
    found = hub_file(cfg)
    if found is None:
        where = next((str(p) for p in hub_locations(cfg)), "the Hugging Face cache")
        hub_id = cfg.get("hf_hub_id")
        how = f"`huggingface-cli download {hub_id}` on a machine with internet and copy the cache, " if hub_id else ""
        raise WeightsError(f"the published weights of {spec.name} (timm {spec.model}) are not in the local cache: "
                           f"put them at {where} ({how}fusionfeat never downloads them), or pass --weights "
                           f"{spec.name}=FILE or random")
    return found


def imagenet_cache_path(spec: BackboneSpec) -> Path:
    """Where torch hub keeps (or would keep) a backbone's ImageNet weights file."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(spec.imagenet_weights.url)


def imagenet_file(spec: BackboneSpec) -> Path:
    """The torch hub cache file of the ImageNet weights, downloaded if missing and possible."""
    url = spec.imagenet_weights.url
    target = imagenet_cache_path(spec)
    if target.is_file():
        return target
    try:
        torch.hub.load_state_dict_from_url(url, model_dir=str(target.parent), progress=True, check_hash=True,
                                           map_location="cpu", weights_only=True)
    except Exception as exc:  # no network, proxy, hash mismatch: all mean the same thing to the user
        raise WeightsError(
            f"ImageNet weights for {spec.name} are missing: {target.name} is not at {target} and could not be "
            f"downloaded ({type(exc).__name__}); fetch {url} elsewhere and put it there (or set TORCH_HOME), "
            f"or pass --weights {spec.name}=FILE or --weights random"
        ) from None
    return target


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Load a state dict safely (``weights_only=True``), unwrapping ``{"state_dict": …}``-style containers."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(f"cannot read weights file {path}: not a torch state dict ({type(exc).__name__})") from None
    for key in ("state_dict", "model", "model_state_dict", "trunk"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"weights file {path} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


@functools.cache
def _head_prefixes(name: str) -> tuple[str, ...]:
    """Top-level names of the full torchvision model's keys that the trunk does not use (its classifier)."""
    spec = get_backbone(name)
    if spec.source != "torchvision":  # timm entries drop their classifier keys themselves (``adapt_state``)
        return ()
    full_model = get_model_builder(spec.builder or spec.name)
    with torch.random.fork_rng(devices=[]):
        try:
            with torch.device("meta"):  # keys only: no memory, no initialisation time
                full, trunk = full_model(weights=None).state_dict(), spec.trunk(spec.build_model()).state_dict()
        except Exception:  # an architecture that cannot be built on the meta device
            full, trunk = full_model(weights=None).state_dict(), spec.trunk(spec.build_model()).state_dict()
    used = {k.split(".")[0] for k in trunk}
    return tuple(sorted(f"{top}." for top in ({k.split(".")[0] for k in full} | {"fc", "classifier"}) - used))


def load_trunk_state(trunk: nn.Module, spec: BackboneSpec, state: dict[str, torch.Tensor], source: str) -> None:
    """Strictly load a trunk's weights; the full model's classifier keys are ignored.

    Accepts the full model's keys or the trunk's alone when every trunk key shares one prefix
    (e.g. ``0.weight`` for VGG's ``features.0.weight``).
    """
    expected = trunk.state_dict()
    tops = {k.split(".")[0] for k in expected}
    if len(tops) == 1:
        prefix = f"{next(iter(tops))}."
        if not any(k.startswith(prefix) for k in state):
            state = {prefix + k: v for k, v in state.items()}
    state = {k: v for k, v in state.items() if k in expected or not k.startswith(_head_prefixes(spec.name))}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
             if k in state and state[k].shape != v.shape]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s) (first {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s) (first {unexpected[0]})")
        if wrong:
            parts.append(f"{len(wrong)} shape mismatch(es) (first {wrong[0]})")
        raise WeightsError(f"weights file {source} does not fit {spec.name}: {'; '.join(parts)}")
    trunk.load_state_dict(state)
