"""``fusionfeat evaluate``: score a trained bundle on a labelled external set."""

from __future__ import annotations

import click

from fusionfeat.cli import main
from fusionfeat.cli.options import device_option, layout_option, overwrite_option, quiet_option, workers_option
from fusionfeat.runtime import PRECISIONS


@main.command("evaluate")
@click.argument("bundle", type=click.Path())
@click.argument("data", type=click.Path())
@click.option("-o", "--output", required=True, type=click.Path(),
              help="Run folder to write (metrics.json, predictions.csv, report.md, figures).")
@layout_option
@click.option("--weights", default=None,
              help="Where the bundle's weights files are now, as for predict: vgg16=FILE,... (SHA-256 must match) "
                   "[default: the paths recorded in the bundle].")
@device_option
@click.option("--precision", type=click.Choice(PRECISIONS), default=None,
              help="Inference precision [default: the training store's precision].")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True,
              help="Images per forward pass.")
@workers_option
@overwrite_option
@click.option("--trust-pickle", is_flag=True,
              help="Load a legacy bundle (see `predict --trust-pickle`) [default: refuse them].")
@quiet_option
def evaluate_command(bundle, data, output, layout, weights, device, precision, batch_size, workers, overwrite,
                     trust_pickle, quiet):
    """Score a trained bundle on labelled images it never saw, beside its cross-validated estimate.

    DATA is a labelled data folder or manifest CSV in any layout `extract` reads (the bundle embeds the images
    with its own backbones and preprocessing) or a store extracted with the bundle's settings.

    \b
    Example:
      fusionfeat evaluate model/ ../other_hospital/ -o runs/external
    """
    from fusionfeat.bundle import load_bundle
    from fusionfeat.evaluate import evaluate_bundle
    from fusionfeat.fsio import RUN, check_output
    from fusionfeat.report.run import load_run

    check_output(output, RUN, inputs=[bundle, data], overwrite=overwrite)
    loaded = load_bundle(bundle, trust_pickle=trust_pickle, warn=lambda message: click.echo(message, err=True))
    out = evaluate_bundle(loaded, data, output, layout=layout, weights=weights, device=device, precision=precision,
                          batch_size=batch_size, workers=workers, progress=not quiet, overwrite=overwrite,
                          inputs=[bundle])
    result = load_run(out)
    head = result["external"]["head"]
    u = result["heads"][head]["uncertainty"]
    auc, auc_label = ("roc_auc", "ROC AUC") if len(result["classes"]) == 2 else ("roc_auc_macro", "macro OvR AUC")
    cells = []
    for name, label in (("balanced_accuracy", "balanced acc."), (auc, auc_label)):
        pooled = u[name]["pooled"]
        bounds = pooled.get("exact") or pooled["bootstrap"]  # exact where the bootstrap degenerates (issue 20)
        cells.append(f"{label} {pooled['mean']:.3f} [{bounds['lo']:.3f}, {bounds['hi']:.3f}]"
                     + (" exact" if pooled.get("exact") else ""))
    cv = (result["external"].get("versus_cv") or {}).get(auc)
    versus = f"; CV estimate {auc_label} {cv['cv']:.3f}" if cv else "; no CV estimate in the bundle"
    left = sum((result["external"].get("left_out") or {}).values())
    dropped = f" ({left} of classes the bundle's --classes leaves out left out)" if left else ""
    click.echo(f"{out}: {result['protocol']['n_samples']} images{dropped}, {', '.join(cells)}{versus}")
    click.echo(f"report: {out / 'report.md'}")
