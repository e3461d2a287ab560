"""The geometry layer of the NC callback without training: subsets, two passes, DDP, plots, keys."""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import pytest
import torch
from helpers.two_ranks import run_two_ranks
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from hugnc.callbacks import NeuralCollapseMonitor
from hugnc.data import split_loader
from hugnc.metrics import (
    NeuralCollapse,
    NotEnoughClassesError,
    compute_class_means,
    log_keys,
    measure_geometry,
)
from hugnc.models import LinearHead, ProxyHead
from hugnc.plots import cosine_heatmaps_figure, geometry_figures, nc_curves_figure

K, D, IN = 5, 4, 6


class TinyDataModule:
    """Map-style splits of random inputs; only what ``split_loader`` uses."""

    def __init__(self, sizes=(300, 70, 90), eval_batch_size: int = 32) -> None:
        generator = torch.Generator().manual_seed(0)
        self.sets = {}
        for split, size in zip(("train", "val", "test"), sizes, strict=True):
            x = torch.randn(size, IN, generator=generator)
            y = torch.randint(0, K, (size,), generator=generator)
            self.sets[split] = TensorDataset(x, y)
        self.eval_batch_size = eval_batch_size

    def train_dataloader(self):
        return DataLoader(self.sets["train"], batch_size=16, shuffle=True)

    def val_dataloader(self):
        return DataLoader(self.sets["val"], batch_size=16)

    def test_dataloader(self):
        return DataLoader(self.sets["test"], batch_size=16)


class TinyModule(nn.Module):
    def __init__(self, proxy: bool = True, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.backbone = nn.Sequential(
            nn.Linear(IN, 16), nn.Dropout(0.5), nn.Tanh(), nn.Linear(16, D)
        )
        self.head = ProxyHead(D, K) if proxy else LinearHead(D, K)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)


def reference_metrics(module: TinyModule, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Two passes written out: all features in memory, eval mode, class means, then NC4."""
    module.eval()
    with torch.no_grad():
        h = module.backbone(x)
        logits = module.head.logits(h)
    means = torch.stack([h[y == c].double().mean(dim=0) for c in range(K)])
    metric = NeuralCollapse(K, D, class_means=means)
    metric.update(h, y, logits)
    return metric.compute(module.head.classifier)


def assert_same(got: dict, want: dict, rtol: float = 1e-9) -> None:
    assert got.keys() == want.keys()
    for key in want:
        if math.isnan(want[key]):
            assert math.isnan(got[key]), key
        else:
            assert got[key] == pytest.approx(want[key], rel=rtol, abs=1e-12), key


def subset_indices(total: int, max_batches: int, batch_size: int, seed: int = 0) -> list[int]:
    """The documented subset rule: the first max_batches*batch_size of a seeded permutation."""
    return torch.randperm(total, generator=torch.Generator().manual_seed(seed))[
        : max_batches * batch_size
    ].tolist()


def loader_indices(loader: DataLoader) -> list[int]:
    return list(loader.dataset.indices)


def test_split_loader_subset_is_seeded_fixed_and_sharded() -> None:
    dm = TinyDataModule()
    whole = split_loader(dm, "train", max_batches=3, batch_size=20)
    assert loader_indices(whole) == subset_indices(300, 3, 20)
    assert loader_indices(split_loader(dm, "train", max_batches=3, batch_size=20)) == (
        loader_indices(whole)
    )
    assert whole.batch_size == 20 and len(whole) == 3
    shards = [split_loader(dm, "train", 3, 20, rank=r, world_size=2) for r in range(2)]
    a, b = (loader_indices(s) for s in shards)
    assert not set(a) & set(b) and sorted(a + b) == sorted(loader_indices(whole))
    assert shards[0].batch_size == 10
    # No cap (or a cap above the split): the whole split in order; default batch = eval size.
    full = split_loader(dm, "val")
    assert loader_indices(full) == list(range(70)) and full.batch_size == 32
    assert loader_indices(split_loader(dm, "test", max_batches=100)) == list(range(90))
    assert loader_indices(split_loader(dm, "train", 3, 20, seed=1)) != loader_indices(whole)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"split": "holdout"}, "split must be one of"), ({"max_batches": 0}, "max_batches")],
)
def test_split_loader_rejects_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        split_loader(TinyDataModule(), **({"split": "train"} | kwargs))


@pytest.mark.parametrize("proxy", [True, False])
@pytest.mark.parametrize("cache_bytes", [0, 2**20, 3000])
def test_measure_geometry_equals_two_explicit_passes(proxy: bool, cache_bytes: int) -> None:
    """Cache on, off, or overflowing mid-way (3000 bytes): the numbers of two real passes."""
    dm = TinyDataModule()
    module = TinyModule(proxy=proxy)
    module.train()
    loader = split_loader(dm, "train", max_batches=4, batch_size=25)
    result = measure_geometry(module, loader, max_points=30, cache_bytes=cache_bytes)
    assert module.training  # mode restored (dropout would otherwise change the next pass)
    x, y = dm.sets["train"][subset_indices(300, 4, 25)]
    assert_same(result.metrics, reference_metrics(module, x, y))
    assert math.isfinite(result.metrics["nc4"]) and result.num_samples == 100
    assert result.features.shape == (30, D) and result.targets.shape == (30,)
    with torch.no_grad():
        h = module.backbone(x).double()  # reference_metrics left the module in eval mode
    means = torch.stack([h[y == c].mean(0) for c in range(K)])
    torch.testing.assert_close(result.class_means, means)
    torch.testing.assert_close(result.centred_means, means - h.mean(0))


def test_given_class_means_are_used_for_nc4_and_unseen_classes_never_win() -> None:
    module = TinyModule()
    dm = TinyDataModule()
    train_means = compute_class_means(module, split_loader(dm, "train"))
    x, y = dm.sets["train"].tensors
    module.eval()
    with torch.no_grad():
        h = module.backbone(x)
    torch.testing.assert_close(
        train_means, torch.stack([h[y == c].mean(0) for c in range(K)]).double()
    )
    result = measure_geometry(module, split_loader(dm, "test"), class_means=train_means)
    xt, yt = dm.sets["test"].tensors
    with torch.no_grad():
        ht = module.backbone(xt)
        logits = module.head.logits(ht)
    metric = NeuralCollapse(K, D, class_means=train_means)
    metric.update(ht, yt, logits)
    assert_same(result.metrics, metric.compute(module.head.classifier))
    # A class absent from the means (NaN row) is never the nearest mean.
    holes = train_means.clone()
    holes[0] = float("nan")
    nearest = ((ht[:, None].double() - train_means[1:]) ** 2).sum(-1).argmin(1) + 1
    mismatch = (nearest != logits.argmax(1)).double().mean().item()
    got = measure_geometry(module, split_loader(dm, "test"), class_means=holes).metrics["nc4"]
    assert got == pytest.approx(mismatch)


def test_fewer_than_two_classes_is_a_clear_error() -> None:
    dm = TinyDataModule()
    x, _ = dm.sets["train"].tensors
    dm.sets["train"] = TensorDataset(x, torch.zeros(len(x), dtype=torch.long))
    with pytest.raises(NotEnoughClassesError, match="at least 2 classes"):
        measure_geometry(TinyModule(), split_loader(dm, "train"))


def _rank_body(rank: int, world_size: int, out_dir: str) -> None:
    module = TinyModule()
    loader = split_loader(TinyDataModule(), "train", 5, 30, rank=rank, world_size=world_size)
    result = measure_geometry(module, loader, cache_bytes=0 if rank else 2**20)
    torch.save(
        {"metrics": result.metrics, "means": result.class_means, "local": len(loader.dataset)},
        f"{out_dir}/rank{rank}.pt",
    )


@pytest.mark.slow
def test_two_ranks_get_the_single_process_numbers(tmp_path) -> None:
    """Real gloo DDP: each rank measures its shard; both get the one-process result.

    Rank 1 runs its second pass through the backbone, rank 0 from its cache: they still agree.
    """
    run_two_ranks(_rank_body, tmp_path, timeout=90)
    single = measure_geometry(TinyModule(), split_loader(TinyDataModule(), "train", 5, 30))
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert [r["local"] for r in ranks] == [75, 75]
    for got in ranks:
        assert_same(got["metrics"], single.metrics, rtol=1e-9)
        torch.testing.assert_close(got["means"], single.class_means)


def test_log_keys_prefixes_and_drops_undefined_values() -> None:
    keys = log_keys({"nc1": 0.5, "nc4": math.nan, "gnc_means_energy": 2.0}, prefix="test/")
    assert keys == {"test/nc/nc1": 0.5, "test/gnc/means_energy": 2.0}


def test_callback_rejects_bad_settings(tmp_path) -> None:
    with pytest.raises(ValueError, match="split"):
        NeuralCollapseMonitor(str(tmp_path), split="dev")
    with pytest.raises(ValueError, match="every_n_epochs"):
        NeuralCollapseMonitor(str(tmp_path), every_n_epochs=-1)


@pytest.mark.parametrize(
    ("dim", "kinds"), [(2, {"features", "cosines"}), (3, {"features", "cosines"}), (7, {"cosines"})]
)
def test_geometry_figures_by_dimension(dim: int, kinds: set) -> None:
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(200, dim, generator=generator)
    targets = torch.randint(0, 4, (200,), generator=generator)
    means = torch.randn(4, dim, generator=generator)
    means[2] = float("nan")  # an unseen class: blank row, skipped in the histogram
    figures = geometry_figures(features, targets, means, torch.randn(4, dim), title="t")
    assert set(figures) == kinds
    for figure in figures.values():
        plt.close(figure)


def test_cosine_heatmap_marks_the_etf_value() -> None:
    figure = cosine_heatmaps_figure(torch.randn(10, 5), torch.randn(10, 5))
    colourbar_labels = [t.get_text() for ax in figure.axes for t in ax.get_yticklabels()]
    assert "ETF -0.111" in colourbar_labels
    hist_ax = figure.axes[2]
    assert any(line.get_xdata()[0] == pytest.approx(-1 / 9) for line in hist_ax.get_lines())
    plt.close(figure)


def test_nc_curves_draw_every_panel_and_the_optimum() -> None:
    history = [
        {
            "epoch": float(e),
            "nc1": 1.0 / (e + 1),
            "nc4": math.nan,
            "gnc_optimal_min_angle_deg": 36.0,
        }
        | {"gnc_means_min_angle_deg": 10.0 * e, "gnc_proxies_min_angle_deg": 30.0}
        for e in range(3)
    ]
    figure = nc_curves_figure(history)
    nc1_ax, angle_ax = figure.axes[0], figure.axes[4]
    assert list(nc1_ax.get_lines()[0].get_ydata()) == [1.0, 0.5, pytest.approx(1 / 3)]
    assert nc1_ax.get_yscale() == "log"
    assert [line.get_label() for line in angle_ax.get_lines()][-1] == "known optimum"
    assert not figure.axes[3].get_lines()  # nc4 all NaN: nothing drawn
    plt.close(figure)
    with pytest.raises(ValueError, match="at least one"):
        nc_curves_figure([])
