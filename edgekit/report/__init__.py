"""Reports: a stage table (accuracy, parameters, size, latency) as markdown and JSON, and plots."""

from edgekit.report.build import collect_rows, write_report

__all__ = ["collect_rows", "write_report"]
