"""``python -m hugnc [overrides]``: one Hydra entry point for training runs and sweeps."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from hugnc.config import config_dir


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="train")
def _run(cfg: DictConfig) -> float | None:
    from hugnc.train import train  # heavy imports after Hydra parsed --help / --cfg

    metrics = train(cfg)
    accuracy = metrics.get("test/acc")
    summary = (
        f"test/acc = {accuracy:.4f}" if accuracy is not None else "no test metrics (test=false)"
    )
    print(f"{summary}; run directory: {cfg.paths.output_dir}")
    return accuracy if accuracy is not None else metrics.get("val/acc")


def main() -> None:
    _run()


if __name__ == "__main__":
    main()
