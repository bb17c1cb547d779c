"""Sweeps and reports: `python -m launch.sweep`, `python -m launch.report` (see launch/README.md)."""
