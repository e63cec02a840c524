"""A readable summary of a feature store (what ``fusionfeat info`` prints)."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

from fusionfeat.store import FeatureStore, PartialStore, partial_dir, read_settings


def describe_store(path: str | Path) -> str:
    """Samples, labels, subjects, folds, per-backbone provenance and skipped files of one store."""
    path = Path(path).expanduser()
    if not path.exists() and partial_dir(path).is_dir():
        return _describe_unfinished(path)
    with FeatureStore.open(path) as store:
        root = store.root_attrs()
        lines = [f"store      {path}", f"created    {root.get('created', '?')} (complete)"]
        lines.append(f"data       {root.get('data_root', '?')} (layout {root.get('layout', '?')})")
        classes = (f"positive class {store.positive_class}" if store.positive_class is not None
                   else f"{len(store.classes)} classes, no positive class")
        lines.append(f"samples    {store.n_samples} ({_sample_counts(store)}; {classes})")
        subjects = sorted({g for g in store.groups if g})
        lines.append(f"subjects   {len(subjects)}" + ("" if subjects else " (unknown: folds will be image-level)"))
        folds = sorted({int(f) for f in store.folds if f >= 0})
        if folds:
            lines.append(f"folds      predefined {', '.join(map(str, folds))}")
        lines.append(f"views      {store.n_views}")
        versions = root.get("versions", {})
        if isinstance(versions, dict):
            lines.append("software   " + ", ".join(f"{k} {v}" for k, v in versions.items()))
        lines.append(f"device     {root.get('device', '?')}")
        for name in store.backbones:
            lines.extend(_describe_backbone(store, name))
        fine = store.finetuned_folds()
        if fine:
            plan = store.fold_plan()
            how = "?" if plan is None else f"{plan.protocol}, {plan.n_folds} folds, seed {plan.seed}"
            lines.append(f"finetuned  folds {', '.join(map(str, fine))} (plan: {how})")
        skipped = [(p, e) for p, e, ok in zip(store.paths, store.errors, store.ok, strict=True) if not ok]
        lines.append(f"skipped    {len(skipped)}")
        lines.extend(f"  {p}: {e}" for p, e in skipped[:50])
        if len(skipped) > 50:
            lines.append(f"  … and {len(skipped) - 50} more")
    return "\n".join(lines)


def _sample_counts(store: FeatureStore) -> str:
    """Usable samples per class, then the skipped ones, so the parts add up to the store's sample count."""
    counts = Counter(store.labels[store.ok].tolist())
    parts = [f"{name} {counts.get(i, 0)}" for i, name in enumerate(store.classes)]
    n_skipped = int(store.n_samples - sum(counts.values()))
    if n_skipped:
        parts.append(f"{n_skipped} skipped (listed below)")
    return ", ".join(parts)


def _describe_backbone(store: FeatureStore, name: str) -> list[str]:
    attrs = store.attrs(name)
    kind = attrs.get("weights_kind", "?")
    if kind == "random":
        weights = f"RANDOM (seed {attrs.get('seed')}) — not ImageNet features"
    elif kind == "imagenet":
        weights = f"{attrs.get('weights')} sha256 {attrs.get('weights_sha256')}"
    else:
        weights = f"file {attrs.get('weights')} sha256 {attrs.get('weights_sha256')} (a weights file, not ImageNet)"
    pooled = store.dataset_shape(name, "pooled")
    shapes = f"pooled {'×'.join(map(str, pooled))}"
    if store.has_tokens(name):
        shapes += f", tokens {'×'.join(map(str, store.dataset_shape(name, 'tokens')))}"
    grid = attrs.get("token_grid")
    tokens = f"; token grid {grid}x{grid}" if store.has_tokens(name) and grid else ""
    if tokens and "token_pooling" in attrs:
        native = attrs.get("native_token_grid")
        tokens += f" (pooled from {native}x{native} by --token-grid)"
    return [
        f"backbone   {name}: {shapes}",
        f"  weights  {weights}",
        f"  pooled   {attrs.get('pooling', '?')}{tokens}",
        f"  input    {attrs.get('input_size')} px, normalisation {attrs.get('normalization')}, "
        f"views {attrs.get('views')}, precision {attrs.get('precision')}{_compiled(attrs)}, "
        f"device {attrs.get('device')}",
    ]


def _compiled(attrs: dict) -> str:
    """`` (compiled: ...)`` for a trunk run compiled (``extract --compile``), else nothing (eager, or older stores)."""
    how = attrs.get("compile")
    if not how or how == "eager":
        return ""
    check = attrs.get("compile_check")
    return f" (compiled: {how}" + (f"; pooled within {float(check):.1g} of eager" if check is not None else "") + ")"


def _describe_unfinished(path: Path) -> str:
    """The state of an unfinished run, after checking every committed batch's checksum."""
    folder = partial_dir(path)
    head = f"store      {path}\n"
    settings = read_settings(folder)
    if settings is None and not (folder / "settings.json").exists():
        return head + ("status     UNFINISHED and NOT RESUMABLE: no settings.json in "
                       f"{folder}; a rerun of `fusionfeat extract` starts over")
    if settings is None:
        return head + (f"status     UNFINISHED and NOT RESUMABLE: {folder / 'settings.json'} is damaged; "
                       "rerun `fusionfeat extract` with --overwrite to start over")
    n = int(settings.get("n_samples", 0))
    batch = int(settings.get("batch_size", 1)) or 1
    total = math.ceil(n / batch) if n else 0
    partial = PartialStore(folder)
    done = {b for b in partial.done() if b < total}
    lines = [head + f"status     UNFINISHED: {len(done)}/{total} batches committed and intact "
             f"(~{min(n, len(done) * batch)}/{n} samples); rerun the same `fusionfeat extract` to resume"]
    if partial.damaged:
        lines.append(f"damaged    {len(partial.damaged)} batch file(s), recomputed on the rerun:")
        lines.extend(f"  {partial.batch_path(b).name}: {why}" for b, why in sorted(partial.damaged.items()))
    return "\n".join(lines)
