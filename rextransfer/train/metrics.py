"""Classification metrics from a confusion matrix: top-1, top-5, mean per-class accuracy, loss.

Everything is accumulated as counts (confusion matrix, top-5 hits, summed loss) so results are
exact and independent of batch size; percentages are computed once at the end.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F


@dataclass
class Accumulator:
    num_classes: int
    confusion: torch.Tensor = field(init=False)   # [true, predicted] counts
    top5_hits: int = 0
    loss_sum: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        self.confusion = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)

    @torch.no_grad()
    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        logits = logits.float()
        labels = labels.to(logits.device)
        # Plain cross-entropy (no smoothing) so eval loss is comparable across recipes.
        self.loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
        k = min(5, self.num_classes)
        topk = logits.topk(k, dim=1).indices
        self.top5_hits += (topk == labels[:, None]).any(dim=1).sum().item()
        pred = topk[:, 0]
        flat = (labels * self.num_classes + pred).cpu()
        self.confusion += torch.bincount(flat, minlength=self.num_classes**2).reshape(self.num_classes, -1)
        self.count += labels.numel()

    def result(self) -> dict[str, float]:
        return summarize(self.confusion, self.top5_hits, self.loss_sum, self.count)


def summarize(confusion: torch.Tensor, top5_hits: int, loss_sum: float, count: int) -> dict[str, float]:
    if count == 0:
        return {"top1": float("nan"), "top5": float("nan"), "mean_class_acc": float("nan"), "loss": float("nan")}
    correct = confusion.diag().double()
    per_class_total = confusion.sum(dim=1).double()
    present = per_class_total > 0  # classes absent from the split do not drag the mean down
    per_class = correct[present] / per_class_total[present]
    return {
        "top1": 100.0 * correct.sum().item() / count,
        "top5": 100.0 * top5_hits / count,
        "mean_class_acc": 100.0 * per_class.mean().item(),
        "loss": loss_sum / count,
    }


def per_class_rows(confusion: torch.Tensor, classes: list[str]) -> list[dict]:
    rows = []
    for i, name in enumerate(classes):
        total = int(confusion[i].sum())
        correct = int(confusion[i, i])
        predicted = int(confusion[:, i].sum())
        rows.append({
            "index": i, "class": name, "support": total, "correct": correct,
            "accuracy": round(100.0 * correct / total, 4) if total else "",
            "precision": round(100.0 * correct / predicted, 4) if predicted else "",
        })
    return rows


def write_per_class_csv(path: Path, confusion: torch.Tensor, classes: list[str]) -> None:
    rows = per_class_rows(confusion, classes)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0].keys()))
        writer.writeheader()
        writer.writerows(rows)


def write_confusion_csv(path: Path, confusion: torch.Tensor, classes: list[str]) -> None:
    """Rows are true classes, columns predicted classes; first row/column are class names."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["true \\ predicted", *classes])
        for name, row in zip(classes, confusion.tolist()):
            writer.writerow([name, *row])
