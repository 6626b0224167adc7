"""Pictures for the MLflow UI (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path


def training_curves(history: list[dict[str, float]], path: Path) -> Path:
    """Loss (train and eval) and eval accuracy per epoch, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] for row in history]
    has_accuracy = bool(history) and "eval_accuracy" in history[0]
    fig, axes = plt.subplots(1, 2 if has_accuracy else 1, figsize=(10 if has_accuracy else 5, 3.5), squeeze=False)
    loss_ax = axes[0][0]
    loss_ax.plot(epochs, [row["loss"] for row in history], label="train")
    loss_ax.plot(epochs, [row["eval_loss"] for row in history], label="eval")
    loss_ax.set(xlabel="epoch", ylabel="loss", title="Loss", yscale="log")
    loss_ax.legend()
    if has_accuracy:
        acc_ax = axes[0][1]
        acc_ax.plot(epochs, [row["eval_accuracy"] for row in history], color="tab:green")
        acc_ax.set(xlabel="epoch", ylabel="accuracy", title="Eval accuracy", ylim=(0, 1.02))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
