"""The pipelines that reproduce the README's tables; not part of the installed ``hugnc`` package.

Run from the repository root (``make results``, ``make paper-budget``)::

    python -m experiments.results [--dry-run] [--stages ...] [--resume --out DIR] ...

- :mod:`experiments.results`: the Fashion-MNIST results table (stages tune, main, lt, continual)
  and the entry point of every stage, ``paper_budget`` included.
- :mod:`experiments.paper_budget`: the stage "Does HUG match CE?" (``--stages paper_budget``).
- :mod:`experiments.timing`: the time model behind the printed estimates (every constant measured
  on the 2-core development machine is there).
- :mod:`experiments.logged_run`: the subprocess runner both use.

The pipelines use the library (``hugnc.config``, ``hugnc.plots``, ``hugnc.tools.report``) and
run ``python -m hugnc`` / ``python -m hugnc.continual``; nothing in ``src/`` imports them.
"""
