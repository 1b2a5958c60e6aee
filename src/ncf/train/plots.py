"""Learning-curve plot (loss, HR@10, NDCG@10 per epoch) as PNG."""

from __future__ import annotations

from pathlib import Path


def learning_curves(history: list[dict], path: Path, title: str = "") -> None:
    if not history:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in history]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    axes[0].plot(epochs, [r["loss"] for r in history], marker="o")
    axes[0].set_xlabel("epoch")
    axes[0].set_ylabel("training loss")
    if all(r.get("valid") for r in history):
        for key in ("hr@10", "ndcg@10"):
            axes[1].plot(epochs, [r["valid"][key] for r in history], marker="o", label=f"valid {key}")
        axes[1].legend()
    axes[1].set_xlabel("epoch")
    axes[1].set_ylabel("validation metric")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
