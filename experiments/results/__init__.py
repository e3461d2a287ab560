"""``python -m experiments.results``: the README's Fashion-MNIST results table, on CPU
(``make results``); with ``--stages paper_budget`` the stage of :mod:`experiments.paper_budget`.

Runs four stages as Hydra multiruns (subprocesses ``python -m hugnc -m ...`` and
``python -m hugnc.continual -m ...``), each into ``<out>/<stage>`` (``hydra.sweep.dir``):

``tune``
    per HUG variant (MHE, MHS, MGD) and feature_dim (2, 64) a grid over alpha, beta and lr
    (``conf/sweep/results_tune.yaml``), without any test run; the best cell on ``val/acc`` (the
    held-out training images, mean over the cell's jobs) is the "tuned" setting.
``main``
    7 settings -- CE, each HUG variant with the paper's alpha/beta (the loss configs) and with the
    tuned alpha/beta/lr -- x feature_dim 2 and 64 x seeds (default 0, 1, 2), full training set.
``lt``
    the 7 settings at feature_dim 64, first seed, Fashion-MNIST-LT with imbalance ratio 100.
``continual``
    the 7 settings at feature_dim 64, first seed, split Fashion-MNIST (5 tasks).

Every setting is a config file written to ``<out>/conf/results_setting/<name>.yaml`` and picked
with ``+results_setting=<name>`` (``hydra.searchpath``), so each stage is one multirun and every
job's config says which table row it belongs to (``results.setting``, ``results.weights``).
Afterwards ``<out>/README.md`` and ``<out>/results.csv`` hold the table (mean ± std over seeds of
test accuracy, test NC1, minimum proxy angle vs its optimum, robust accuracy when logged, LT
accuracy, continual average accuracy and forgetting), ``<out>/tune/heatmap_*.png`` the tuning
grids and ``<out>/tuned.json`` the chosen weights. Each stage directory also gets hugnc-report's
``report.md`` and ``summary.md``.

A new run never touches an existing directory (``--out`` must not exist, default
``results/<date>_<time>``). ``--resume --out DIR`` continues a killed run: stages whose jobs all
finished are skipped, an unfinished stage is moved to ``<stage>.incomplete-<k>`` and run again.

Modules: :mod:`~experiments.results.plan` (settings, tune grid and selection, stages, setting
configs), :mod:`~experiments.results.runner` (running a stage, resuming, the command line) and
:mod:`~experiments.results.table` (the table, csv and figures from the stages' sweeps).
"""
