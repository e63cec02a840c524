"""``fusionfeat study`` (protocol inflation) and ``fusionfeat explain`` (where attention looks)."""

from __future__ import annotations

from pathlib import Path

import click

from fusionfeat.cli import main
from fusionfeat.cli.options import classes_option, device_option, overwrite_option, quiet_option
from fusionfeat.fsio import STUDY, check_output


@main.command("study")
@click.argument("store", type=click.Path())
@click.option("-o", "--output", type=click.Path(file_okay=False), default=None,
              help="Folder for the study report and its three sub-runs [default: runs/<store name>-study].")
@click.option("--head", "heads", default="resnet18,vgg16,concat,attention", show_default=True,
              help="Head(s) to run under every protocol (a comma list, or all).")
@click.option("--repeats", type=click.IntRange(min=1), default=3, show_default=True, help="Repeated CV.")
@click.option("--folds", type=click.IntRange(min=2), default=None, help="Number of folds [default: 5].")
@click.option("--seed", type=click.IntRange(min=0), default=None, help="Seed for splits and heads [default: 0].")
@device_option
@click.option("--threads", type=click.IntRange(min=1), default=None, help="CPU threads for the heads [default: 1].")
@classes_option
@click.option("--positive", default=None, help="With --classes making two classes: the positive one "
                                                "[default: the second listed].")
@overwrite_option
@quiet_option
def study_command(store, output, heads, repeats, folds, seed, device, threads, classes, positive, overwrite, quiet):
    """Run heads under the paper's protocol, leak-free augmentation and class weights; report the inflation.

    The store needs stored views (`fusionfeat extract --views dihedral8`).

    \b
    Example:
      fusionfeat extract C-NMC_training_data/ -o cnmc8.h5 --views dihedral8
      fusionfeat study cnmc8.h5 -o runs/study --repeats 3
    """
    from fusionfeat.heads.zoo import expand_head_names, select_backbones
    from fusionfeat.runtime import head_threads
    from fusionfeat.store import FeatureStore
    from fusionfeat.store.selection import select_classes
    from fusionfeat.study import check_dihedral, run_study, write_study

    out = Path(output) if output else Path("runs") / f"{Path(store).stem}-study"
    check_output(out, STUDY, inputs=[store], overwrite=overwrite)  # before hours of fitting
    with FeatureStore.open(store) as opened, head_threads(threads):
        fs = select_classes(opened, classes, positive, alone=False)
        check_dihedral(fs)
        names = expand_head_names(heads, select_backbones(fs, None), fs.backbones)
        results = run_study(fs, names, repeats=repeats, folds=folds, seed=seed, device=device, progress=not quiet)
    out = write_study(results, out, overwrite=overwrite, inputs=(store,))
    click.echo(f"study: {out / 'study.md'} (sub-runs: {', '.join(str(out / n) for n in results)})")


@main.command("explain")
@click.argument("run", type=click.Path())
@click.option("-o", "--output", type=click.Path(file_okay=False), default=None,
              help="Folder for the PNG montages [default: RUN/explain].")
@click.option("--n", "n", type=click.IntRange(min=1), default=4, show_default=True, help="Images per montage.")
@click.option("--data-root", type=click.Path(file_okay=False), default=None,
              help="Where the images are now [default: the store's data_root].")
@overwrite_option
def explain_command(run, output, n, data_root, overwrite):
    """Overlay an attention-spatial head's out-of-fold attention maps on the cell images (PNG montages).

    RUN is a run folder of `fusionfeat fit` that includes the attention-spatial head.

    \b
    Example:
      fusionfeat fit cnmc.h5 --head attention-spatial -o runs/att
      fusionfeat explain runs/att --n 8
    """
    from fusionfeat.explain import explain_run

    for path in explain_run(run, output, n=n, data_root=data_root, overwrite=overwrite):
        click.echo(str(path))
