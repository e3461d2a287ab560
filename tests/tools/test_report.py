"""`hugnc-report --group-by`: a row per group, mean ± std over the other keys, failures counted."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from hugnc.tools.report import JobResult, collect_local, main, summarize


def test_summarize_groups_over_seeds_and_counts_failures(fake_sweep: Path) -> None:
    jobs = collect_local(fake_sweep)
    summaries = summarize(jobs, ["loss.alpha", "loss.beta"], ["test/acc"])
    by_key = {(s.keys["loss.alpha"], s.keys["loss.beta"]): s for s in summaries}
    assert len(by_key) == 4
    both = by_key[("0.1", "0.015")]
    mean, std, count = both.stats["test/acc"]
    base = 0.5 + 0.015 / 4 + 0.1
    assert (both.completed, both.failed, count) == (2, 0, 2)
    assert mean == pytest.approx(base + 0.005)
    assert std == pytest.approx(math.sqrt(2) * 0.005)  # sample std of base and base + 0.01
    one = by_key[("0.15", "1.0")]  # seed 1 failed (NaN)
    assert (one.completed, one.failed) == (1, 1)
    assert one.stats["test/acc"][2] == 1 and math.isnan(one.stats["test/acc"][1])
    assert one.cell("test/acc") == f"{0.5 + 0.25 + 0.15:.4f}"  # one value: no ± part
    assert "±" in both.cell("test/acc")


def test_group_by_short_keys_choices_and_config() -> None:
    job = JobResult(
        "0",
        {"seed": "1", "+results_setting": "x"},
        "completed",
        {"test/acc": 0.9},
        choices={"loss": "mhe_hug"},
        config={"model.feature_dim": "64", "loss.alpha": "0.15", "results.weights": "tuned"},
    )
    assert job.value("loss") == "mhe_hug"  # the group choice, not the loss node
    assert job.value("feature_dim") == "64"  # unique suffix
    assert job.value("weights") == "tuned"
    assert job.value("seed") == "1"
    assert job.value("missing") is None
    (summary,) = summarize([job], ["loss", "feature_dim", "weights"], ["test/acc", "val/acc"])
    assert summary.keys == {"loss": "mhe_hug", "feature_dim": "64", "weights": "tuned"}
    assert "val/acc" not in summary.stats and summary.cell("val/acc") == ""


def test_report_cli_group_by_writes_summary(
    fake_sweep: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main([str(fake_sweep), "--group-by", "beta"]) == 0
    lines = (fake_sweep / "summary.csv").read_text().splitlines()
    assert lines[0] == (
        "beta,completed,failed,test/acc_mean,test/acc_std,test/acc_n,"
        "val/acc_mean,val/acc_std,val/acc_n"
    )
    assert lines[1].startswith("0.015,4,0,") and lines[2].startswith("1.0,2,2,")
    markdown = (fake_sweep / "summary.md").read_text()
    assert markdown.splitlines()[0] == "| beta | n | failed | test/acc | val/acc |"
    assert "±" in markdown
    # The per-job table and the heatmap are still written.
    assert (fake_sweep / "report.md").is_file() and (fake_sweep / "heatmap_test_acc.png").is_file()
    assert "| 1.0 | 2 | 2 |" in capsys.readouterr().out
