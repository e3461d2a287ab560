"""Shared test runners: the CLI in a subprocess (``cli_runs``), two gloo ranks (``two_ranks``)."""
