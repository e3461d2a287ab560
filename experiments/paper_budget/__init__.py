"""``python -m experiments.results --stages paper_budget``: CE vs MHE-, MHS- and MGD-HUG at the
paper's step count.

The protocol is ``conf/experiment/paper_budget.yaml`` (the paper's SGD, schedule shape and loss
weights at ~19,800 optimizer steps on Fashion-MNIST). The stage runs 12 jobs, one process each,
in this order: the four losses at d = 64 seed 0, then d = 64 seed 1, then d = 2 seed 0. They take
hours on 2 CPU cores, so the stage is resumable per job and leaves a small, committable record:

- ``<out>/<job>/`` is the job's run directory (checkpoints included; not committed).
- ``<record>/<job>/`` gets the job's small outputs once it has finished (``metrics.json``,
  ``curves.csv`` with one row per epoch, the NC and dynamics histories and pictures,
  ``config.yaml``), and ``<record>/`` the stage's table (``README.md``, ``results.csv``) and the
  pictures comparing the losses (``budget_curve.png``, ``dynamics_by_loss.png``). With
  ``--commit`` each finished job's record is committed at once (only those paths), so a fresh
  clone of the repository knows which jobs are done.
- ``--resume``: a job with a record is done and never runs again; a job whose run directory has
  ``checkpoints/last.ckpt`` continues from it (``python -m hugnc resume=...``); a run directory
  without a checkpoint is moved aside to ``<job>.incomplete-<k>`` and the job starts again.

Modules: :mod:`~experiments.paper_budget.plan` (the jobs and their time estimate),
:mod:`~experiments.paper_budget.records` (a finished job's record),
:mod:`~experiments.paper_budget.runner` (running the jobs, resuming, committing) and
:mod:`~experiments.paper_budget.table` (the table and pictures from the records). The command
line is :mod:`experiments.results.runner`'s.
"""
