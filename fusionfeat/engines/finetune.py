"""Per-fold fine-tuning without leakage: for each CV fold k, each backbone learns from fold k's training images
only, and the embeddings it then gives every image are stored under ``/finetuned/fold_<k>/<backbone>``.

The fold plan is fixed first and stored in ``/fold_plan`` so that ``fit --features finetuned`` evaluates
fold k's test images with the backbone that never saw them. Checkpoints, histories and per-epoch state live
in ``<store>.finetune/fold_<k>/<backbone>/``; a killed run resumes from the last saved epoch, finished folds
are skipped, and the store is only ever changed through ``fusionfeat.store.rewrite`` (copy, edit, rename).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import shutil
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from fusionfeat import runtime
from fusionfeat.data.images import Preprocess, dihedral_views, normalize_batch
from fusionfeat.data.manifest import Manifest
from fusionfeat.encoders import (
    IMAGENET,
    WeightsChoice,
    embed,
    get_backbone,
    input_stats,
    load_backbone,
    probe,
    random_backbones,
)
from fusionfeat.engines.distributed import SINGLE, DistContext
from fusionfeat.engines.extract import manifest_fingerprint
from fusionfeat.engines.image_bank import ImageBank, build_bank, open_bank
from fusionfeat.engines.train_loop import (
    BEST_KEYS,
    FineTuneNet,
    TrainConfig,
    TrainTask,
    load_checkpoint,
    memory_format,
    train,
    trunk_stages,
)
from fusionfeat.errors import DamagedBatchWarning, DatasetError, FusionfeatError, RandomWeightsWarning, StoreError
from fusionfeat.fsio import FINETUNE, WRITE_ERRORS, clean_stale, marker_name, sha256_file, write_json
from fusionfeat.interrupts import keeping
from fusionfeat.protocols import DEFAULT_FOLDS, DEFAULT_SEED, check_split, default_protocol, inner_split, plan_folds
from fusionfeat.runtime import autocast, describe_device, resolve_precision
from fusionfeat.store import (
    FeatureStore,
    FoldPlan,
    PartialStore,
    finetuned_fold_group,
    rewrite,
    store_lock,
    write_finetuned_features,
)
from fusionfeat.store.selection import canonical_labels, select_classes, selection_mapping

PROTOCOLS = ("grouped", "stratified", "predefined")


@dataclass(frozen=True)
class FinetuneConfig:
    """Options of one ``fusionfeat finetune`` run. ``None`` plan options mean: the store's plan, else defaults."""

    backbones: list[str]
    weights: dict[str, WeightsChoice | str]
    train: TrainConfig = field(default_factory=TrainConfig)
    protocol: str | None = None
    n_folds: int | None = None
    seed: int | None = None
    input_size: int | None = None
    tokens: bool = True
    device: str = "auto"
    precision: str = "auto"
    workers: int | None = None
    embed_batch_size: int = 64
    overwrite: bool = False
    progress: bool = True
    classes: str | None = None  # --classes: fine-tune on a selection of the store's classes (store.selection)


@dataclass
class TaskReport:
    """What happened to one backbone on one fold."""

    fold: int
    backbone: str
    status: str  # "stored" (skipped: already in the store), "trained", "resumed"
    best_epoch: int = 0
    epochs_run: int = 0
    stopped_early: bool = False
    train_images_per_s: float = 0.0
    embed_images_per_s: float = 0.0
    checkpoint: str = ""


@dataclass
class FinetuneResult:
    store: Path
    work: Path
    plan: FoldPlan
    reports: list[TaskReport]
    seconds: float


@dataclass
class _Task:
    fold: int
    backbone: str
    settings: dict
    sha256: str
    stored: bool  # the store already holds this task's features

    @property
    def key(self) -> str:
        return f"fold {self.fold} {self.backbone}"


@dataclass
class _Job:
    """Everything rank 0 decided before any work, broadcast to the other ranks."""

    store: Path
    work: Path
    paths: list[str]  # absolute image paths, store row order
    rel_paths: np.ndarray
    labels: np.ndarray
    groups: np.ndarray
    ok: np.ndarray
    sha256: np.ndarray
    classes: list[str]
    preprocess: Preprocess
    plan: FoldPlan
    train: TrainConfig
    provenance: dict[str, dict]  # starting weights per backbone
    tasks: list[_Task]

    @property
    def folds(self) -> list[int]:
        return sorted({t.fold for t in self.tasks})


def work_dir(store: Path) -> Path:
    """Where checkpoints and per-epoch state of ``store`` live."""
    return store.with_name(store.name + ".finetune")


def finetune(manifest: Manifest, store: str | Path, config: FinetuneConfig,
             ctx: DistContext = SINGLE) -> FinetuneResult | None:
    """Fine-tune every backbone on every fold and store the embeddings; returns the result on rank 0 only.

    Random starting weights raise a ``RandomWeightsWarning`` once every option is validated (so a rejected
    run says only why it was rejected).
    """
    start = time.perf_counter()
    store = Path(store).expanduser()
    try:
        return _finetune(manifest, store, config, ctx, start)
    except OSError as exc:
        if exc.errno not in WRITE_ERRORS:
            raise
        reason = "the disk is full" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else (exc.strerror or str(exc))
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        raise StoreError(f"cannot write the fine-tuning of {store}: {reason}{where}; every checkpoint and fold "
                         "written before is kept: free space and run the same command to resume") from None


def _finetune(manifest: Manifest, store: Path, config: FinetuneConfig, ctx: DistContext,
              start: float) -> FinetuneResult | None:
    with contextlib.ExitStack() as stack:
        job = ctx.run_on_main(lambda: _prepare(manifest, store, config, stack))
        stack.enter_context(keeping(f"checkpoints and finished folds in {job.work}"))
        randoms = random_backbones({b: WeightsChoice.parse(config.weights.get(b, IMAGENET))
                                    for b in config.backbones})
        if randoms and ctx.is_main:
            verb = "starts" if len(randoms) == 1 else "start"
            warnings.warn(f"{', '.join(randoms)} {verb} from RANDOM weights: not ImageNet fine-tuning",
                          RandomWeightsWarning, stacklevel=2)
        device = ctx.device(config.device)
        precision = resolve_precision(config.precision, device)
        reports = [TaskReport(t.fold, t.backbone, "stored") for t in job.tasks if t.stored]
        todo = [t for t in job.tasks if not t.stored]
        if todo:
            bank = _bank(job, config, device, ctx)
            for fold in job.folds:
                tasks = [t for t in todo if t.fold == fold]
                if not tasks:
                    continue
                reports += [_run_task(job, t, config, bank, device, precision, ctx) for t in tasks]
                ctx.barrier()
                if ctx.is_main:
                    _write_fold(job, fold, tasks, reports, device, precision)
                ctx.barrier()
            if ctx.is_main:
                shutil.rmtree(job.work / "images", ignore_errors=True)
        if not ctx.is_main:
            return None
        reports.sort(key=lambda r: (r.fold, r.backbone))
        return FinetuneResult(store, job.work, job.plan, reports, time.perf_counter() - start)


# ----------------------------------------------------------------------------------------------- planning


def _prepare(manifest: Manifest, store: Path, config: FinetuneConfig, stack: contextlib.ExitStack) -> _Job:
    """Rank 0: lock the store, check DATA against it, fix the fold plan, and decide what each task needs."""
    if not store.exists():
        raise StoreError(f"no feature store at {store}; create it first with `fusionfeat extract DATA -o {store}`")
    stack.enter_context(store_lock(store))
    clean_stale(store.resolve())  # a killed rewrite's marked copy; we hold the lock, and touch nothing else
    with FeatureStore.open(store) as opened:
        _check_manifest(manifest, opened)
        fs = select_classes(opened, config.classes)
        preprocess = _store_preprocess(fs, config.input_size, config.backbones)
        token_grid = (fs.root_attrs().get("settings") or {}).get("token_grid")  # extract --token-grid, if any
        plan = _fold_plan(fs, config)
        stored_plan = fs.fold_plan()
        existing = fs.finetuned_settings()
        classes, labels = _training_labels(fs)
        info = (fs.groups, np.asarray(fs.ok, dtype=bool), np.asarray(opened.ok, dtype=bool), fs.sha256, fs.paths)
    groups, ok, extracted, sha, rel_paths = info
    if stored_plan is not None and stored_plan != plan:
        if not config.overwrite:
            raise StoreError(
                f"{store} holds fine-tuned features made under another fold plan ({stored_plan.describe()}); "
                f"this run asks for {plan.describe()}. Rerun with that plan's options to continue it, "
                "or add --overwrite to replace every fine-tuned fold"
            )
        existing = {}
    train_config = replace(config.train, seed=plan.seed)
    loaded = {b: load_backbone(b, config.weights[b], plan.seed) for b in config.backbones}
    for name, model in loaded.items():  # validate before anything is written
        n_stages = len(trunk_stages(model.trunk, name))
        if config.train.freeze_stages > n_stages:
            raise FusionfeatError(f"--freeze-stages {config.train.freeze_stages}: {name} has {n_stages} stages")
    provenance = {b: m.provenance() for b, m in loaded.items()}
    work = work_dir(store)
    tasks = []
    images = _images_digest(sha, extracted)
    for fold in sorted(int(k) for k in np.unique(plan.fold[plan.fold >= 0])):
        for backbone in config.backbones:
            settings = _task_settings(manifest_fingerprint(manifest), images, plan, fold, backbone,
                                      provenance[backbone], train_config, preprocess, config.tokens, token_grid,
                                      plan.classes)
            digest = _sha(settings)
            # features stored before the key held the images' content came from this very store file (a
            # re-extraction replaces the file, fine-tuned groups and all), so its content key is implied
            stored = existing.get((fold, backbone)) in (digest, _sha(_without_images(settings)))
            task = _Task(fold, backbone, settings, digest, stored)
            if (fold, backbone) in existing and not task.stored and not config.overwrite:
                raise StoreError(
                    f"{store} already holds fine-tuned {backbone} features for fold {fold}, made with other "
                    "settings; rerun with the same options, or add --overwrite to redo them"
                )
            if not task.stored:
                _claim_work_folder(work)
                _prepare_task_folder(work, task, config.overwrite)
            tasks.append(task)
    paths = [str(manifest.absolute(s)) for s in manifest.samples]
    return _Job(store, work, paths, rel_paths, labels, groups, ok, sha, classes, preprocess, plan, train_config,
                provenance, tasks)


def _claim_work_folder(work: Path) -> None:
    """Use ``<store>.finetune`` only if fusionfeat made it (marker, or only fold_*/images inside); mark it."""
    marker = work / marker_name(FINETUNE)
    if marker.is_file():
        return
    if os.path.lexists(work):
        if not work.is_dir() or work.is_symlink() or \
                any(not (p.name.startswith("fold_") or p.name == "images") for p in work.iterdir()):
            raise StoreError(f"{work} exists but is not a fusionfeat fine-tuning work folder; move it away "
                             "(fusionfeat keeps checkpoints there)")
    try:
        work.mkdir(parents=True, exist_ok=True)
        marker.write_text("written by fusionfeat as a fine-tuning work folder\n", encoding="utf-8")
    except OSError as exc:
        raise StoreError(f"cannot create the fine-tuning work folder {work}: {exc.strerror or exc}") from None


def _check_manifest(manifest: Manifest, fs: FeatureStore) -> None:
    """DATA must list the store's samples, in the store's order, with the same labels."""
    settings = fs.root_attrs().get("settings", {})
    if isinstance(settings, dict) and settings.get("manifest") == manifest_fingerprint(manifest):
        return
    where = f"DATA ({manifest.root})"
    if len(manifest) != fs.n_samples:
        raise DatasetError(f"{where} lists {len(manifest)} images but {fs.path} holds {fs.n_samples}: "
                           "give the data folder (or manifest) the store was extracted from")
    for i, sample in enumerate(manifest.samples):
        if sample.path != fs.paths[i] or sample.label != fs.labels[i]:
            raise DatasetError(f"{where} does not match {fs.path}: row {i} is {sample.path} "
                               f"(label {sample.label}) in DATA but {fs.paths[i]} (label {fs.labels[i]}) in the store")
    if [s.group for s in manifest.samples] != list(fs.groups) or [s.fold for s in manifest.samples] != list(fs.folds):
        raise DatasetError(f"{where} gives other subjects or folds than {fs.path}; use the same layout/manifest")


def _store_preprocess(fs: FeatureStore, input_size: int | None, backbones: list[str]) -> Preprocess:
    """The store's preprocessing (so fine-tuned features are comparable), with an optional new input size;
    the fine-tuned backbones' weights must expect the store's normalisation."""
    stored = Preprocess.from_attrs(fs.attrs(fs.backbones[0]))
    preprocess = replace(stored, input_size=int(input_size or stored.input_size))
    if preprocess.normalize == "imagenet" and input_stats(backbones) != preprocess.mean_std():
        raise FusionfeatError(f"--backbones {','.join(backbones)} expect mean/std {input_stats(backbones)}, but "
                              f"{fs.path} was extracted with {preprocess.mean_std()}; extract a store for them first")
    for name in backbones:
        probe(name, preprocess.input_size)  # an input size the backbone cannot take is refused here
    return preprocess


def _training_labels(fs: FeatureStore) -> tuple[list[str], np.ndarray]:
    """The classes and labels the backbones learn: the store's own, or a ``--classes`` selection's in name order
    (``canonical_labels``), so that one selection gives one fine-tuning however it is spelt."""
    if selection_mapping(fs) is None:
        return list(fs.classes), np.asarray(fs.labels)
    return canonical_labels(fs)


def _fold_plan(fs: FeatureStore, config: FinetuneConfig) -> FoldPlan:
    """The fold plan ``fit`` will use: the stored one when no plan option is given (and the class selection is
    the stored plan's), else a new one; a new selection without plan options keeps the stored plan's protocol,
    number of folds and seed."""
    stored = fs.fold_plan()
    mapping = selection_mapping(fs)
    if config.protocol == "paper":
        raise FusionfeatError(
            "--cv paper is the paper's leaky protocol (copies split as rows of their own): it has no per-sample "
            "folds to fine-tune on without leakage; use --cv grouped, stratified or predefined"
        )
    if config.protocol is not None and config.protocol not in PROTOCOLS:
        raise FusionfeatError(f"--cv {config.protocol!r}: choose one of {', '.join(PROTOCOLS)}")
    no_options = config.protocol is None and config.n_folds is None and config.seed is None
    if stored is not None and no_options and stored.classes == mapping:
        return stored
    base = stored if no_options else None
    protocol = config.protocol or (base.protocol if base else default_protocol(fs.groups, fs.ok))
    n_folds = int(config.n_folds or (base.n_folds if base else DEFAULT_FOLDS))
    seed = int(config.seed if config.seed is not None else (base.seed if base else DEFAULT_SEED))
    classes, labels = _training_labels(fs)
    fold = plan_folds(labels, fs.groups, fs.folds, protocol, n_folds, seed, mask=fs.ok, class_names=classes)
    if protocol == "predefined":
        n_folds = int(len(np.unique(fold[fold >= 0])))
    return FoldPlan(protocol, n_folds, seed, fold, mapping)


def _images_digest(sha256: np.ndarray, ok: np.ndarray) -> str:
    """One SHA-256 of every store row's image content (and whether it was usable), in row order."""
    digest = hashlib.sha256()
    for value, usable in zip(np.asarray(sha256).astype(str), np.asarray(ok, dtype=bool), strict=True):
        digest.update(f"{value}\t{int(usable)}\n".encode())
    return digest.hexdigest()


def _without_images(settings: dict) -> dict:
    return {k: v for k, v in settings.items() if k != "images"}


def _task_settings(fingerprint: str, images: str, plan: FoldPlan, fold: int, backbone: str, provenance: dict,
                   train: TrainConfig, preprocess: Preprocess, tokens: bool, token_grid: int | None = None,
                   classes: dict[str, str | None] | None = None) -> dict:
    """Everything that changes a task's numbers (not the device, precision or number of processes): the data's
    paths and labels, and the content of every image (changed pixels or a re-extracted store start over); the
    store's ``--token-grid`` when it has one (token maps are pooled as the frozen ones were); the ``--classes``
    selection when there is one (``FoldPlan.classes``: another selection never reuses these checkpoints)."""
    return {
        "data": fingerprint,
        "images": images,
        "fold_plan_sha256": plan.sha256,
        "fold": fold,
        "backbone": backbone,
        "weights": {k: provenance[k] for k in ("weights", "weights_kind", "weights_sha256", "seed")},
        "train": train.as_dict(),
        "preprocess": preprocess.as_attrs(),
        "tokens": tokens,
        **({"token_grid": int(token_grid)} if token_grid else {}),
        **({"classes": classes} if classes is not None else {}),
    }


def _sha(obj: object) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def _task_folder(work: Path, fold: int, backbone: str) -> Path:
    return work / f"fold_{fold}" / backbone


def _prepare_task_folder(work: Path, task: _Task, overwrite: bool) -> None:
    """Check (or, with ``overwrite``, clear) a task's folder made with other settings; write its config.json."""
    folder = _task_folder(work, task.fold, task.backbone)
    config_file = folder / "config.json"
    if config_file.is_file():
        previous = _read_config(config_file)
        settings = previous.get("settings") if isinstance(previous.get("settings"), dict) else {}
        if not settings:
            warnings.warn(f"{task.key}: {config_file} is damaged; training this task again from the start",
                          DamagedBatchWarning, stacklevel=2)
            shutil.rmtree(folder)
        elif previous.get("settings_sha256") != task.sha256 and \
                _without_images(settings) == _without_images(task.settings):
            warnings.warn(f"{task.key}: the checkpoints in {folder} were trained on other image content (the images "
                          "or the store changed since, or they predate content keys); training this task again",
                          DamagedBatchWarning, stacklevel=2)
            shutil.rmtree(folder)
        elif previous.get("settings_sha256") != task.sha256:
            if not overwrite:
                changed = _changed(settings, task.settings)
                raise StoreError(
                    f"{folder} holds an unfinished fine-tuning of {task.key} made with other settings "
                    f"({changed}); rerun with the same options to resume, or add --overwrite to start it over"
                )
            shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob(".*.tmp"):  # an atomic write cut short by a kill; we hold the lock
        stale.unlink(missing_ok=True)
    write_json(config_file, {"settings_sha256": task.sha256,
                             "settings": task.settings})


def _read_config(path: Path) -> dict:
    """A task folder's ``config.json``; a damaged one (cut short, edited) reads as no settings at all."""
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return {}
    return config if isinstance(config, dict) else {}


def _changed(previous: dict, current: dict, prefix: str = "") -> str:
    keys = sorted(set(previous) | set(current))
    out = []
    for key in keys:
        a, b = previous.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            inner = _changed(a, b, f"{prefix}{key}.")
            out += [inner] if inner else []
        elif a != b:
            out.append(f"{prefix}{key}")
    return ", ".join(out)


# ----------------------------------------------------------------------------------------------- work


def _bank(job: _Job, config: FinetuneConfig, device: torch.device, ctx: DistContext) -> ImageBank:
    """Decode every image once (rank 0), check it against the store, and share it (memmap / GPU copy)."""
    folder = job.work / "images"
    index = ctx.run_on_main(lambda: build_bank(job.paths, job.preprocess, folder, config.workers, device,
                                               config.progress))
    bank = open_bank(index)
    changed = [i for i in np.flatnonzero(job.ok) if not bank.ok[i] or bank.sha256[i] != job.sha256[i]]
    if changed:
        i = changed[0]
        why = bank.errors[i] or "its content changed since the store was extracted (SHA-256 differs)"
        raise DatasetError(f"{len(changed)} image(s) differ from the store, first {job.paths[i]}: {why}; "
                           "re-extract the store or restore the files")
    return bank.to_device(device)


def _run_task(job: _Job, task: _Task, config: FinetuneConfig, bank: ImageBank, device: torch.device,
              precision: str, ctx: DistContext) -> TaskReport:
    """Train (or resume) one backbone on one fold, then embed every image with its best epoch."""
    folder = _task_folder(job.work, task.fold, task.backbone)
    test = np.flatnonzero(job.plan.fold == task.fold)
    train_rows = np.flatnonzero((job.plan.fold >= 0) & (job.plan.fold != task.fold) & job.ok)
    fit, val = inner_split(train_rows, job.labels, job.groups, job.train.val_fraction, job.train.seed + task.fold)
    check_split(np.concatenate([fit, val]), test, job.groups, by_subject=job.plan.protocol == "grouped",
                sha256=job.sha256)
    ids = {"fold": task.fold, "backbone": task.backbone, "train": job.rel_paths[fit].tolist(),
           "val": job.rel_paths[val].tolist(), "train_sha256": job.sha256[fit].tolist(),
           "val_sha256": job.sha256[val].tolist()}
    if ctx.is_main:
        write_json(folder / "train_ids.json", ids)
    start = load_backbone(task.backbone, config.weights[task.backbone], job.train.seed)
    dim = probe(task.backbone, job.preprocess.input_size).dim
    model = FineTuneNet(start.trunk, dim, len(job.classes), job.train.head_dropout, job.train.seed + task.fold,
                        task.backbone)
    mean, std = job.preprocess.mean_std()
    payload = {"config": task.settings, "fold": task.fold, "backbone": task.backbone,
               "train_ids": ids["train"], "val_ids": ids["val"], "classes": list(job.classes)}
    train_task = TrainTask(task.key, folder, model, fit, val, job.labels, mean, std, task.sha256, payload)
    outcome = train(train_task, job.train, bank, device, precision, ctx, config.progress)
    best = folder / "best.pt"
    saved = load_checkpoint(best, device, BEST_KEYS)
    if saved is None:  # damaged after training finished (e.g. a full disk): train this task again, once
        warnings.warn(f"{task.key}: {best} is damaged or missing; training this task again from the start",
                      DamagedBatchWarning, stacklevel=2)
        if ctx.is_main:
            for name in ("last.pt", "best.pt", "history.json"):
                (folder / name).unlink(missing_ok=True)
        ctx.barrier()
        model = FineTuneNet(load_backbone(task.backbone, config.weights[task.backbone], job.train.seed).trunk, dim,
                            len(job.classes), job.train.head_dropout, job.train.seed + task.fold, task.backbone)
        train_task = replace(train_task, model=model)
        outcome = train(train_task, job.train, bank, device, precision, ctx, config.progress)
        saved = load_checkpoint(best, device, BEST_KEYS)
        if saved is None:
            raise StoreError(f"{task.key}: cannot read back the checkpoint {best} just written; check the disk")
    model.trunk.load_state_dict(saved["state_dict"])
    rate = _embed(job, task, model.trunk, bank, device, precision, ctx, config)
    status = "resumed" if outcome.resumed_from else "trained"
    return TaskReport(task.fold, task.backbone, status, outcome.best_epoch, outcome.epochs_run,
                      outcome.stopped_early, outcome.images_per_s, rate, str(best))


def _embedded(job: _Job, task: _Task) -> PartialStore:
    """The committed embedding batches of one task (each checked against its checksum sidecar)."""
    folder = _task_folder(job.work, task.fold, task.backbone) / f"embed-{task.sha256[:12]}"
    return PartialStore(folder, rerun="fusionfeat finetune")


@torch.inference_mode()
def _embed(job: _Job, task: _Task, trunk: torch.nn.Module, bank: ImageBank, device: torch.device, precision: str,
           ctx: DistContext, config: FinetuneConfig) -> float:
    """Embed every store row with the fine-tuned trunk (this rank's batches), committing one file per batch."""
    batches = _embedded(job, task)
    batches.folder.mkdir(parents=True, exist_ok=True)
    done = batches.done()
    layout = memory_format(device)
    trunk.eval().to(device, memory_format=layout)
    n, size = len(job.labels), config.embed_batch_size
    mine = [b for b in range(math.ceil(n / size)) if b % ctx.world == ctx.rank and b not in done]
    mean, std = job.preprocess.mean_std()
    bar = runtime.progress(sum(min(n, (b + 1) * size) - b * size for b in mine), config.progress and ctx.is_main,
                    f"embed {task.key}")
    t0, done = time.perf_counter(), 0
    for b in mine:
        rows = np.arange(b * size, min(n, (b + 1) * size))
        images = bank.batch(rows, device)
        views = dihedral_views(images).transpose(0, 1) if job.preprocess.n_views == 8 else images.unsqueeze(1)
        x = normalize_batch(views.flatten(0, 1), mean, std).contiguous(memory_format=layout)
        with autocast(device, precision):
            pooled, tokens = embed(trunk, x, config.tokens, grid=task.settings.get("token_grid"))
        arrays = {"rows": rows, "pooled": pooled.reshape(len(rows), views.shape[1], -1).cpu().numpy()}
        if tokens is not None:
            arrays["tokens"] = tokens.reshape(len(rows), views.shape[1], *tokens.shape[1:]).cpu().numpy()
        for key in ("pooled", "tokens"):
            if key in arrays:
                arrays[key][~job.ok[rows]] = 0  # images the store skipped stay zero, as in /features
        batches.write(b, arrays)
        done += len(rows)
        bar.update(len(rows))
    bar.close()
    seconds = time.perf_counter() - t0
    return done / seconds if done and seconds else 0.0


# ----------------------------------------------------------------------------------------------- the store


def _write_fold(job: _Job, fold: int, tasks: list[_Task], reports: list[TaskReport], device: torch.device,
                precision: str) -> None:
    """Rank 0: add fold ``fold``'s fine-tuned features (and the fold plan) to the store, crash-safely."""
    by_backbone = {r.backbone: r for r in reports if r.fold == fold and r.status != "stored"}
    with rewrite(job.store) as h5:
        parent = finetuned_fold_group(h5, job.plan, fold)
        for task in tasks:
            shape = probe(task.backbone, job.preprocess.input_size).pooled_to(task.settings.get("token_grid"))
            write_finetuned_features(parent, task.backbone, len(job.labels), job.preprocess.n_views, shape.dim,
                                     shape.n_tokens if task.settings["tokens"] else None,
                                     _task_attrs(job, task, by_backbone[task.backbone], device, precision),
                                     _embedded(job, task))
    for task in tasks:
        _embedded(job, task).remove()


def _task_attrs(job: _Job, task: _Task, report: TaskReport, device: torch.device, precision: str) -> dict:
    """The attributes of one task's fine-tuned features: provenance, training and the checkpoint."""
    folder = _task_folder(job.work, task.fold, task.backbone)
    best = folder / "best.pt"
    n_train = len(json.loads((folder / "train_ids.json").read_text(encoding="utf-8"))["train"])
    return {
        **job.provenance[task.backbone], **job.preprocess.as_attrs(),
        "precision": precision, "device": describe_device(device),
        "token_grid": probe(task.backbone, job.preprocess.input_size).pooled_to(task.settings.get("token_grid")).grid,
        "pooling": get_backbone(task.backbone).pooling,
        "finetuned": True, "fold": task.fold, "fold_plan_sha256": job.plan.sha256,
        "protocol": job.plan.protocol, "checkpoint": str(best.resolve()), "checkpoint_sha256": sha256_file(best),
        "best_epoch": report.best_epoch, "epochs_run": report.epochs_run, "stopped_early": report.stopped_early,
        "n_train_images": n_train, "train": job.train.as_dict(), "settings_sha256": task.sha256,
        "settings": task.settings, "started_from": job.provenance[task.backbone]["weights"],
    }
