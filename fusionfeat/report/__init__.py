"""Run folders and reports: ``write_run`` (run.py), ``report.md`` (markdown.py), figures (figures.py, plots.py),
runs side by side (compare.py); runs of more than two classes: multiclass_run.py, multiclass_markdown.py,
multiclass_plots.py."""

from fusionfeat.report.compare import compare_runs
from fusionfeat.report.flags import describe_weights
from fusionfeat.report.markdown import render_report
from fusionfeat.report.run import load_run, run_json, write_run, write_run_files

__all__ = ["compare_runs", "describe_weights", "load_run", "render_report", "run_json", "write_run", "write_run_files"]
