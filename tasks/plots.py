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


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def evaluation_plots(task: str, models: dict[str, dict], labels, out_dir: Path) -> list[Path]:
    """Challenger and champion side by side on the same eval examples.

    Classification: ``confusion_matrix.png`` and ``roc_pr_curves.png`` (one-vs-rest, micro-averaged
    over the classes); regression: ``residuals.png``. ``models`` maps a name to its
    ``serving_default`` outputs.
    """
    import numpy as np

    plt = _plt()
    out_dir.mkdir(parents=True, exist_ok=True)
    names = list(models)
    written = []
    if task == "regression":
        fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 4), squeeze=False)
        truth = labels.astype(np.float64)
        for ax, name in zip(axes[0], names):
            predicted = models[name]["predictions"].astype(np.float64)
            ax.scatter(predicted, truth - predicted, s=6, alpha=0.5)
            ax.axhline(0, color="black", linewidth=0.8)
            rmse = float(np.sqrt(np.mean((truth - predicted) ** 2)))
            ax.set(xlabel="predicted", ylabel="label - predicted", title=f"{name}: residuals (RMSE {rmse:.4g})")
        fig.tight_layout()
        path = out_dir / "residuals.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return [path]

    from sklearn.metrics import auc, confusion_matrix, precision_recall_curve, roc_curve

    classes = models[names[0]]["classes"][0].astype(str).tolist()
    truth = labels.astype(str) if labels.dtype.kind in "OSU" else labels.astype(np.int64).astype(str)
    fig, axes = plt.subplots(1, len(names), figsize=(4.5 * len(names), 4), squeeze=False)
    for ax, name in zip(axes[0], names):
        matrix = confusion_matrix(truth, models[name]["predicted_class"].astype(str), labels=classes)
        ax.imshow(matrix, cmap="Blues")
        for (i, j), count in np.ndenumerate(matrix):
            ax.text(j, i, str(count), ha="center", va="center",
                    color="white" if count > matrix.max() / 2 else "black")
        ax.set(xticks=range(len(classes)), yticks=range(len(classes)), xticklabels=classes, yticklabels=classes,
               xlabel="predicted", ylabel="label", title=f"{name}: confusion matrix")
    fig.tight_layout()
    written.append(out_dir / "confusion_matrix.png")
    fig.savefig(written[-1], dpi=100)
    plt.close(fig)

    onehot = (truth[:, None] == np.array(classes)[None, :]).ravel()
    fig, (roc_ax, pr_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for name in names:
        scores = models[name]["scores"].ravel()
        fpr, tpr, _ = roc_curve(onehot, scores)
        precision, recall, _ = precision_recall_curve(onehot, scores)
        roc_ax.plot(fpr, tpr, label=f"{name} (AUC {auc(fpr, tpr):.3f})")
        pr_ax.plot(recall, precision, label=name)
    roc_ax.plot([0, 1], [0, 1], color="grey", linestyle=":")
    roc_ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC (one-vs-rest, micro)")
    pr_ax.set(xlabel="recall", ylabel="precision", title="Precision-recall (one-vs-rest, micro)", ylim=(0, 1.02))
    roc_ax.legend()
    pr_ax.legend()
    fig.tight_layout()
    written.append(out_dir / "roc_pr_curves.png")
    fig.savefig(written[-1], dpi=100)
    plt.close(fig)
    return written


def optimization_chart(report: dict, path: Path) -> Path:
    """Size (gzip), latency p50 at batch 1 and quality of every measured variant, side by side;
    rejected variants hatched."""
    plt = _plt()
    quality = report["quality_metric"]
    rows = {name: row for name, row in report["variants"].items() if not row.get("skipped")}
    names = list(rows)
    colors = ["tab:blue" if rows[n]["kept"] else "tab:red" for n in names]
    hatches = ["" if rows[n]["kept"] else "//" for n in names]
    panels = [("gzip_bytes", "gzipped size (KB)", 1e-3), ("latency_p50_ms", "latency p50, batch 1 (ms)", 1.0),
              ("throughput_per_second", "throughput (rows/s)", 1.0), (quality, quality, 1.0)]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 0.5 * len(names) + 2.2), sharey=True)
    for ax, (key, title, scale) in zip(axes, panels):
        bars = ax.barh(names, [rows[n][key] * scale for n in names], color=colors)
        for bar, hatch in zip(bars, hatches):
            bar.set_hatch(hatch)
        ax.set_title(title, fontsize=10)
        ax.invert_yaxis() if ax is axes[0] else None
        ax.bar_label(bars, fmt="%.3g", fontsize=8, padding=2)
        ax.margins(x=0.25)
    skipped = [f"{n}: {r['reason']}" for n, r in report["variants"].items() if r.get("skipped")]
    fig.suptitle("Optimized variants against the original SavedModel (red, hatched: rejected)", fontsize=11)
    if skipped:
        fig.text(0.01, 0.01, "skipped: " + "; ".join(skipped), fontsize=8)
    fig.tight_layout(rect=(0, 0.05 if skipped else 0, 1, 0.95))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def slice_plot(slice_metrics: dict[str, dict[str, float]], champion: dict[str, dict[str, float]] | None,
               metric: str, path: Path) -> Path:
    """One metric per slice, challenger beside champion, with each slice's example count."""
    import numpy as np

    plt = _plt()
    names = list(slice_metrics)
    y = np.arange(len(names))
    height = 0.4 if champion else 0.7
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(names) + 1.6))
    values = [slice_metrics[n].get(metric, np.nan) for n in names]
    bars = ax.barh(y - (height / 2 if champion else 0), values, height, label="challenger")
    ax.bar_label(bars, fmt="%.3f", fontsize=8, padding=2)
    if champion:
        ax.barh(y + height / 2, [champion.get(n, {}).get(metric, np.nan) for n in names], height, label="champion",
                color="tab:gray")
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12 - 0.6 / len(names)), ncol=2, frameon=False)
    ax.set_yticks(y, [f"{n} ({int(slice_metrics[n]['example_count'])})" for n in names])
    ax.invert_yaxis()
    ax.set(xlabel=metric, title=f"{metric} per slice (eval examples in brackets)")
    ax.margins(x=0.15)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
