"""Classification metrics from a confusion matrix: top-1, top-5, mean per-class accuracy, loss.

Everything is accumulated as counts (confusion matrix, top-5 hits, per-batch loss sums) so results
are exact and independent of batch size; percentages are computed once at the end. The counts stay
on the device of the logits until `result()` (no host-device sync per batch), and `all_reduce()`
merges the shards of a split evaluated by several processes into exactly the single-process numbers:
counts are integers, and the loss is the correctly rounded sum (math.fsum) of the per-batch sums, so
neither the shard layout nor the order the batches were seen in changes a bit of it.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F


@dataclass
class Accumulator:
    num_classes: int
    device: torch.device | str = "cpu"               # where the counts live (a rank with no batch all-reduces them too)
    confusion: torch.Tensor = field(init=False)      # [true, predicted] counts, flat, on `device`
    top5: torch.Tensor = field(init=False)           # top-5 hits (0-d int64), on `device`
    batch_losses: list = field(default_factory=list)  # per-batch summed loss (float32 tensors)
    count: int = 0                                   # images seen (a shape: known without a sync)

    def __post_init__(self) -> None:
        self.confusion = torch.zeros(self.num_classes * self.num_classes, dtype=torch.int64, device=self.device)
        self.top5 = torch.zeros((), dtype=torch.int64, device=self.device)

    @torch.no_grad()
    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        logits = logits.float()
        labels = labels.to(logits.device)
        if self.confusion.device != logits.device:
            self.confusion, self.top5 = self.confusion.to(logits.device), self.top5.to(logits.device)
        # Plain cross-entropy (no smoothing) so eval loss is comparable across recipes.
        self.batch_losses.append(F.cross_entropy(logits, labels, reduction="sum"))
        k = min(5, self.num_classes)
        topk = logits.topk(k, dim=1).indices
        self.top5 += (topk == labels[:, None]).any(dim=1).sum()
        flat = labels * self.num_classes + topk[:, 0]
        # index_add_, not bincount: CUDA's bincount reads the largest value back to the host
        self.confusion.index_add_(0, flat, torch.ones_like(flat))
        self.count += labels.numel()

    def all_reduce(self, world: int) -> None:
        """Merge the accumulators of all `world` processes (torch.distributed); a no-op for one."""
        if world <= 1:
            return
        import torch.distributed as tdist

        counts = torch.cat([self.confusion, self.top5.view(1),
                            torch.tensor([self.count], dtype=torch.int64, device=self.confusion.device)])
        tdist.all_reduce(counts)
        c2 = self.num_classes * self.num_classes
        self.confusion, self.top5, self.count = counts[:c2], counts[c2], int(counts[c2 + 1])
        shards: list = [None] * world
        tdist.all_gather_object(shards, self._loss_values())
        self.batch_losses = [torch.tensor([v for shard in shards for v in shard], dtype=torch.float32)]

    def _loss_values(self) -> list[float]:
        return torch.cat([v.reshape(-1) for v in self.batch_losses]).tolist() if self.batch_losses else []

    @property
    def loss_sum(self) -> float:
        return math.fsum(self._loss_values())

    def result(self) -> dict[str, float]:
        """The metrics (one host-device sync: the counts are read here)."""
        return summarize(self.confusion_matrix(), int(self.top5), self.loss_sum, self.count)

    def confusion_matrix(self) -> torch.Tensor:
        """[true, predicted] counts on the CPU."""
        return self.confusion.cpu().reshape(self.num_classes, self.num_classes)


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
