"""``fusionfeat finetune``: per-fold fine-tuned backbones, their embeddings cached in the store."""

from __future__ import annotations

import os

import click

from fusionfeat.cli import main
from fusionfeat.cli.options import (
    classes_option,
    device_option,
    layout_option,
    positive_option,
    precision_option,
    quiet_option,
    root_option,
    workers_option,
)
from fusionfeat.data.images import MAX_INPUT_SIZE
from fusionfeat.data.manifest import build_manifest
from fusionfeat.encoders import parse_backbones, parse_weights
from fusionfeat.engines.train_loop import FINETUNE_BALANCES, TrainConfig, parse_augment

_D = TrainConfig()
USAGE = "give STORE DATA, e.g. `fusionfeat finetune cnmc.h5 C-NMC_training_data/`"


def store_and_data(paths: tuple[str, ...], store_option: str | None) -> tuple[str, str]:
    """``(store, data)`` from ``finetune STORE DATA`` or the deprecated ``finetune DATA --store STORE``.

    The deprecated form prints one ``warning:`` line (on the first process only, under torchrun); giving the
    store both ways, or not at all, is a usage error (one line, exit 2)."""
    if store_option is None:
        if len(paths) == 2:
            return paths[0], paths[1]
        raise click.UsageError(f"expected STORE and DATA, got {len(paths)} argument(s): {USAGE}")
    if len(paths) == 1:
        if os.environ.get("RANK", "0") in ("", "0"):
            click.echo("warning: `finetune DATA --store STORE` is deprecated: write `fusionfeat finetune STORE "
                       "DATA`, the order every other command takes", err=True)
        return store_option, paths[0]
    if len(paths) == 2:
        raise click.UsageError("the store is given twice (STORE argument and --store): drop --store, the "
                               f"deprecated form; {USAGE}")
    raise click.UsageError(f"with --store (deprecated) give DATA only, got {len(paths)} argument(s); {USAGE}")


@main.command("finetune")
@click.argument("paths", nargs=-1, metavar="STORE DATA", type=click.Path())
@click.option("--store", "store_option", default=None, type=click.Path(dir_okay=False),
              help="Deprecated: the old form `finetune DATA --store STORE`; give STORE as the first argument "
                   "[default: the STORE argument].")
@click.option("--backbones", default="resnet18,vgg16", show_default=True, help="Comma-separated backbones.")
@click.option("--weights", default="imagenet", show_default=True,
              help="Starting weights: imagenet, random, a state-dict FILE, or per backbone: "
              "vgg16=FILE,resnet18=random.")
@click.option("--cv", "--protocol", "protocol", type=click.Choice(["grouped", "stratified", "predefined", "paper"]),
              default=None, help="Fold protocol, as for fit [default: the store's fold plan, else grouped when "
              "subjects are known, else stratified]. paper is refused (leaky).")
@click.option("--folds", type=click.IntRange(min=2), default=None,
              help="Number of folds [default: the store's plan, else 5].")
@click.option("--seed", type=click.IntRange(min=0), default=None,
              help="Seed of the fold plan, of training and of random weights [default: the store's plan, else 0].")
@click.option("--input-size", type=click.IntRange(min=32, max=MAX_INPUT_SIZE), default=None,
              help="Square input side [default: the store's].")
@click.option("--epochs", default=_D.epochs, show_default=True, help="Most epochs per fold and backbone.")
@click.option("--batch-size", type=click.IntRange(min=1), default=_D.batch_size, show_default=True,
              help="Images per step, over all processes.")
@click.option("--lr", default=_D.lr, show_default=True, help="Learning rate of the head (AdamW).")
@click.option("--backbone-lr-scale", default=_D.backbone_lr_scale, show_default=True,
              help="Backbone learning rate = lr x this (0 trains the head only).")
@click.option("--weight-decay", default=_D.weight_decay, show_default=True, help="AdamW weight decay.")
@click.option("--warmup-epochs", default=_D.warmup_epochs, show_default=True,
              help="Linear warm-up before the cosine decay (fractions allowed).")
@click.option("--freeze-stages", default=_D.freeze_stages, show_default=True,
              help="Freeze the first N stages of each backbone (ResNet: stem, layer1-4; VGG: 5 conv blocks; others: "
              "a stage per resolution, ViT: patch embedding then one per block).")
@click.option("--label-smoothing", default=_D.label_smoothing, show_default=True,
              help="Label smoothing of the cross-entropy loss.")
@click.option("--balance", type=click.Choice(FINETUNE_BALANCES), default=_D.balance, show_default=True,
              help="weight: class-weighted loss; sampler: class-balanced sampling; none.")
@click.option("--patience", default=_D.patience, show_default=True,
              help="Stop after N epochs without a better validation loss (0: never).")
@click.option("--val-fraction", default=_D.val_fraction, show_default=True,
              help="Share of each fold's training images (by subject when known) that picks the epoch; 0: last.")
@click.option("--augment", default="flip,rot90,jitter", show_default=True,
              help="On-the-fly augmentation: any of flip, rot90, jitter[=STRENGTH], or none.")
@click.option("--head-dropout", default=_D.head_dropout, show_default=True,
              help="Dropout before the linear training head (discarded after training).")
@device_option
@precision_option
@workers_option
@click.option("--no-tokens", is_flag=True, help="Store pooled vectors only, no token maps [default: store both].")
@click.option("--overwrite", is_flag=True,
              help="Redo folds made with other settings (and replace all of them if the fold plan changes) "
                   "[default: refuse].")
@quiet_option
@layout_option
@positive_option
@root_option
@classes_option
def finetune_command(paths, store_option, backbones, weights, protocol, folds, seed, input_size, epochs, batch_size, lr,
                     backbone_lr_scale, weight_decay, warmup_epochs, freeze_stages, label_smoothing, balance,
                     patience, val_fraction, augment, head_dropout, device, precision, workers, no_tokens,
                     overwrite, quiet, layout, positive, root, classes):
    """Fine-tune each backbone per CV fold on that fold's training images only; store the embeddings (resumable).

    STORE is a feature store made by `fusionfeat extract` from DATA; the fine-tuned features are added to it,
    and `fit --features finetuned` cross-validates heads on them. With --classes the backbones learn that
    selection of the store's classes, and `fit --features finetuned` then takes the same --classes.
    Under torchrun (last example) each fold trains with DistributedDataParallel.

    \b
    Examples:
      fusionfeat finetune cnmc.h5 C-NMC_training_data/ --epochs 10 --folds 5
      fusionfeat fit cnmc.h5 --head all --features finetuned
      fusionfeat finetune wbc.h5 BCCD_WBC/ --classes neutrophil,lymphocyte,monocyte
      fusionfeat fit wbc.h5 --head all --features finetuned --classes neutrophil,lymphocyte,monocyte
      torchrun --nproc-per-node 4 -m fusionfeat finetune cnmc.h5 C-NMC_training_data/
    """
    from fusionfeat.engines.distributed import process_group
    from fusionfeat.engines.finetune import FinetuneConfig, finetune
    from fusionfeat.store.schema import classes_spec

    store, data = store_and_data(paths, store_option)
    names = parse_backbones(backbones)
    augments, jitter = parse_augment(augment)
    train = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, backbone_lr_scale=backbone_lr_scale,
                        weight_decay=weight_decay, warmup_epochs=warmup_epochs, freeze_stages=freeze_stages,
                        label_smoothing=label_smoothing, balance=balance, patience=patience, augment=augments,
                        jitter=jitter, head_dropout=head_dropout, val_fraction=val_fraction)
    config = FinetuneConfig(backbones=names, weights=parse_weights(weights, names), train=train, protocol=protocol,
                            n_folds=folds, seed=seed, input_size=input_size, tokens=not no_tokens, device=device,
                            precision=precision, workers=workers, overwrite=overwrite, progress=not quiet,
                            classes=classes)
    manifest = build_manifest(data, layout=layout, positive=positive, root=root)
    with process_group(device) as ctx:
        result = finetune(manifest, store, config, ctx)
    if result is None:
        return
    plan = result.plan
    chosen = f", --classes {classes_spec(plan.classes)}" if plan.classes else ""
    click.echo(f"fold plan: {plan.protocol}, {plan.n_folds} folds, seed {plan.seed}{chosen}")
    for r in result.reports:
        if r.status == "stored":
            click.echo(f"fold {r.fold} {r.backbone}: already in the store with these settings; skipped")
            continue
        early = ", stopped early" if r.stopped_early else ""
        click.echo(f"fold {r.fold} {r.backbone}: {r.status}, {r.epochs_run} epoch(s){early}, best epoch "
                   f"{r.best_epoch}; training {r.train_images_per_s:.1f} img/s, embedding "
                   f"{r.embed_images_per_s:.1f} img/s; checkpoint {r.checkpoint}")
    click.echo(f"{result.store}: fine-tuned features of {len(result.reports)} fold x backbone task(s) in "
               f"{result.seconds:.1f} s; checkpoints and histories in {result.work}")
