"""The extraction engine: manifest → decode once → every backbone on the same batch → committed batches → store.

Batches are fixed slices of the manifest (``batch_size`` rows each), so a resumed run recomputes exactly
the batches that were not committed, with the same shapes, and ends with the same features.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import shutil
import sys
import time
import warnings
from collections import deque
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

import fusionfeat
from fusionfeat.data.content import find_duplicates, hash_files
from fusionfeat.data.geometry import geometry_summary
from fusionfeat.data.images import Preprocess, normalize_batch
from fusionfeat.data.loader import ImageDataset, collate_images
from fusionfeat.data.manifest import Manifest
from fusionfeat.encoders import (
    IMAGENET,
    LoadedBackbone,
    WeightsChoice,
    embed,
    input_stats,
    load_backbone,
    probe,
    random_backbones,
)
from fusionfeat.engines.compiled import COMPILE_CHOICES, COMPILED, CompiledTrunks, compile_trunks, eager, wants_compile
from fusionfeat.engines.distributed import process_group
from fusionfeat.errors import (
    DamagedBatchWarning,
    FusionfeatError,
    ImageDecodeError,
    NonFiniteFeaturesWarning,
    RandomWeightsWarning,
    StoreError,
)
from fusionfeat.fsio import clean_stale, kind_of, temp_folder
from fusionfeat.interrupts import ignore_in_worker, keeping
from fusionfeat.runtime import autocast, default_workers, describe_device, progress, resolve_precision
from fusionfeat.store import (
    STR_DTYPE,
    FeatureStore,
    PartialStore,
    create_feature_datasets,
    create_store_file,
    finish_store,
    is_own_partial,
    is_own_store,
    now_iso,
    partial_dir,
    read_settings,
    record_checksums,
    store_lock,
)
from fusionfeat.store.chunks import ChunkEncoder, write_chunks

ON_ERROR = ("fail", "skip")


@dataclass
class ExtractConfig:
    """Options of one extraction; everything that changes the numbers is recorded in the store."""

    backbones: list[str]
    weights: dict[str, WeightsChoice | str]  # strings are parsed (``WeightsChoice.parse``) with ``seed``
    seed: int = 0
    preprocess: Preprocess = field(default_factory=Preprocess)
    tokens: bool = True
    device: str = "auto"
    precision: str = "auto"
    batch_size: int = 32
    workers: int | None = None
    on_error: str = "fail"
    overwrite: bool = False
    progress: bool = True
    dedupe: bool = False  # keep the first of images with equal SHA-256 (others skipped, never computed)
    token_grid: int | None = None  # store token maps pooled down to at most this many tokens per side
    compile: str = "auto"  # torch.compile the trunks: auto (bf16 on AMX, long runs), on, off (engines/compiled.py)

    def __post_init__(self):
        if self.on_error not in ON_ERROR:
            raise FusionfeatError(f"--on-error {self.on_error!r}: choose fail or skip")
        if self.batch_size < 1:
            raise FusionfeatError("--batch-size must be at least 1")
        if self.workers is not None and self.workers < 0:
            raise FusionfeatError("--workers must be 0 or more")
        if self.compile not in COMPILE_CHOICES:
            raise FusionfeatError(f"--compile {self.compile!r}: choose one of {', '.join(COMPILE_CHOICES)}")
        if self.token_grid is not None and self.token_grid < 1:
            raise FusionfeatError(f"--token-grid {self.token_grid}: give 1 or more tokens per side")
        self.weights = {b: WeightsChoice.parse(self.weights.get(b, IMAGENET), self.seed) for b in self.backbones}
        self.preprocess = self.preprocess.with_stats(*input_stats(self.backbones))
        for name in self.backbones:
            probe(name, self.preprocess.input_size)  # an input size the backbone cannot take is refused here


@dataclass(frozen=True)
class Content:
    """Every image's SHA-256 (``""`` if unreadable), read before any model runs, and the rows ``--dedupe``
    drops: row → the path of the earlier row with the same bytes."""

    digests: list[str]
    duplicate_of: dict[int, str]


@dataclass
class ExtractResult:
    path: Path
    n_samples: int
    n_skipped: int
    n_computed: int
    already_complete: bool = False
    seconds: float = 0.0


def manifest_fingerprint(manifest: Manifest) -> str:
    digest = hashlib.sha256()
    for s in manifest.samples:
        digest.update(f"{s.path}\t{s.label}\t{s.group}\t{s.fold}\n".encode())
    return digest.hexdigest()


def extract(manifest: Manifest, out: str | os.PathLike, config: ExtractConfig) -> ExtractResult | None:
    """Extract features of every manifest sample into the store at ``out`` (resuming if interrupted).

    Under torchrun (``WORLD_SIZE`` > 1, or an initialised process group) the work is split: rank 0 takes the
    store lock and prepares ``<store>.partial/``, every rank computes the batches ``b % world == rank``, and
    rank 0 assembles the store, which equals a single-process run's. Each rank loads (and hashes) every
    backbone once. Returns the result on rank 0 and None on the other ranks. The partial folder must be on a
    file system every rank sees (one node, or a shared disk).

    Before any model is loaded, rank 0 hashes every image (``hash_content``): two files with the same bytes
    are refused naming both, or with ``config.dedupe`` the later ones are skipped; every rank follows that one
    decision. Nothing is written before that check, so a refused run leaves nothing behind.
    """
    start = time.perf_counter()
    out = Path(out).expanduser()
    check_store_output(out, manifest, config.overwrite)
    with process_group(config.device) as ctx, contextlib.ExitStack() as stack:
        device = ctx.device(config.device)
        content = ctx.run_on_main(lambda: None if _finished_looking(out, config) else hash_content(manifest, config))
        randoms = random_backbones(config.weights)
        if randoms and ctx.is_main:
            warnings.warn(f"{', '.join(randoms)} {'uses' if len(randoms) == 1 else 'use'} RANDOM weights "
                          f"(seed {config.seed}): features are not ImageNet features",
                          RandomWeightsWarning, stacklevel=2)
        precision = resolve_precision(config.precision, device)
        models = [load_backbone(name, config.weights[name]) for name in config.backbones]
        runners = _prepare_trunks(out, manifest, config, models, device, precision)
        settings = _settings(manifest, config, models, device, precision, runners.compiled)
        finished = ctx.run_on_main(lambda: _open_run(out, config, settings, stack))
        if finished:
            return ExtractResult(out, len(manifest), 0, 0, already_complete=True) if ctx.is_main else None
        if content is None:  # the store was there at the first look and is gone now: hash, still before compute
            content = ctx.run_on_main(lambda: hash_content(manifest, config))
            if runners.compiled and runners.deviation is None:  # decided for that store, never compiled: now
                runners = compile_trunks(models, device, precision, config.batch_size, config.preprocess.input_size,
                                         strict=True, seed=config.seed)
        ctx.barrier()
        partial = PartialStore(partial_dir(out))
        stack.enter_context(keeping(f"committed batches in {partial.folder}"))
        n_batches = math.ceil(len(manifest) / config.batch_size)
        done = partial.done()
        warn_damaged(partial, ctx.world, ctx.rank)
        todo = [b for b in range(n_batches) if b % ctx.world == ctx.rank and b not in done]
        with disk_errors(out, partial):
            computed = _run_batches(manifest, config, models, device, precision, partial, todo, ctx.rank, content,
                                    runners.trunks)
        computed = int(ctx.all_sum([float(computed)])[0])
        result = None
        if ctx.is_main:
            with disk_errors(out, partial):
                skipped = assemble(manifest, out, config, models, device, precision, partial, settings,
                                   content.duplicate_of, runners)
            result = ExtractResult(out, len(manifest), skipped, computed, seconds=time.perf_counter() - start)
        ctx.barrier()
        return result


def _finished_looking(out: Path, config: ExtractConfig) -> bool:
    """True when ``out`` exists and is not to be replaced: the run will find it finished (or refuse it) and
    compute nothing, so its images need no hashing."""
    return out.exists() and not config.overwrite


def _prepare_trunks(out: Path, manifest: Manifest, config: ExtractConfig, models: list[LoadedBackbone],
                    device: torch.device, precision: str) -> CompiledTrunks:
    """The trunks to run: compiled (``config.compile``, decided from the device, precision and the number of image
    views) and checked against eager, or the eager ones. A store that looks finished is not compiled for: it
    records the decision, which is all the settings check needs."""
    recorded = _recorded_compile(out, config) if config.compile == "auto" else None
    wanted = recorded if recorded is not None else \
        wants_compile(config.compile, device, precision, len(manifest) * config.preprocess.n_views)
    if not wanted:
        return eager(models)
    if _finished_looking(out, config):
        return CompiledTrunks([m.trunk for m in models], compiled=True)
    return compile_trunks(models, device, precision, config.batch_size, config.preprocess.input_size,
                          strict=config.compile == "on", seed=config.seed)


def _recorded_compile(out: Path, config: ExtractConfig) -> bool | None:
    """Whether the finished store or the unfinished run at ``out`` was compiled (None: neither is there, or
    ``--overwrite``). ``--compile auto`` follows it, so a store made eager before the option existed, or by an
    earlier auto decision, is found complete or resumed, never refused for its compile setting."""
    if config.overwrite:
        return None
    settings = None
    if out.is_file() and is_own_store(out):
        with contextlib.suppress(Exception), FeatureStore.open(out) as store:  # damaged: the usual checks say so
            settings = store.root_attrs().get("settings")
    elif (partial_dir(out) / "settings.json").is_file():
        settings = read_settings(partial_dir(out))
    return "compile" in settings if isinstance(settings, dict) else None


def hash_content(manifest: Manifest, config: ExtractConfig) -> Content:
    """Hash every image of ``manifest`` and decide its duplicates (``DatasetError`` without ``--dedupe``)."""
    digests = hash_files([str(manifest.absolute(s)) for s in manifest.samples])
    return Content(digests, find_duplicates(manifest, digests, config.dedupe))


def _open_run(out: Path, config: ExtractConfig, settings: dict, stack: contextlib.ExitStack) -> bool:
    """Rank 0: lock the store, then either find it finished with these settings (True; other settings are
    refused) or create / check ``<store>.partial/`` before any rank writes to it (False)."""
    stack.enter_context(store_lock(out))
    clean_stale(out)  # e.g. a `.<store>.<pid>.assemble` of a killed run; we hold the lock
    if out.exists() and not config.overwrite:
        _check_finished(out, settings)
        return True
    PartialStore.open(out, settings, overwrite=config.overwrite)
    return False


def warn_damaged(partial: PartialStore, world_size: int = 1, rank: int = 0) -> None:
    """One warning line per damaged batch file of this rank: it will be recomputed, never assembled."""
    for batch, problem in sorted(partial.damaged.items()):
        if batch % world_size != rank:
            continue
        warnings.warn(f"{partial.batch_path(batch)} is damaged ({problem}); recomputing it", DamagedBatchWarning,
                      stacklevel=2)


@contextlib.contextmanager
def disk_errors(out: Path, partial: PartialStore):
    """A full disk, a read-only folder or a quota becomes one line naming the path and what is kept."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EFBIG):
            raise
        where = exc.filename or out
        kept = len(partial.candidates()) if partial.folder.is_dir() else 0
        raise StoreError(f"cannot write {where}: {os.strerror(exc.errno)}; the {kept} committed batch(es) in "
                         f"{partial.folder} are kept, free space (or fix permissions) and rerun to resume") from None


def _settings(manifest: Manifest, config: ExtractConfig, models: list[LoadedBackbone],
              device: torch.device, precision: str, compiled: bool = False) -> dict:
    """What must match for batches to be mixed in one store (``compile`` only when compiled, so eager stores keep
    the settings they had before the option existed)."""
    return {
        "manifest": manifest_fingerprint(manifest),
        "n_samples": len(manifest),
        "backbones": [m.provenance() for m in models],
        "preprocess": config.preprocess.as_attrs(),
        "tokens": config.tokens,
        "device_type": device.type,
        "precision": precision,
        "batch_size": config.batch_size,
        **({"token_grid": config.token_grid} if config.token_grid else {}),
        **({"compile": COMPILED} if compiled else {}),
    }


def check_store_output(out: Path, manifest: Manifest, overwrite: bool) -> None:
    """The output rule for a store, before any work: never one of the images; never a link, device, pipe or
    folder; with ``overwrite`` only a previous fusionfeat store is replaced (a user's thesis.h5 never is); and a
    ``<store>.partial`` folder fusionfeat did not make is never used (nor deleted)."""
    target = out.resolve()
    for sample in manifest.samples:
        if manifest.absolute(sample).resolve() == target:
            raise StoreError(f"-o {out} is one of the images the data lists ({sample.path}); choose another -o")
    if os.path.lexists(out):
        if out.is_symlink():
            raise StoreError(f"-o {out} is a symbolic link; give a real path for the store")
        if not out.is_file():
            raise StoreError(f"-o {out} is {kind_of(out)}, not a store file: fusionfeat never replaces one, even "
                             "with --overwrite; choose another -o")
        if overwrite and not is_own_store(out):
            raise StoreError(f"-o {out} exists and is not a fusionfeat feature store; --overwrite only replaces a "
                             "previous store: choose another -o")
    partial = partial_dir(out)
    if os.path.lexists(partial) and not is_own_partial(partial):
        raise StoreError(f"{partial} exists but fusionfeat did not make it (an unfinished extraction keeps its "
                         "batches there); move it away or choose another -o")


def _check_finished(out: Path, settings: dict) -> None:
    with FeatureStore.open(out) as store:
        previous = store.root_attrs().get("settings")
    if previous != settings:
        raise StoreError(
            f"{out} already exists and was made with other settings or data; "
            "choose another -o, or add --overwrite to replace it"
        )


def _run_batches(manifest: Manifest, config: ExtractConfig, models: list[LoadedBackbone], device: torch.device,
                 precision: str, partial: PartialStore, todo: list[int], rank: int, content: Content,
                 trunks: Sequence[torch.nn.Module] | None = None) -> int:
    if not todo:
        return 0
    paths = [str(manifest.absolute(s)) for s in manifest.samples]
    batches = [list(range(b * config.batch_size, min(len(paths), (b + 1) * config.batch_size))) for b in todo]
    total = sum(len(b) for b in batches)
    bar = progress(total, config.progress and rank == 0, f"extract {','.join(config.backbones)}")
    committer = _Committer(partial)
    try:
        embedded = iter_embeddings(paths, batches, models, config.preprocess, device, precision, config.workers,
                                   config.tokens, config.token_grid, digests=content.digests,
                                   skip=content.duplicate_of, trunks=trunks)
        for batch_no, (rows, arrays, digests, errors) in zip(todo, embedded, strict=True):
            bad = [i for i, e in enumerate(errors) if e and int(rows[i]) not in content.duplicate_of]
            if bad and config.on_error == "fail":
                i = bad[0]
                raise ImageDecodeError(
                    paths[rows[i]],
                    f"{errors[i]} (use --on-error skip to record and skip such files; "
                    "work done so far is kept and a rerun resumes)",
                )
            committer.submit(batch_no, _batch_record(rows, digests, errors, arrays, config.preprocess.n_views,
                                                     models, config.tokens, config.preprocess.input_size,
                                                     config.token_grid))
            bar.update(len(rows))
    finally:
        try:
            committer.close()  # batches already computed are committed even when the loop stops early
        finally:
            bar.close()
    return total


class _Committer:
    """Compresses token chunks and commits batch files on a background thread, at most ``depth`` batches
    behind the device, so neither compression nor fsync holds up the next forward pass."""

    def __init__(self, partial: PartialStore, depth: int = 2):
        self._partial = partial
        self._depth = depth
        self._encoder = ChunkEncoder()
        self._thread = ThreadPoolExecutor(max_workers=1)
        self._pending: deque[Future] = deque()

    def submit(self, batch_no: int, record: dict[str, np.ndarray]) -> None:
        while len(self._pending) >= self._depth:
            self._pending.popleft().result()
        self._pending.append(self._thread.submit(self._commit, batch_no, record))

    def _commit(self, batch_no: int, record: dict[str, np.ndarray]) -> None:
        for key in [k for k in record if k.endswith(".tokens")]:
            record[f"{key}_blob"], record[f"{key}_offsets"] = self._encoder.encode(record.pop(key))
        self._partial.write(batch_no, record)

    def close(self) -> None:
        try:
            while self._pending:
                self._pending.popleft().result()
        finally:
            self._thread.shutdown(wait=True)
            self._encoder.close()


def iter_embeddings(paths: Sequence[str], batches: Sequence[Sequence[int]], models: list[LoadedBackbone],
                    preprocess: Preprocess, device: torch.device, precision: str, workers: int | None,
                    keep_tokens: bool, token_grid: int | None = None, digests: Sequence[str] | None = None,
                    skip: Mapping[int, str] | None = None, trunks: Sequence[torch.nn.Module] | None = None):
    """Yield ``(rows, {backbone: (pooled, tokens)}, sha256s, errors)`` per batch of ``paths`` indices.

    Each image is decoded once (in loader workers) and every backbone runs on the same batch; rows whose
    image failed to decode have an error string and no features (features cover the good rows, in order).
    ``token_grid`` pools token maps down to at most that many tokens per side (``--token-grid``);
    ``digests`` are the files' SHA-256s when already computed (not hashed again); rows in ``skip`` are not
    read and come back with its reason as their error. ``trunks`` are the modules to run in place of each
    model's own trunk (compiled ones, ``engines/compiled.py``).
    """
    for m in models:
        m.trunk.to(device, memory_format=torch.channels_last)
    workers = default_workers(device) if workers is None else workers
    loader = DataLoader(
        ImageDataset(paths, preprocess, digests, skip), batch_sampler=batches, num_workers=workers,
        collate_fn=collate_images, pin_memory=device.type == "cuda", persistent_workers=False,
        prefetch_factor=4 if workers else None, worker_init_fn=ignore_in_worker,
    )
    mean, std = preprocess.mean_std()
    for rows, images, digests, errors in loader:
        yield rows, _forward(models, images, device, precision, mean, std, keep_tokens, token_grid, trunks), \
            digests, errors


def _forward(models: list[LoadedBackbone], images: torch.Tensor | None, device: torch.device, precision: str,
             mean, std, keep_tokens: bool,
             token_grid: int | None = None,
             trunks: Sequence[torch.nn.Module] | None = None) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    """Run every backbone on one decoded batch ``(B, V, 3, S, S)``; returns pooled and tokens per backbone.

    Views go through the trunk ``B`` images at a time, so ``--views dihedral8`` needs no more activation
    memory than ``--views 1`` at the same ``--batch-size``.
    """
    if images is None:
        return {}
    b, v = images.shape[:2]
    x = images.reshape(b * v, *images.shape[2:]).to(device, non_blocking=True)
    x = normalize_batch(x, mean, std).contiguous(memory_format=torch.channels_last)
    out = {}
    with torch.inference_mode(), autocast(device, precision):
        for m, trunk in zip(models, trunks or [m.trunk for m in models], strict=True):
            pooled, tokens = embed(trunk, x, keep_tokens, chunk=b, grid=token_grid)
            out[m.spec.name] = (pooled.reshape(b, v, -1).cpu().numpy(),
                                None if tokens is None else tokens.reshape(b, v, *tokens.shape[1:]).cpu().numpy())
    return out


def _batch_record(rows, digests, errors, arrays, n_views, models, keep_tokens, input_size,
                  token_grid=None) -> dict[str, np.ndarray]:
    ok = np.array([not e for e in errors], dtype=bool)
    record = {"rows": rows, "ok": ok, "sha256": np.array(digests, dtype="U64"), "error": np.array(errors, dtype=str)}
    for m in models:
        shape = probe(m.spec.name, input_size).pooled_to(token_grid)
        dim, n_tok = shape.dim, shape.n_tokens
        pooled = np.zeros((len(rows), n_views, dim), np.float32)
        tokens = np.zeros((len(rows), n_views, n_tok, dim), np.float16) if keep_tokens else None
        if m.spec.name in arrays:
            p, t = arrays[m.spec.name]
            pooled[ok] = p
            if keep_tokens:
                tokens[ok] = t
        record[f"{m.spec.name}.pooled"] = pooled
        if keep_tokens:
            record[f"{m.spec.name}.tokens"] = tokens
    return record


def assemble(manifest: Manifest, out: Path, config: ExtractConfig, models: list[LoadedBackbone],
             device: torch.device, precision: str, partial: PartialStore, settings: dict,
             duplicate_of: Mapping[int, str], runners: CompiledTrunks | None = None) -> int:
    """Write the HDF5 store from the committed batches (streamed: memory does not grow with N).

    Rows in ``duplicate_of`` (decided before compute) are recorded as skipped, "duplicate of <path>", also
    in batches an earlier version computed in full.
    """
    n = len(manifest)
    n_batches = math.ceil(n / config.batch_size)
    missing = sorted(set(range(n_batches)) - partial.done())
    if missing:
        raise StoreError(f"cannot assemble {out}: {len(missing)} batch(es) are not computed or damaged "
                         f"(first {missing[0]}); rerun the same `fusionfeat extract` to compute them")
    samples = {
        "path": np.array([s.path for s in manifest.samples], dtype=str),
        "label": np.array([s.label for s in manifest.samples], dtype=np.int64),
        "group": np.array([s.group for s in manifest.samples], dtype=str),
        "fold": np.array([s.fold for s in manifest.samples], dtype=np.int64),
    }
    root_attrs = {
        "created": now_iso(),
        "complete": False,
        "data_root": str(manifest.root.resolve()),
        "layout": manifest.layout,
        "versions": json.dumps(software_versions()),
        "settings": json.dumps(settings, sort_keys=True),
        "device": describe_device(device),
        "command": " ".join(sys.argv),
    }
    geometry = geometry_summary([manifest.absolute(s) for s in manifest.samples])
    if geometry is not None:  # the images' size, mode and padding, for predict/evaluate's geometry note
        root_attrs["input_geometry"] = json.dumps(geometry)
    folder = temp_folder(out, "assemble")  # marked: a kill leaves a folder clean_stale can prove is ours
    tmp = folder / out.name
    h5 = create_store_file(tmp, samples, list(manifest.classes), root_attrs)
    try:
        h5["samples"].attrs["positive"] = manifest.positive_class  # "" for more than two classes
        h5["samples"].create_dataset("sha256", shape=(n,), dtype=STR_DTYPE)
        h5["samples"].create_dataset("ok", shape=(n,), dtype=bool)
        h5["samples"].create_dataset("error", shape=(n,), dtype=STR_DTYPE)
        h5["samples"].create_dataset("nonfinite", shape=(n,), dtype=bool)
        features = h5.create_group("features")
        size = config.preprocess.input_size
        datasets = {}
        for m in models:
            native = probe(m.spec.name, size)
            shape = native.pooled_to(config.token_grid)
            attrs = {**m.provenance(), **config.preprocess.as_attrs(), "precision": precision,
                     "device": describe_device(device), "token_grid": shape.grid, "pooling": m.spec.pooling,
                     "native_token_grid": native.grid, "source": m.spec.source,
                     **(runners or eager(models)).attrs(m.spec.name)}
            if shape.grid != native.grid:
                attrs["token_pooling"] = (f"adaptive average of the {native.grid}x{native.grid} grid to "
                                          f"{shape.grid}x{shape.grid} (--token-grid {config.token_grid})")
            datasets[m.spec.name] = create_feature_datasets(
                features, m.spec.name, n, config.preprocess.n_views, shape.dim,
                shape.n_tokens if config.tokens else None, attrs)
        skipped, nonfinite = 0, []
        for b in range(n_batches):
            record = partial.read(b)
            lo, hi = int(record["rows"][0]), int(record["rows"][-1]) + 1
            ok, error = record["ok"].copy(), record["error"].astype(object)
            for row in range(lo, hi):
                if row in duplicate_of:
                    ok[row - lo], error[row - lo] = False, f"duplicate of {duplicate_of[row]}"
            bad = _nonfinite_rows(record, list(datasets), ok, error)
            nonfinite.extend(lo + int(i) for i in np.flatnonzero(bad))
            h5["samples/sha256"][lo:hi] = record["sha256"].astype(object)
            h5["samples/ok"][lo:hi] = ok
            h5["samples/error"][lo:hi] = error
            h5["samples/nonfinite"][lo:hi] = bad
            skipped += int((~ok).sum())
            for name, group in datasets.items():
                group["pooled"][lo:hi] = record[f"{name}.pooled"]
                if config.tokens:
                    write_chunks(group["tokens"], lo, record[f"{name}.tokens_blob"], record[f"{name}.tokens_offsets"])
        h5.attrs["n_skipped"] = skipped
        record_checksums(h5)
        finish_store(h5, tmp, out)
        if nonfinite:
            first = ", ".join(manifest.samples[r].path for r in nonfinite[:3])
            warnings.warn(f"{out}: {len(nonfinite)} image(s) gave non-finite (NaN or infinite) features and are left "
                          f"out (recorded in /samples/nonfinite; first: {first}); try --precision fp32",
                          NonFiniteFeaturesWarning, stacklevel=2)
    except BaseException:
        with contextlib.suppress(Exception):  # closing flushes, which fails again on a full disk
            h5.close()
        raise
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    partial.remove()
    return skipped


def _nonfinite_rows(record: dict, backbones: list[str], ok: np.ndarray, error: np.ndarray) -> np.ndarray:
    """Rows of a committed batch whose pooled features hold NaN or infinities in any backbone or view: marked
    not ``ok`` (left out of every fit, like an image that could not be read), with the reason in ``error``."""
    bad = np.zeros(len(ok), dtype=bool)
    for name in backbones:
        pooled = np.asarray(record[f"{name}.pooled"])
        here = ok & ~np.isfinite(pooled.reshape(len(pooled), -1)).all(axis=1)
        for i in np.flatnonzero(here & ~bad):
            error[i] = f"non-finite (NaN or infinite) {name} features; try --precision fp32"
        bad |= here
    ok &= ~bad
    return bad


def software_versions() -> dict[str, str]:
    import h5py
    import torchvision

    return {
        "fusionfeat": fusionfeat.__version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        **_timm_version(),
        "h5py": h5py.__version__,
        "numpy": np.__version__,
        "python": sys.version.split()[0],
    }


def _timm_version() -> dict[str, str]:
    try:
        import timm
    except ImportError:  # pragma: no cover - timm is a dependency
        return {}
    return {"timm": timm.__version__}
