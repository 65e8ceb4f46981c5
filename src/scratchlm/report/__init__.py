"""The report card of a run (``scratchlm report``): environment, data, model, training,
evaluations, decode speed, exports and samples, as report.json (versioned) and
report.md with its plots; ``--compare`` sets two runs side by side.

Modules: ``schema`` (the dataclasses of report.json), ``environment`` (machine and
code), ``collect`` (facts from the run's files), ``measure`` (what needs the model),
``compare``, ``format`` and ``render`` (Markdown), ``card`` (all of it, written to
files).
"""

from scratchlm.report.card import (
    REPORT_MD,
    REPORT_VERSION,
    Report,
    build_report,
    read_report,
    write_report,
)
from scratchlm.report.collect import REPORT_JSON
from scratchlm.report.compare import THRESHOLDS, compare_reports

__all__ = [
    "REPORT_JSON",
    "REPORT_MD",
    "REPORT_VERSION",
    "THRESHOLDS",
    "Report",
    "build_report",
    "compare_reports",
    "read_report",
    "write_report",
]
