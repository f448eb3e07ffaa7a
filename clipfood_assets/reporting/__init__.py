"""Comparison report of M0 (baseline CLIP) against the M1 (LoRA) runs: figures, report.md, summary.

Pure code: no dagster, no storage; the caller passes parsed artifacts and stores `Report.files`.
"""

from clipfood_assets.reporting.artifacts import Report, RunArtifacts
from clipfood_assets.reporting.comparison import REPORT_FILES, build_comparison_report

__all__ = ["REPORT_FILES", "Report", "RunArtifacts", "build_comparison_report"]
