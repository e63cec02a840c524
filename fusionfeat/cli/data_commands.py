"""``fusionfeat manifest``, ``extract`` and ``info``: from images to a feature store."""

from __future__ import annotations

import os
from pathlib import Path

import click

from fusionfeat.cli import main
from fusionfeat.cli.options import (
    device_option,
    layout_option,
    overwrite_option,
    positive_option,
    precision_option,
    quiet_option,
    root_option,
    workers_option,
)
from fusionfeat.data.images import MAX_INPUT_SIZE, Preprocess
from fusionfeat.data.manifest import build_manifest, write_manifest
from fusionfeat.encoders import parse_backbones, parse_weights
from fusionfeat.engines.compiled import AMX_MIN_FORWARDS
from fusionfeat.engines.extract import ExtractConfig, extract
from fusionfeat.errors import FusionfeatError, StoreError
from fusionfeat.fsio import CSV, check_not_input, check_output, ensure_parent


@main.command("manifest")
@click.argument("data", type=click.Path())
@click.option("-o", "--output", required=True, type=click.Path(), help="CSV file to write.")
@layout_option
@positive_option
@root_option
@overwrite_option
def manifest_command(data, output, layout, positive, root, overwrite):
    """Write the manifest (path,label,group,fold) of a data folder or CSV: what extract will read.

    \b
    Example:
      fusionfeat manifest C-NMC_training_data/ -o manifest.csv
    """
    sources = [data] if os.path.isfile(data) else []  # a CSV in the data folder is fine; the source CSV is not
    check_output(output, CSV, inputs=sources, overwrite=overwrite)
    manifest = build_manifest(data, layout=layout, positive=positive, root=root)
    write_manifest(manifest, output, overwrite=overwrite, inputs=sources)
    counts = ", ".join(f"{k} {v}" for k, v in manifest.counts().items())
    groups = len({s.group for s in manifest.samples if s.group})
    click.echo(f"{output}: {len(manifest)} images ({counts}), layout {manifest.layout}, "
               f"{groups or 'no'} subjects")
    for note in manifest.notes:
        click.echo(f"note: {note}")


def _parse_fill(value: str) -> tuple[int, int, int]:
    try:
        parts = [int(p) for p in value.split(",")]
    except ValueError:
        raise FusionfeatError(f"--fill {value!r}: give one grey level or R,G,B in 0..255") from None
    if len(parts) == 1:
        parts *= 3
    if len(parts) != 3:
        raise FusionfeatError(f"--fill {value!r}: give one grey level or R,G,B in 0..255")
    return tuple(parts)


@main.command("extract")
@click.argument("data", type=click.Path())
@click.option("-o", "--output", required=True, type=click.Path(), help="HDF5 store to write.")
@click.option("--backbones", default="resnet18,vgg16", show_default=True,
              help="Comma-separated backbones: registry names (resnet18, vgg16, dinobloom_s, dinov2_vits14, ...) "
                   "or any timm model as timm:<model_name>.")
@click.option("--weights", default="imagenet", show_default=True,
              help="imagenet (each backbone's published weights: torchvision's, or a timm model's from the local "
                   "Hugging Face cache, never downloaded), random, a state-dict FILE, or per backbone: "
                   "dinobloom_s=DinoBloom-S.pth,resnet18=random.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Seed for random weights.")
@click.option("--input-size", type=click.IntRange(min=32, max=MAX_INPUT_SIZE), default=224, show_default=True,
              help="Square input side in pixels.")
@click.option("--normalize", type=click.Choice(["imagenet", "unit"]), default="imagenet", show_default=True,
              help="imagenet: the weights' mean/std; unit: [0,1] (the paper's).")
@click.option("--fill", default="0", show_default=True, help="Padding colour: grey level or R,G,B.")
@click.option("--views", type=click.Choice(["1", "dihedral8"]), default="1", show_default=True,
              help="1, or the 8 rotations/mirrors (for leak-free balancing by augmentation).")
@click.option("--no-tokens", is_flag=True,
              help="Store pooled vectors only, no token maps (their grid depends on --input-size: 7x7 at 224 px) "
                   "[default: store both].")
@click.option("--token-grid", type=click.IntRange(min=1), default=None,
              help="Store token maps average-pooled down to at most NxN (e.g. 7: a /14 ViT's 16x16 at 224 px "
                   "becomes 7x7, 5x smaller); recorded in the store [default: each backbone's own grid].")
@device_option
@precision_option
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True,
              help="Images per forward pass (and per committed batch file).")
@workers_option
@click.option("--compile", "compile_", type=click.Choice(["auto", "on", "off"]), default="auto", show_default=True,
              help="torch.compile the trunks (frozen weights; a compile of tens of seconds, checked against eager "
                   "and recorded in the store). auto: only in bf16 on a CPU with AMX and for runs of at least "
                   f"{AMX_MIN_FORWARDS:,} image views, where it was measured to pay back; on: anywhere; off: eager.")
@click.option("--on-error", type=click.Choice(["fail", "skip"]), default="fail", show_default=True,
              help="fail: stop at an unreadable image (resumable); skip: record it in the store and go on.")
@click.option("--overwrite", is_flag=True,
              help="Replace an existing store or unfinished run made with other settings [default: refuse].")
@click.option("--dedupe", is_flag=True,
              help="Images with equal content (SHA-256): keep the first, record the others as skipped "
                   "[default: refuse].")
@quiet_option
@layout_option
@positive_option
@root_option
def extract_command(data, output, backbones, weights, seed, input_size, normalize, fill, views, no_tokens, token_grid,
                    device, precision, batch_size, workers, compile_, on_error, overwrite, dedupe, quiet, layout,
                    positive, root):
    """Extract pooled embeddings and token maps of every image into one HDF5 store (resumable).

    DATA is a dataset folder (C-NMC, ALL-IDB, one folder per class) or a manifest CSV.

    \b
    Example:
      fusionfeat extract C-NMC_training_data/ -o cnmc.h5 --backbones resnet18,vgg16 --weights imagenet
      fusionfeat extract ALL_IDB2/ -o s.h5 --backbones resnet18,dinobloom_s --weights dinobloom_s=DinoBloom-S.pth
    """
    check_not_input(Path(output), [data])
    ensure_parent(Path(output), "feature store")
    names = parse_backbones(backbones)
    config = ExtractConfig(
        backbones=names, weights=parse_weights(weights, names, seed), seed=seed,
        preprocess=Preprocess(input_size=input_size, fill=_parse_fill(fill), normalize=normalize, views=views),
        tokens=not no_tokens, device=device, precision=precision, batch_size=batch_size, workers=workers,
        on_error=on_error, overwrite=overwrite, progress=not quiet, dedupe=dedupe, token_grid=token_grid,
        compile=compile_,
    )
    manifest = build_manifest(data, layout=layout, positive=positive, root=root)
    for note in manifest.notes:
        click.echo(f"note: {note}", err=True)
    result = extract(manifest, output, config)  # under torchrun every rank runs this; rank 0 gets the result
    if result is None:
        return
    if result.already_complete:
        click.echo(f"{result.path} is already complete with these settings; nothing to do")
        return
    rate = result.n_computed / result.seconds if result.seconds else 0.0
    click.echo(f"{result.path}: {result.n_samples} samples ({result.n_skipped} skipped), "
               f"{result.n_computed} computed in {result.seconds:.1f} s ({rate:.1f} img/s)")


@main.command("info")
@click.argument("store", type=click.Path())
@click.option("--verify", is_flag=True,
              help="Recompute every feature dataset's SHA-256 and compare it with the one recorded at extraction "
                   "[default: summary only].")
def info_command(store, verify):
    """Print a readable summary of a feature store: samples, labels, provenance, skipped files.

    \b
    Example:
      fusionfeat info cnmc.h5 --verify
    """
    from fusionfeat.info import describe_store
    from fusionfeat.store import verify_checksums

    click.echo(describe_store(store))
    if not verify:
        return
    results = verify_checksums(store)
    for name, status in results:
        click.echo(f"verify     {name}: {status}")
    bad = [(n, s) for n, s in results if s not in ("OK", "NO CHECKSUM")]
    if bad:
        raise StoreError(f"{store}: {len(bad)} feature dataset(s) failed verification (first {bad[0][0]}: "
                         f"{bad[0][1]}); the store is damaged: re-extract it")
