"""The report's charts: the memory plan against the budget, training curves per block, and the
chosen exit's confusion matrix on the test split (scikit-learn's, drawn by matplotlib)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from nfcompile.core.io import write_bytes
from nfcompile.core.results import Plan, TrainResult

MIB = 2**20


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure, path: Path) -> Path:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    return write_bytes(path, buffer.getvalue())


def plot_memory_plan(plan: Plan, train: TrainResult | None, path: Path) -> Path:
    """Predicted and measured peak per block (bars) against the budget (line), batch sizes on top."""
    figure = _figure(max(6.0, 1.2 * len(plan.blocks) + 3), 4.5)
    ax = figure.subplots()
    measured = {b.index: b.measured_peak_bytes for b in (train.blocks if train else ()) if b.measured_peak_bytes}
    xs = list(range(len(plan.blocks)))
    width = 0.38
    ax.bar([x - width / 2 for x in xs], [b.predicted_peak_bytes / MIB for b in plan.blocks], width,
           label="predicted peak", color="tab:blue")
    if measured:
        ax.bar([x + width / 2 for x in xs], [measured.get(b.index, 0) / MIB for b in plan.blocks], width,
               label="measured peak", color="tab:orange")
    ax.axhline(plan.budget_bytes / MIB, color="tab:red", linestyle="--", label="budget")
    for x, block in zip(xs, plan.blocks):
        ax.annotate(f"batch {block.batch_size}", (x, block.predicted_peak_bytes / MIB), ha="center",
                    va="bottom", fontsize="small", xytext=(0, 3), textcoords="offset points")
    ax.set_xticks(xs, [f"block {b.index}\nunits {b.units[0]}-{b.units[-1]}" for b in plan.blocks])
    ax.set_ylabel("MiB")
    ax.set_title(f"Memory plan: {len(plan.blocks)} block(s) under {plan.budget_bytes / MIB:.1f} MiB "
                 f"(backprop fits batch {plan.backprop_batch_size or 'none'})")
    ax.legend(loc="lower right", fontsize="small")
    return _save(figure, path)


def plot_training(train: TrainResult, path: Path) -> Path:
    """Validation accuracy of every exit, epoch by epoch, block after block (one colour per block)."""
    figure = _figure(9.0, 4.5)
    ax = figure.subplots()
    offset = 0
    colors = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink",
              "tab:gray", "tab:olive", "tab:cyan"]
    for block in train.blocks:
        if not block.history:
            continue
        color = colors[block.index % len(colors)]
        epochs = [offset + record.epoch for record in block.history]
        # NeuroFlux records one accuracy per unit of the block; backprop only its final exit's.
        exits = len(block.history[0].val_accuracy)
        for position in range(exits):
            accuracy = [record.val_accuracy[position] * 100 for record in block.history]
            last = position == exits - 1
            ax.plot(epochs, accuracy, color=color, alpha=1.0 if last else 0.35, linewidth=2 if last else 1,
                    label=f"block {block.index} (units {block.units[0]}-{block.units[-1]})" if last else None)
        offset = epochs[-1]
    ax.set_xlabel("epoch (blocks train one after another)")
    ax.set_ylabel("validation accuracy of each exit (%)")
    ax.set_title(f"Training: {train.method}, bold = the block's last exit")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    return _save(figure, path)


def class_accuracy(labels: np.ndarray, predicted: np.ndarray, class_names: list[str]) -> dict[str, Any]:
    """Per-class accuracy (recall) and the confusion matrix of one model's predictions on a split."""
    from sklearn.metrics import confusion_matrix

    indices = list(range(len(class_names)))
    matrix = confusion_matrix(labels, predicted, labels=indices)
    support = matrix.sum(axis=1)
    return {"split": "test", "samples": int(len(labels)), "accuracy": float(np.mean(labels == predicted)),
            "classes": [{"index": i, "name": name, "samples": int(support[i]),
                         "accuracy": float(matrix[i, i] / support[i]) if support[i] else None,
                         "most_confused_with": _most_confused(matrix, i, class_names)}
                        for i, name in enumerate(class_names)],
            "confusion_matrix": matrix.tolist(),
            "rows": "true class", "columns": "predicted class"}


def _most_confused(matrix: np.ndarray, row: int, class_names: list[str]) -> str | None:
    errors = matrix[row].copy()
    errors[row] = 0
    return class_names[int(errors.argmax())] if errors.max() > 0 else None


def plot_confusion(labels: np.ndarray, predicted: np.ndarray, class_names: list[str], path: Path, *,
                   title: str) -> Path:
    """The confusion matrix (true class in rows), counts in the cells, with the class names."""
    from sklearn.metrics import ConfusionMatrixDisplay

    size = max(5.0, 0.55 * len(class_names) + 2.5)
    figure = _figure(size + 1.0, size)
    ax = figure.subplots()
    ConfusionMatrixDisplay.from_predictions(labels, predicted, labels=list(range(len(class_names))),
                                            display_labels=class_names, ax=ax, colorbar=True,
                                            xticks_rotation=45 if len(class_names) > 5 else "horizontal",
                                            cmap="Blues")
    ax.set_title(title)
    return _save(figure, path)
