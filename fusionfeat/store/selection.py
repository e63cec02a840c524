"""Many tasks from one store: ``--classes`` keeps or merges a store's classes without re-extracting.

``select_classes(store, "neutrophil,eosinophil,lymphocyte")`` keeps three classes; ``select_classes(store,
"granulocyte=neutrophil+eosinophil+basophil,mononuclear=lymphocyte+monocyte")`` merges five into two (the
two forms mix: ``"neutrophil,mononuclear=lymphocyte+monocyte"``). Names match the store's classes
case-insensitively. The result reads like the store (same rows, same features): labels are remapped to the
new classes, rows of classes left out are not usable (as skipped images are not), and ``provenance()``
records the selection under ``class_selection``.

Order of the new classes, as a store orders its own: more than two, sorted by name; two, ``[negative,
positive]`` with the second listed as the positive unless ``positive`` names the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from fusionfeat.errors import FusionfeatError

LEFT_OUT = "left out by --classes"


@dataclass(frozen=True)
class ClassSelection:
    """A parsed ``--classes``: the new class names in their order and each store class's new name (None: left
    out)."""

    spec: str
    classes: tuple[str, ...]
    positive: str
    mapping: dict[str, str | None]

    def record(self, left_out: int) -> dict[str, Any]:
        """The JSON-able record runs and bundles keep."""
        return {"spec": self.spec, "classes": list(self.classes), "mapping": dict(self.mapping),
                "left_out": int(left_out)}


def parse_classes(spec: str, store_classes: list[str] | tuple[str, ...], positive: str | None = None
                  ) -> ClassSelection:
    """Parse ``--classes`` against a store's class names; every mistake is a one-line error."""
    known = {str(c).lower(): str(c) for c in store_classes}
    listing = ", ".join(map(str, store_classes))
    if not isinstance(spec, str) or not spec.strip():
        raise FusionfeatError(f"--classes is empty; name two or more of the store's classes ({listing})")
    seen_old: dict[str, str] = {}
    order: list[str] = []
    mapping: dict[str, str | None] = {str(c): None for c in store_classes}
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            raise FusionfeatError(f"--classes {spec!r} has an empty entry; write NAME or NEW=OLD+OLD, comma-separated")
        new, eq, olds = item.partition("=")
        new = new.strip()
        parts = [o.strip() for o in olds.split("+")] if eq else [new]
        if not new or any(not o for o in parts):
            raise FusionfeatError(f"--classes entry {item!r} is incomplete; write NAME or NEW=OLD+OLD")
        if eq and new.lower() in known and known[new.lower()] not in [known.get(o.lower()) for o in parts]:
            raise FusionfeatError(f"--classes entry {item!r}: {new!r} is already a class of the store; give the "
                                  "merged class another name")
        for old in parts:
            if old.lower() not in known:
                raise FusionfeatError(f"--classes: {old!r} is not a class of the store; its classes are {listing}")
            name = known[old.lower()]
            if name in seen_old:
                raise FusionfeatError(f"--classes names the class {name!r} twice ({seen_old[name]!r} and {item!r}); "
                                      "name each class once")
            seen_old[name] = item
        target = known[new.lower()] if not eq else new
        if target.lower() in (o.lower() for o in order):
            raise FusionfeatError(f"--classes makes the class {target!r} twice; give each new class one name")
        order.append(target)
        for old in parts:
            mapping[known[old.lower()]] = target
    if len(order) < 2:
        raise FusionfeatError(f"--classes {spec!r} leaves {len(order)} class; a run needs two or more")
    if len(order) > 2:
        if positive is not None:
            raise FusionfeatError(f"--positive {positive!r} applies to two classes only; --classes {spec!r} makes "
                                  f"{len(order)}: leave --positive out")
        return ClassSelection(spec, tuple(sorted(order, key=str.lower)), "", mapping)
    pos = order[1] if positive is None else next((c for c in order if c.lower() == str(positive).lower()), None)
    if pos is None:
        raise FusionfeatError(f"--positive {positive!r} is not one of the classes {', '.join(order)} --classes makes")
    negative = next(c for c in order if c != pos)
    return ClassSelection(spec, (negative, pos), pos, mapping)


class SelectedStore:
    """A store seen through a class selection: same rows and features, remapped labels, left-out rows unusable.

    Reads everything it does not change from the wrapped store (``paths``, ``groups``, ``folds``, ``sha256``,
    ``pooled``, ``tokens``, ``attrs``, …); it neither owns nor closes it.
    """

    def __init__(self, store: Any, selection: ClassSelection):
        self._store = store
        self.selection = selection
        self.classes: list[str] = list(selection.classes)
        self.positive_class: str | None = selection.positive or None  # None for K > 2, as the reader gives
        index = {name: i for i, name in enumerate(self.classes)}
        remap = np.array([index.get(selection.mapping.get(str(c)) or "", -1) for c in store.classes], dtype=np.int64)
        new = remap[np.asarray(store.labels, dtype=np.int64)]
        kept = new >= 0
        base_ok = np.asarray(store.ok, dtype=bool)
        self.labels = np.where(kept, new, 0).astype(np.int64)
        self.ok = base_ok & kept
        self.left_out = int(np.sum(base_ok & ~kept))
        self.errors = np.where(base_ok & ~kept, LEFT_OUT, np.asarray(store.errors).astype(str)).astype(object)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("_store", "selection"):
            raise AttributeError(name)
        return getattr(self._store, name)

    @property
    def n_samples(self) -> int:
        return len(self.labels)

    def usable_rows(self) -> np.ndarray:
        """Rows of kept classes that were extracted."""
        return np.flatnonzero(self.ok)

    def samples_frame(self, usable_only: bool = True) -> Any:
        """The wrapped store's samples table with the new class names, ``ok`` and errors."""
        frame = self._store.samples_frame(usable_only=False).copy()
        frame["label"] = np.asarray(self.classes, dtype=object)[self.labels]
        frame["ok"] = self.ok
        frame["error"] = self.errors.astype(str)
        return frame[self.ok] if usable_only else frame

    def class_selection(self) -> dict[str, Any]:
        """``{"spec", "classes", "mapping", "left_out"}``: what runs and bundles record."""
        return self.selection.record(self.left_out)

    def provenance(self) -> dict:
        """The wrapped store's provenance with the new classes and ``class_selection``."""
        out = dict(self._store.provenance())
        out.update(classes=list(self.classes), positive_class=self.positive_class,
                   class_selection=self.class_selection())
        return out


def select_classes(store: Any, spec: str | None, positive: str | None = None, alone: bool = True) -> Any:
    """``store`` seen through ``--classes spec`` (``None``: the store itself, unchanged). ``alone=False``: the
    command takes ``--positive`` only with ``--classes`` (``train``, ``study``: the store's own positive class
    is the one without it)."""
    if spec is None:
        if positive is not None and not alone and positive != getattr(store, "positive_class", None):
            raise FusionfeatError(f"--positive {positive!r} needs --classes here (e.g. --classes "
                                  f"{','.join(c for c in store.classes if c != positive)},{positive}); without it "
                                  f"the store's own classes are used, positive {store.positive_class!r}")
        return store
    return SelectedStore(store, parse_classes(spec, list(store.classes), positive))


def selection_mapping(store: Any) -> dict[str, str | None] | None:
    """The class selection a store is seen through, as each store class's new class (None: left out); ``None``
    for the store itself or a selection that keeps every class under its own name. This is what a fine-tuning
    fold plan records (``FoldPlan.classes``), so it identifies a selection however ``--classes`` was spelt."""
    selection = getattr(store, "selection", None)
    if not isinstance(selection, ClassSelection):
        return None
    mapping = dict(selection.mapping)
    return None if all(new == old for old, new in mapping.items()) else mapping


def canonical_labels(store: Any) -> tuple[list[str], np.ndarray]:
    """The store's classes sorted by name and its labels as indices into them: a selection's labels in an order
    that does not depend on how ``--classes`` listed them (a fine-tuning of ``a,b`` is one of ``b,a``)."""
    classes = [str(c) for c in store.classes]
    order = sorted(classes, key=str.lower)
    remap = np.array([order.index(c) for c in classes], dtype=np.int64)
    return order, remap[np.asarray(store.labels, dtype=np.int64)]
