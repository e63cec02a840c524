"""``fusionfeat finetune``: per-fold fine-tuned backbones, their embeddings cached in the store."""

from __future__ import annotations

import click

from fusionfeat.cli import main
from fusionfeat.cli.options import device_option, layout_option, positive_option, root_option
from fusionfeat.data.manifest import build_manifest
from fusionfeat.encoders import parse_backbones, parse_weights
from fusionfeat.engines.train_loop import FINETUNE_BALANCES, TrainConfig, parse_augment
from fusionfeat.runtime import PRECISIONS

_D = TrainConfig()


@main.command("finetune")
@click.argument("data", type=click.Path())
@click.option("--store", required=True, type=click.Path(dir_okay=False),
              help="Feature store made by `fusionfeat extract` from DATA; fine-tuned features are added to it.")
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
@click.option("--input-size", type=click.IntRange(min=32), default=None,
              help="Square input side [default: the store's].")
@click.option("--epochs", default=_D.epochs, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=_D.batch_size, show_default=True,
              help="Images per step, over all processes.")
@click.option("--lr", default=_D.lr, show_default=True, help="Learning rate of the head (AdamW).")
@click.option("--backbone-lr-scale", default=_D.backbone_lr_scale, show_default=True,
              help="Backbone learning rate = lr x this (0 trains the head only).")
@click.option("--weight-decay", default=_D.weight_decay, show_default=True)
@click.option("--warmup-epochs", default=_D.warmup_epochs, show_default=True,
              help="Linear warm-up before the cosine decay (fractions allowed).")
@click.option("--freeze-stages", default=_D.freeze_stages, show_default=True,
              help="Freeze the first N stages of each backbone (ResNet: stem, layer1-4; VGG: 5 conv blocks; others: "
              "a stage per resolution, ViT: patch embedding then one per block).")
@click.option("--label-smoothing", default=_D.label_smoothing, show_default=True)
@click.option("--balance", type=click.Choice(FINETUNE_BALANCES), default=_D.balance, show_default=True,
              help="weight: class-weighted loss; sampler: class-balanced sampling; none.")
@click.option("--patience", default=_D.patience, show_default=True,
              help="Stop after N epochs without a better validation loss (0: never).")
@click.option("--val-fraction", default=_D.val_fraction, show_default=True,
              help="Share of each fold's training images (by subject when known) that picks the epoch; 0: last.")
@click.option("--augment", default="flip,rot90,jitter", show_default=True,
              help="On-the-fly augmentation: any of flip, rot90, jitter[=STRENGTH], or none.")
@click.option("--head-dropout", default=_D.head_dropout, show_default=True)
@device_option
@click.option("--precision", type=click.Choice(PRECISIONS), default="auto", show_default=True)
@click.option("--workers", type=click.IntRange(min=0), default=None,
              help="Decoding workers [default: cores-1, at most 4; 8 on CUDA].")
@click.option("--no-tokens", is_flag=True, help="Store pooled vectors only (no token maps).")
@click.option("--overwrite", is_flag=True,
              help="Redo folds made with other settings (and replace all of them if the fold plan changes).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@layout_option
@positive_option
@root_option
def finetune_command(data, store, backbones, weights, protocol, folds, seed, input_size, epochs, batch_size, lr,
                     backbone_lr_scale, weight_decay, warmup_epochs, freeze_stages, label_smoothing, balance,
                     patience, val_fraction, augment, head_dropout, device, precision, workers, no_tokens,
                     overwrite, quiet, layout, positive, root):
    """Fine-tune each backbone per CV fold on that fold's training images only; store the embeddings (resumable).

    Run under `torchrun --nproc-per-node N -m fusionfeat finetune ...` to train with DistributedDataParallel.
    """
    from fusionfeat.engines.distributed import process_group
    from fusionfeat.engines.finetune import FinetuneConfig, finetune

    names = parse_backbones(backbones)
    augments, jitter = parse_augment(augment)
    train = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, backbone_lr_scale=backbone_lr_scale,
                        weight_decay=weight_decay, warmup_epochs=warmup_epochs, freeze_stages=freeze_stages,
                        label_smoothing=label_smoothing, balance=balance, patience=patience, augment=augments,
                        jitter=jitter, head_dropout=head_dropout, val_fraction=val_fraction)
    config = FinetuneConfig(backbones=names, weights=parse_weights(weights, names), train=train, protocol=protocol,
                            n_folds=folds, seed=seed, input_size=input_size, tokens=not no_tokens, device=device,
                            precision=precision, workers=workers, overwrite=overwrite, progress=not quiet)
    manifest = build_manifest(data, layout=layout, positive=positive, root=root)
    with process_group(device) as ctx:
        result = finetune(manifest, store, config, ctx)
    if result is None:
        return
    plan = result.plan
    click.echo(f"fold plan: {plan.protocol}, {plan.n_folds} folds, seed {plan.seed}")
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
