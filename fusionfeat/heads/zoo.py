"""The head zoo: head names → ``HeadSpec``s over whichever backbones a feature store holds.

* one single-backbone MLP per stored backbone, named after it (``resnet18``, ``densenet121``, ...);
* fusion heads over K ≥ 2 selected backbones, in store (or ``--backbones``) order: ``concat`` (MLP on
  the concatenated pooled vectors), ``attention`` (``attention-spatial`` when every fused backbone has
  token maps, else ``attention-pooled``; both explicit names work too) and the classical baselines
  ``svm``, ``xgboost`` and ``logreg``;
* ``all``: each selected backbone's single head, then ``concat, attention, svm, xgboost, logreg``.

On a resnet18 + vgg16 store these are the paper's seven names (``HEAD_NAMES``). With one backbone
selected there is nothing to fuse: fusion heads are refused if named and left out of ``all``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from sklearn.base import BaseEstimator

from fusionfeat.errors import FusionfeatError, StoreError
from fusionfeat.heads.boosted import XGBoostClassifier
from fusionfeat.heads.linear import make_logreg
from fusionfeat.heads.svm import make_svm
from fusionfeat.heads.torch_head import TorchHeadClassifier

PAPER_BACKBONES: tuple[str, ...] = ("resnet18", "vgg16")
ATTENTION_HEADS: tuple[str, ...] = ("attention-spatial", "attention-pooled")
INPUTS: tuple[str, ...] = ("pooled", "tokens")


@dataclass(frozen=True)
class HeadSpec:
    """A named head: which stored backbones it reads (in column order), pooled or token input, its builder.

    ``build(blocks=..., class_weight=..., random_state=..., device=..., progress=...)`` returns an unfitted
    estimator; the classical baselines ignore ``blocks``, ``device`` and ``progress``.
    """

    name: str
    backbones: tuple[str, ...]
    inputs: str
    is_torch: bool
    build: Callable[..., BaseEstimator]


def _baseline(factory: Callable[..., BaseEstimator]) -> Callable[..., BaseEstimator]:
    def build(
        *,
        blocks: Any = None,
        class_weight: str | None = None,
        random_state: int | None = None,
        device: str = "auto",
        progress: bool = False,
    ) -> BaseEstimator:
        return factory(class_weight=class_weight, random_state=random_state)

    return build


@dataclass(frozen=True)
class _Named:
    """A torch head's builder whose ``progress=True`` reports the epochs under the head's name, not its
    architecture's (``resnet18``, not ``mlp``)."""

    build: Callable[..., BaseEstimator]
    name: str

    def __call__(self, *, progress: bool | str = False, **kwargs: Any) -> BaseEstimator:
        return self.build(progress=self.name if progress is True else progress, **kwargs)


_MLP = partial(TorchHeadClassifier, architecture="mlp")
# concrete fusion head → (inputs, is_torch, build)
_FUSION: dict[str, tuple[str, bool, Callable[..., BaseEstimator]]] = {
    "concat": ("pooled", True, _MLP),
    "attention-spatial": ("tokens", True, partial(TorchHeadClassifier, architecture="attention-spatial")),
    "attention-pooled": ("pooled", True, partial(TorchHeadClassifier, architecture="attention-pooled")),
    "svm": ("pooled", False, _baseline(make_svm)),
    "xgboost": ("pooled", False, _baseline(XGBoostClassifier)),
    "logreg": ("pooled", False, _baseline(make_logreg)),
}
# the fusion names ``all`` expands to, in ``_FUSION`` order (the two attention variants answer to "attention")
FUSION_HEADS: tuple[str, ...] = tuple(dict.fromkeys(
    "attention" if name in ATTENTION_HEADS else name for name in _FUSION))


def single_head(backbone: str) -> HeadSpec:
    """The single-backbone MLP on ``backbone``'s pooled vector; the head is named after the backbone."""
    return HeadSpec(backbone, (backbone,), "pooled", True, _Named(_MLP, backbone))


def fusion_head(name: str, backbones: Sequence[str]) -> HeadSpec:
    """A fusion head or baseline (``concat``, ``attention-spatial``, ``attention-pooled``, ``svm``, ``xgboost``,
    ``logreg``) over ``backbones``, its blocks in that order."""
    if name not in _FUSION:
        raise FusionfeatError(f"unknown fusion head {name!r}; choose from {', '.join(_FUSION)}")
    backbones = tuple(backbones)
    _check_fusable(name, backbones)
    inputs, is_torch, build = _FUSION[name]
    return HeadSpec(name, backbones, inputs, is_torch, _Named(build, name) if is_torch else build)


def head_names(backbones: Sequence[str]) -> list[str]:
    """What ``all`` means over ``backbones``: their single heads, then the fusion heads when K ≥ 2."""
    return list(backbones) + (list(FUSION_HEADS) if len(backbones) >= 2 else [])


HEAD_NAMES: tuple[str, ...] = tuple(head_names(PAPER_BACKBONES))


def valid_names(backbones: Sequence[str], stored: Sequence[str] | None = None) -> list[str]:
    """Every name that resolves: the single heads of ``stored`` (default ``backbones``), ``all``'s fusion
    names and the explicit attention variants (fusion names only when ``backbones`` has two or more)."""
    singles = list(dict.fromkeys([*(backbones if stored is None else stored)]))
    fusion = [*FUSION_HEADS, *ATTENTION_HEADS] if len(backbones) >= 2 else []
    return singles + [n for n in fusion if n not in singles]


def resolve_head(
    name: str,
    has_tokens: bool = True,
    backbones: Sequence[str] = PAPER_BACKBONES,
    stored: Sequence[str] | None = None,
) -> HeadSpec:
    """The spec for one head name over the selected ``backbones`` (single heads: any of ``stored``).

    ``"attention"`` is the spatial variant when ``has_tokens`` (every selected backbone has token maps),
    else the pooled one. Unknown names, fusion names over fewer than two backbones, and
    ``attention-spatial`` without tokens raise ``FusionfeatError``.
    """
    backbones = tuple(backbones)
    singles = tuple(backbones if stored is None else stored)
    if name in singles:
        return single_head(name)
    if name not in (*FUSION_HEADS, *ATTENTION_HEADS):
        valid = ", ".join(valid_names(backbones, stored))
        raise FusionfeatError(f"unknown head {name!r}; choose from {valid} or 'all'")
    if name == "attention":
        name = "attention-spatial" if has_tokens else "attention-pooled"
    if _FUSION[name][0] == "tokens" and not has_tokens:
        raise FusionfeatError(
            f"head {name!r} needs token maps but the store has pooled features only; "
            "re-extract without --no-tokens, or use 'attention-pooled'"
        )
    return fusion_head(name, backbones)


def expand_head_names(
    spec: str, backbones: Sequence[str] = PAPER_BACKBONES, stored: Sequence[str] | None = None
) -> list[str]:
    """``"all"`` → ``head_names(backbones)``; ``"a,b"`` → ``["a", "b"]`` (validated, duplicates dropped, order
    kept). Single heads may name any of ``stored`` (default ``backbones``)."""
    names = [part.strip() for part in spec.split(",") if part.strip()]
    if names == ["all"]:
        return head_names(backbones)
    valid = valid_names(backbones, stored)
    unknown = [n for n in names if n not in valid and n not in (*FUSION_HEADS, *ATTENTION_HEADS)]
    if unknown or not names:
        raise FusionfeatError(
            f"unknown head(s) {', '.join(map(repr, unknown)) or repr(spec)}; choose from {', '.join(valid)} or 'all'"
        )
    for name in names:
        if name not in valid:
            _check_fusable(name, tuple(backbones))
    return list(dict.fromkeys(names))


def head_from_record(name: Any, backbones: Any, inputs: Any) -> HeadSpec:
    """Rebuild a spec from what a bundle records (head name, its backbones in column order, its inputs)."""
    if not isinstance(name, str) or not isinstance(backbones, (list, tuple)) or not backbones:
        raise FusionfeatError(f"head {name!r} over backbones {backbones!r} is not a head fusionfeat knows")
    backbones = tuple(str(b) for b in backbones)
    if name in _FUSION:
        spec = fusion_head(name, backbones)
    elif backbones == (name,):
        spec = single_head(name)
    else:
        raise FusionfeatError(f"head {name!r} over backbones {', '.join(backbones)} is not a head fusionfeat knows")
    if inputs != spec.inputs:
        raise FusionfeatError(f"head {name!r} reads {spec.inputs} features, not {inputs!r}")
    return spec


def _check_fusable(name: str, backbones: tuple[str, ...]) -> None:
    if len(backbones) < 2:
        only = backbones[0] if backbones else "no backbone"
        raise FusionfeatError(
            f"head {name!r} fuses two or more backbones, but the store holds (or --backbones selects) only "
            f"{only}: extract or select another backbone, or fit the single-backbone head {only!r}"
        )


# ----------------------------------------------------------------------------------------------- stores


def select_backbones(store: Any, backbones: str | Sequence[str] | None = None) -> tuple[str, ...]:
    """The stored backbones fusion heads read: ``backbones`` (a list or ``"a,b,c"``) in that order, checked
    against the store, or every stored backbone in the store's (alphabetical) order when ``None``."""
    stored = list(store.backbones)
    if backbones is None:
        return tuple(stored)
    names = [b.strip() for b in backbones.split(",")] if isinstance(backbones, str) else [str(b) for b in backbones]
    names = list(dict.fromkeys(b for b in names if b))
    where = getattr(store, "path", "the feature store")
    missing = [b for b in names if b not in stored]
    if missing or not names:
        raise FusionfeatError(
            f"--backbones {', '.join(missing) or repr(backbones)}: not in {where}, which holds "
            f"{', '.join(stored) or 'no backbones'}; choose among those"
        )
    return tuple(names)


def resolve_heads(
    store: Any,
    heads: str | Sequence[str | HeadSpec],
    features: str = "frozen",
    backbones: str | Sequence[str] | None = None,
) -> list[HeadSpec]:
    """HeadSpecs for head names (``"all"`` and comma lists expand) or ready specs, checked against the store.

    Fusion heads read ``backbones`` (default: every stored backbone, in the store's alphabetical order). ``"attention"``
    becomes ``attention-spatial`` when all of them hold token maps, else ``attention-pooled``.
    """
    if isinstance(heads, str):
        heads = [heads]
    selected = select_backbones(store, backbones)
    stored = list(store.backbones)
    has_tokens = _has_tokens(store, selected, features)
    specs: list[HeadSpec] = []
    for entry in heads:
        if isinstance(entry, HeadSpec):
            named = [entry]
        else:
            names = [n for part in str(entry).split(",") if part.strip()
                     for n in expand_head_names(part.strip(), selected, stored)]
            named = [resolve_head(n, has_tokens, selected, stored) for n in names]
        for spec in named:
            if spec.name not in [s.name for s in specs]:
                specs.append(spec)
    if not specs:
        raise FusionfeatError("no heads given: name at least one head, e.g. --head attention or --head all")
    for spec in specs:
        check_store_has(store, spec)
    return specs


def _has_tokens(store: Any, backbones: Sequence[str], features: str) -> bool:
    """Whether every backbone is stored with token maps (in the first fine-tuned fold, if fine-tuned)."""
    folds = store.finetuned_folds() if features == "finetuned" else []
    extra = {"fold": folds[0]} if folds else {}
    try:
        return all(b in store.backbones and store.has_tokens(b, **extra) for b in backbones)
    except StoreError:  # a backbone that was not fine-tuned: reported with the head's name later
        return False


def check_store_has(store: Any, spec: HeadSpec) -> None:
    """Raise ``FusionfeatError`` when the store lacks a backbone (or the token maps) ``spec`` reads."""
    where = getattr(store, "path", "the feature store")
    missing = [b for b in spec.backbones if b not in store.backbones]
    if missing:
        raise FusionfeatError(
            f"head {spec.name!r} needs backbone(s) {', '.join(missing)} but {where} holds "
            f"{', '.join(store.backbones) or 'none'}: extract them first (fusionfeat extract --backbones ...)"
        )
    if spec.inputs == "tokens":
        lacking = [b for b in spec.backbones if not store.has_tokens(b)]
        if lacking:
            raise FusionfeatError(
                f"head {spec.name!r} reads token grids, but {where} has no tokens for {', '.join(lacking)}: "
                "re-extract with tokens, or choose a pooled head"
            )
