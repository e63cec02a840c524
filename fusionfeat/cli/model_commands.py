"""``fusionfeat fit``, ``report``, ``train`` and ``predict``: from a feature store to numbers and labels."""

from __future__ import annotations

from pathlib import Path

import click

from fusionfeat.cli import main
from fusionfeat.cli.options import (
    classes_option,
    device_option,
    head_params_from,
    overwrite_option,
    quiet_option,
    workers_option,
)
from fusionfeat.protocols import BALANCES
from fusionfeat.runtime import PRECISIONS, head_threads

backbones_option = click.option(
    "--backbones", default=None,
    help="Stored backbones the fusion heads and baselines read, in this order (comma list) [default: all in the "
         "store, in the store's alphabetical order].")
threads_option = click.option(
    "--threads", type=click.IntRange(min=1), default=None,
    help="CPU threads for fitting the heads (torch, BLAS, XGBoost) [default: 1, the fastest on a shared machine].")


def _echo_table(run_dir: Path) -> None:
    from fusionfeat.report import compare_runs

    click.echo(compare_runs([run_dir]))


@main.command("fit")
@click.argument("store", type=click.Path())
@click.option("--head", "heads", default="attention", show_default=True,
              help="Head(s): a stored backbone's name (its single-backbone MLP), concat, attention[-spatial|-pooled], "
                   "svm, xgboost, logreg; a comma list, or all.")
@backbones_option
@click.option("-o", "--output", type=click.Path(), default=None,
              help="Run folder to write [default: runs/<store name>-<heads>].")
@click.option("--cv", "protocol", type=click.Choice(["grouped", "stratified", "predefined", "paper"]), default=None,
              help="Protocol [default: grouped when subjects are known, else stratified]. "
                   "'paper' is the paper's leaky protocol, reproduced by name.")
@click.option("--folds", type=click.IntRange(min=2), default=None, help="Number of folds [default: 5].")
@click.option("--seed", type=click.IntRange(min=0), default=None, help="Seed for splits and heads [default: 0].")
@click.option("--repeats", type=click.IntRange(min=1), default=1, show_default=True,
              help="Repeated CV, for 95% intervals.")
@click.option("--balance", type=click.Choice(BALANCES), default="weight", show_default=True,
              help="Class weights, or stored dihedral views of minority training images (inside each fold).")
@click.option("--features", type=click.Choice(["frozen", "finetuned"]), default="frozen", show_default=True,
              help="frozen: the extracted features; finetuned: each fold's features from `fusionfeat finetune`.")
@click.option("--positive", default=None, help="Positive class of two [default: the store's, 'all'].")
@classes_option
@click.option("--head-param", "head_param", multiple=True, metavar="HEAD.NAME=VALUE",
              help="Set a head hyper-parameter, e.g. attention.lr=3e-4 or *.max_epochs=20 (repeatable) "
                   "[default: the head's own defaults, listed in the report].")
@click.option("--head-params", "head_params_file", type=click.Path(), default=None, metavar="FILE.toml",
              help="Head hyper-parameters from TOML: one [HEAD] table (or [\"*\"]) of NAME = VALUE lines; "
                   "--head-param overrides it [default: none].")
@click.option("--calibrate", type=click.Choice(["sigmoid", "isotonic"]), default=None,
              help="Post-hoc calibration of the probabilities, fitted inside each training fold only "
                   "[default: none, the head's own probabilities].")
@click.option("--operating-point", default=None, metavar="sens=T|spec=T",
              help="Pick the threshold reaching this sensitivity or specificity on the training fold's inner "
                   "out-of-fold predictions [default: argmax].")
@click.option("--subject-aggregate", type=click.Choice(["mean", "median", "fraction"]), default="mean",
              show_default=True, help="How a subject's cell probabilities become its subject-level score.")
@device_option
@threads_option
@overwrite_option
@quiet_option
def fit_command(store, heads, backbones, output, protocol, folds, seed, repeats, balance, features, positive,
                classes, head_param, head_params_file, calibrate, operating_point, subject_aggregate, device, threads,
                overwrite, quiet):
    """Cross-validate heads on cached features and write a run folder with metrics, plots and a report.

    \b
    Examples:
      fusionfeat fit cnmc.h5 --head all -o runs/cnmc
      fusionfeat fit cnmc.h5 --head attention,svm --repeats 3 --calibrate sigmoid --operating-point sens=0.95
    """
    from fusionfeat.evaluation.cv import cross_validate
    from fusionfeat.fsio import RUN, output_target
    from fusionfeat.heads.calibration import parse_operating_point
    from fusionfeat.heads.zoo import expand_head_names, select_backbones
    from fusionfeat.report import write_run_files
    from fusionfeat.store import FeatureStore
    from fusionfeat.store.selection import select_classes

    params = head_params_from(head_param, head_params_file)
    if operating_point:
        parse_operating_point(operating_point)
    with FeatureStore.open(store) as opened:
        fs = select_classes(opened, classes, positive)
        selected = select_backbones(fs, backbones)
        names = expand_head_names(heads, selected, fs.backbones)
        label = "-".join(names) if len(names) < 3 else "all"
        out = Path(output) if output else Path("runs") / f"{Path(store).stem}-{label}"
        with output_target(out, RUN, inputs=[store], overwrite=overwrite) as target, head_threads(threads):
            result = cross_validate(fs, names, protocol=protocol, folds=folds, seed=seed, repeats=repeats,
                                    balance=balance, features=features, device=device, positive=positive,
                                    progress=not quiet, backbones=selected, head_params=params,
                                    calibrate=calibrate, operating_point=operating_point,
                                    subject_aggregate=subject_aggregate)
            write_run_files(result, target.path)
    run_dir = target.final
    _echo_table(run_dir)
    click.echo(f"report: {run_dir / 'report.md'}")


@main.command("report")
@click.argument("runs", nargs=-1, required=True, type=click.Path())
def report_command(runs):
    """Compare several run folders side by side (a markdown table).

    \b
    Example:
      fusionfeat report runs/cnmc runs/cnmc-paper
    """
    from fusionfeat.report import compare_runs

    click.echo(compare_runs(list(runs)))


@main.command("train")
@click.argument("store", type=click.Path())
@click.option("--head", default="attention", show_default=True,
              help="The one head to fit on every sample (a name `fit --head` takes, not a list).")
@backbones_option
@click.option("-o", "--output", required=True, type=click.Path(), help="Bundle folder to write.")
@click.option("--balance", type=click.Choice(BALANCES), default="weight", show_default=True,
              help="weight: balanced class weights; augment: add stored rotated/mirrored copies of minority "
                   "images (needs a --views dihedral8 store); none: neither.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seed of the head's initialisation, inner splits and augment copies.")
@click.option("--calibrate", type=click.Choice(["sigmoid", "isotonic"]), default=None,
              help="Calibrate the probabilities on inner folds of the training images, as `fit --calibrate` "
                   "does; the bundle keeps the calibration and predict applies it [default: none].")
@click.option("--operating-point", default=None, metavar="sens=T|spec=T",
              help="Label at the threshold reaching this sensitivity or specificity on inner out-of-fold "
                   "predictions of the training images, as `fit --operating-point` validated it; predict "
                   "applies it [default: argmax].")
@classes_option
@click.option("--positive", default=None, help="Positive class of two [default: the store's].")
@click.option("--cv-run", type=click.Path(), default=None, metavar="RUN",
              help="A `fusionfeat fit` run folder of this head on this store, with the same options: the bundle "
                   "keeps its cross-validated estimate, which `evaluate` shows beside external results "
                   "[default: none].")
@device_option
@threads_option
@overwrite_option
@quiet_option
def train_command(store, head, backbones, output, balance, seed, calibrate, operating_point, classes, positive,
                  cv_run, device, threads, overwrite, quiet):
    """Fit one head on all samples of a store and save it as a bundle that can label new images.

    \b
    Examples:
      fusionfeat train cnmc.h5 --head attention -o model/
      fusionfeat train cnmc.h5 --head svm --calibrate sigmoid --operating-point sens=0.95 -o model-sens95/
    """
    from fusionfeat.bundle import write_bundle_files
    from fusionfeat.fsio import BUNDLE, output_target
    from fusionfeat.heads.calibration import parse_operating_point
    from fusionfeat.heads.decision_rule import describe_rule, split_rule
    from fusionfeat.store import FeatureStore
    from fusionfeat.store.selection import select_classes
    from fusionfeat.train import train_head

    target_point = parse_operating_point(operating_point) if operating_point else None  # before any work
    with output_target(output, BUNDLE, inputs=[store, *([cv_run] if cv_run else [])],
                       overwrite=overwrite) as target:
        with FeatureStore.open(store) as opened, head_threads(threads):
            fs = select_classes(opened, classes, positive, alone=False)
            estimator, spec, info = train_head(fs, head, balance=balance, seed=seed, device=device,
                                               progress=not quiet, backbones=backbones, calibrate=calibrate,
                                               operating_point=target_point, cv_run=cv_run)
        write_bundle_files(target.path, estimator, spec, info)
    path = target.final
    training = info["training"]
    per_class = ", ".join(f"{name} {n}" for name, n in training["per_class"].items())
    weights = ", ".join(f"{b} {p.get('weights_kind', '?')}" for b, p in info["backbones"].items())
    click.echo(f"{path}: head {spec.name} trained on {training['n_images']} images ({per_class}), "
               f"balance {training['balance']}, seed {training['seed']}; weights: {weights}; decision: "
               f"{describe_rule(split_rule(estimator)[1], len(info['classes']))}"
               + (f"; CV estimate kept from {cv_run}" if "cv_estimate" in info else ""))


@main.command("predict")
@click.argument("bundle", type=click.Path())
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option("-o", "--output", required=True, type=click.Path(), help="CSV to write.")
@click.option("--weights", default=None,
              help="Where the bundle's weights files are now, as for extract: vgg16=FILE,... (SHA-256 must match) "
                   "[default: the paths recorded in the bundle].")
@device_option
@click.option("--precision", type=click.Choice(PRECISIONS), default=None,
              help="Inference precision [default: the training store's precision].")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True,
              help="Images per forward pass.")
@workers_option
@click.option("--on-error", type=click.Choice(["fail", "skip"]), default="fail", show_default=True,
              help="fail: stop at an unreadable image; skip: write its row with the error and no label, and go on.")
@overwrite_option
@click.option("--trust-pickle", is_flag=True,
              help="Load a legacy bundle: one written before bundles carried checksums, or its model.joblib (a pickle: "
                   "it can run any code). Only for bundles from a trusted source [default: refuse them].")
@quiet_option
def predict_command(bundle, images, output, weights, device, precision, batch_size, workers, on_error, overwrite,
                    trust_pickle, quiet):
    """Label images (files or folders) with a trained bundle: path, P(positive), label (more than two classes:
    path, P(class) for every class, predicted).

    \b
    Example:
      fusionfeat predict model/ new_cells/ more_cells/cell_7.bmp -o labels.csv
    """
    from fusionfeat.bundle import load_bundle
    from fusionfeat.fsio import CSV, check_output
    from fusionfeat.predict import collect_images, predict_images

    check_output(output, CSV, inputs=[bundle, *images], overwrite=overwrite)
    paths = collect_images(images)  # the inputs are checked before the bundle is loaded
    loaded = load_bundle(bundle, trust_pickle=trust_pickle, warn=lambda message: click.echo(message, err=True))
    counts = predict_images(loaded, paths, output, weights=weights, device=device, precision=precision,
                            batch_size=batch_size, workers=workers, on_error=on_error, progress=not quiet,
                            overwrite=overwrite, inputs=[bundle, *images])
    summary = ", ".join(f"{k} {v}" for k, v in counts.items() if k != "error" or v)
    click.echo(f"{output}: {len(paths)} images ({summary})")


@main.command("demo")
@click.option("-o", "--output", type=click.Path(), default="fusionfeat-demo", show_default=True,
              help="Folder for the generated data, the store and the run.")
@click.option("--weights", type=click.Choice(["imagenet", "random"]), default=None,
              help="Backbone weights [default: imagenet when cached, else random with a warning].")
@device_option
@overwrite_option
@quiet_option
def demo_command(output, weights, device, overwrite, quiet):
    """Generate a small C-NMC-like dataset, extract, cross-validate every head, print the table.

    \b
    Example:
      fusionfeat demo -o demo/ --weights random
    """
    import time

    from fusionfeat.demo import run_demo

    start = time.perf_counter()
    result = run_demo(Path(output), weights=weights, device=device, progress=not quiet,
                      echo=lambda m: click.echo(m, err=True), overwrite=overwrite)
    _echo_table(result.run_dir)
    click.echo(f"report: {result.run_dir / 'report.md'}  ({time.perf_counter() - start:.0f} s, "
               f"{result.n_images} images, {result.weights} weights)")
