"""``fusionfeat demo``: the whole pipeline on a generated C-NMC-like dataset, in a few minutes on a laptop CPU."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import h5py

from fusionfeat.data.images import Preprocess
from fusionfeat.data.manifest import build_manifest
from fusionfeat.data.synthetic import generate_cnmc_like
from fusionfeat.encoders import IMAGENET, RANDOM, get_backbone, imagenet_cache_path
from fusionfeat.engines.extract import ExtractConfig, extract
from fusionfeat.errors import FusionfeatError, RandomWeightsWarning
from fusionfeat.evaluation.cv import cross_validate
from fusionfeat.fsio import DEMO, check_output, marker_name, output_target
from fusionfeat.heads.zoo import HEAD_NAMES
from fusionfeat.report import write_run
from fusionfeat.store import FeatureStore

DEMO_DATA, DEMO_STORE, DEMO_RUN = "data", "features.h5", "run"

DEMO_BACKBONES = ("resnet18", "vgg16")


@dataclass
class DemoResult:
    run_dir: Path
    store: Path
    weights: str
    n_images: int


def run_demo(out: Path, subjects_all: int = 8, subjects_hem: int = 6, cells_per_subject: int = 12,
             image_size: int = 160, input_size: int = 128, weights: str | None = None, device: str = "auto",
             progress: bool = True, echo=print, overwrite: bool = False) -> DemoResult:
    """Generate data → extract both backbones → 5-fold subject-grouped CV of every head → run folder.

    ``out`` must be new, empty, or (with ``overwrite``) a previous demo folder holding only what the demo
    writes. The new demo is built aside (a marked temporary folder beside ``out``) and swapped in only once
    complete, like ``fit``'s run folder: a kill or a full disk midway leaves the previous demo as it was.
    """
    out = check_output(Path(out), DEMO, overwrite=overwrite)
    _refuse_foreign_files(out)
    with output_target(out, DEMO, overwrite=overwrite, remove_lock=True) as target:  # no lock left behind
        _refuse_foreign_files(out)  # again, now that we hold the lock
        weights_used, n_images = _run_demo(target.path, out, subjects_all, subjects_hem, cells_per_subject,
                                           image_size, input_size, weights, device, progress, echo)
    return DemoResult(out / DEMO_RUN, out / DEMO_STORE, weights_used, n_images)


_OWN = {DEMO_DATA, DEMO_STORE, DEMO_RUN, marker_name(DEMO), f"{DEMO_STORE}.lock", f".{DEMO_RUN}.lock",
        f".{DEMO_STORE}.lock"}


def _refuse_foreign_files(out: Path) -> None:
    """A previous demo folder is replaced whole: refuse when it holds anything the demo did not write."""
    if not out.is_dir() or not (out / marker_name(DEMO)).is_file():
        return
    foreign = sorted(p.name for p in out.iterdir() if p.name not in _OWN)
    if foreign:
        raise FusionfeatError(f"-o {out} is a previous demo folder that also holds {foreign[0]!r}, which the demo "
                              "did not write; --overwrite replaces the whole folder: move it out first, or choose "
                              "another -o")


def _run_demo(work: Path, out: Path, subjects_all: int, subjects_hem: int, cells_per_subject: int, image_size: int,
              input_size: int, weights: str | None, device: str, progress: bool, echo) -> tuple[str, int]:
    """Build the demo in ``work``, recording ``out`` (where it will be) as the data's location; returns the
    weights used and the number of images."""
    data = work / DEMO_DATA
    generate_cnmc_like(data, n_subjects_all=subjects_all, n_subjects_hem=subjects_hem,
                       cells_per_subject=cells_per_subject, size=image_size, n_folds=3, seed=0)
    manifest = build_manifest(data)
    if weights is None:
        weights = IMAGENET if all(imagenet_cache_path(get_backbone(b)).is_file() for b in DEMO_BACKBONES) else RANDOM
    if weights == RANDOM:
        echo("WARNING: ImageNet weights are not in the torch hub cache, so the demo uses RANDOM weights "
             "(seeded). Its numbers show the pipeline working, not what ImageNet features achieve.")
    counts = ", ".join(f"{k} {v}" for k, v in manifest.counts().items())
    echo(f"demo data: {len(manifest)} synthetic cells ({counts}) from "
         f"{subjects_all + subjects_hem} subjects in {out / DEMO_DATA}")
    store = work / DEMO_STORE
    config = ExtractConfig(backbones=list(DEMO_BACKBONES), weights=dict.fromkeys(DEMO_BACKBONES, weights),
                           preprocess=Preprocess(input_size=input_size), device=device, overwrite=True,
                           progress=progress)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomWeightsWarning)  # said above, in the demo's own words
        extract(manifest, store, config)
    with h5py.File(store, "r+") as h5:  # the data's final place, not this temporary folder
        h5.attrs["data_root"] = str((out / DEMO_DATA).resolve())
    with FeatureStore.open(store) as fs:
        result = cross_validate(fs, list(HEAD_NAMES), protocol="grouped", folds=5, seed=0, device=device,
                                progress=progress)
    result.provenance["store"] = str(out / DEMO_STORE)  # where it will be, as for data_root
    write_run(result, work / DEMO_RUN)
    return weights, len(manifest)
