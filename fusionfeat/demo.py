"""``fusionfeat demo``: the whole pipeline on a generated C-NMC-like dataset, in a few minutes on a laptop CPU."""

from __future__ import annotations

import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

from fusionfeat.data.images import Preprocess
from fusionfeat.data.manifest import build_manifest
from fusionfeat.data.synthetic import generate_cnmc_like
from fusionfeat.encoders import IMAGENET, RANDOM, get_backbone, imagenet_cache_path
from fusionfeat.engines.extract import ExtractConfig, extract
from fusionfeat.errors import RandomWeightsWarning
from fusionfeat.evaluation.cv import cross_validate
from fusionfeat.fsio import DEMO, check_output, marker_name, output_lock
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

    ``out`` must be new, empty, or (with ``overwrite``) a previous demo folder: only then is its content replaced.
    """
    out = check_output(Path(out), DEMO, overwrite=overwrite)
    with output_lock(out, "demo folder", remove=True):  # no .<name>.lock left in the working folder
        check_output(out, DEMO, overwrite=overwrite)
        if (out / marker_name(DEMO)).is_file():  # a previous demo: ours to replace
            for name in (DEMO_DATA, DEMO_STORE, DEMO_RUN):
                _remove(out / name)
        out.mkdir(exist_ok=True)
        (out / marker_name(DEMO)).write_text("written by fusionfeat demo\n")
        return _run_demo(out, subjects_all, subjects_hem, cells_per_subject, image_size, input_size, weights, device,
                         progress, echo)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif os.path.lexists(path):
        path.unlink()


def _run_demo(out: Path, subjects_all: int, subjects_hem: int, cells_per_subject: int, image_size: int,
              input_size: int, weights: str | None, device: str, progress: bool, echo) -> DemoResult:
    data = out / DEMO_DATA
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
         f"{subjects_all + subjects_hem} subjects in {data}")
    store = out / DEMO_STORE
    config = ExtractConfig(backbones=list(DEMO_BACKBONES), weights=dict.fromkeys(DEMO_BACKBONES, weights),
                           preprocess=Preprocess(input_size=input_size), device=device, overwrite=True,
                           progress=progress)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomWeightsWarning)  # said above, in the demo's own words
        extract(manifest, store, config)
    with FeatureStore.open(store) as fs:
        result = cross_validate(fs, list(HEAD_NAMES), protocol="grouped", folds=5, seed=0, device=device,
                                progress=progress)
    run_dir = write_run(result, out / DEMO_RUN)
    return DemoResult(run_dir, store, weights, len(manifest))
