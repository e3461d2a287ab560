"""The time model behind the pipelines' estimates (``--dry-run`` and the line before each stage).

Every cost here was measured on the 2-core development machine with nothing else running
(:data:`MACHINE`, printed with each estimate); a loaded or another machine is proportionally
slower or faster. No other module of ``experiments/`` holds a machine-dependent number: the
estimates are the only thing these constants change.
"""

from __future__ import annotations

#: Where the constants below were measured; printed next to every estimate.
MACHINE = "2 CPU cores, quiet machine"

# --- Fashion-MNIST sizes (facts of the data, not of the machine) ---------------------------------
FULL_TRAIN_IMAGES = 55_000  # 60,000 minus the 5,000 validation images
VAL_IMAGES = 5_000
TEST_IMAGES = 10_000
LT_TRAIN_IMAGES = 14_900  # sum_i int(5,500-ish * 0.01^(i/9)) over 10 classes
NUM_TASKS = 5  # split Fashion-MNIST

# --- Measured: the results pipeline (experiments.results) ----------------------------------------
# LeNet++ 3x3 16-32-64, two convs per stage, batch 256: one epoch over the 55,000 training images
# takes ~20 s including the validation pass and the NC measurement.
TRAIN_IMAGES_PER_S = 3000.0
EVAL_IMAGES_PER_S = 8000.0
#: One NC measurement (10 batches of 1024).
NC_MEASUREMENT_S = 1.0
#: A job inside a multirun beyond its epochs: data, model, trainer, pictures, metrics.json.
JOB_OVERHEAD_S = 7.0
#: Each multirun process: imports, config check of all its jobs.
PROCESS_STARTUP_S = 10.0
#: PGD/FGSM on 2 test batches of 1024 (``--robustness``): ~11 gradient passes per image.
ROBUST_S_PER_JOB = 8.0
#: Continual stage: the trainer set-up of each task's fit, and each evaluated task's fixed cost.
TASK_SETUP_S = 2.0
TASK_EVAL_S = 0.5
#: ``--quick``: a job's time as a fraction of a full one's (a rough figure; numbers meaningless).
QUICK_SCALE = 0.05

# --- Measured: the paper_budget stage (experiments.paper_budget) ---------------------------------
#: One optimizer step of LeNet++ 16-32-64 (two 3x3 convs per stage) at batch 128 in float32,
#: callbacks included (the MHS-HUG job of 2026-12-02: 29.6 min for 46 epochs, nothing else running).
BUDGET_STEP_S = 0.08
#: Per epoch: validation on 5,000 images and one NC measurement.
BUDGET_EPOCH_EVAL_S = 2.5
#: Per job: process start, data, the test pass and the pictures.
BUDGET_JOB_OVERHEAD_S = 25.0
#: Per job with ``--quick``.
BUDGET_QUICK_JOB_S = 15.0


def job_seconds(
    epochs: int, train_images: float, nc: bool = True, test: bool = True, val: int = VAL_IMAGES
) -> float:
    """One job of a results multirun: ``epochs`` over ``train_images`` (+ validation, NC), then
    the test pass when ``test``."""
    epoch = train_images / TRAIN_IMAGES_PER_S + val / EVAL_IMAGES_PER_S
    epoch += NC_MEASUREMENT_S if nc else 0.0
    tail = (TEST_IMAGES / EVAL_IMAGES_PER_S + (NC_MEASUREMENT_S if nc else 0.0)) if test else 0.0
    return JOB_OVERHEAD_S + epochs * epoch + tail


def continual_seconds(epochs: int) -> float:
    """One continual job: ``NUM_TASKS`` fits of ``epochs``, each followed by a test on the tasks
    seen so far."""
    per_task_train = FULL_TRAIN_IMAGES / NUM_TASKS
    total = JOB_OVERHEAD_S
    for task in range(NUM_TASKS):
        total += TASK_SETUP_S
        total += epochs * (
            per_task_train / TRAIN_IMAGES_PER_S
            + VAL_IMAGES / NUM_TASKS / EVAL_IMAGES_PER_S
            + NC_MEASUREMENT_S
        )
        total += (task + 1) * (TEST_IMAGES / NUM_TASKS / EVAL_IMAGES_PER_S + TASK_EVAL_S)
    return total


def budget_job_seconds(epochs: int, steps_per_epoch: int) -> float:
    """One paper_budget job (its own process) of ``epochs`` x ``steps_per_epoch`` steps."""
    return BUDGET_JOB_OVERHEAD_S + epochs * (steps_per_epoch * BUDGET_STEP_S + BUDGET_EPOCH_EVAL_S)


def minutes(seconds: float) -> str:
    """``"12.3 min"``."""
    return f"{seconds / 60:.1f} min"
