"""What a finished run gets wrong: fastai's `most_confused` and `plot_top_losses`.

    most_confused(confusion)     off-diagonal (true, predicted) pairs, most frequent first
    predict_split(...)           one pass over the eval split: per image the label, the top-1
                                 prediction, both probabilities and the cross-entropy loss
    top_losses(...)              the images with the highest loss (confidently wrong first), with
                                 thumbnails framed as the model saw them (eval resize + center crop)

run.py calls these at the end of a run; RunDir writes the results (summary.json, predictions.csv,
top_losses.png). Nothing here prints.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

TOP_PAIRS = 10     # pairs kept in summary.json (fastai prints all with min_val=1; ten say enough)
TOP_IMAGES = 16    # images in top_losses.png: a 4 x 4 grid (fastai's plot_top_losses default is 9)
THUMB_PX = 160     # thumbnail side: readable whatever the training size (32 px runs included)


def most_confused(confusion, classes: Sequence[str], top: int = TOP_PAIRS, min_count: int = 1) -> list[dict]:
    """[{"true", "pred", "count"}] for off-diagonal cells >= min_count, largest first (ties by class order)."""
    rows = confusion.tolist() if hasattr(confusion, "tolist") else confusion
    pairs = [(int(n), i, j) for i, row in enumerate(rows) for j, n in enumerate(row) if i != j and n >= min_count]
    pairs.sort(key=lambda p: (-p[0], p[1], p[2]))
    return [{"true": classes[i], "pred": classes[j], "count": n} for n, i, j in pairs[:top]]


@dataclass
class Predictions:
    keys: list[str]          # file path (or hub id) of each image, in split order
    labels: list[int]
    preds: list[int]         # top-1
    prob_pred: list[float]   # softmax probability of the prediction
    prob_true: list[float]   # ... and of the true class
    losses: list[float]      # cross-entropy of each image (no smoothing)

    def __len__(self) -> int:
        return len(self.keys)

    def write_csv(self, path: Path, classes: Sequence[str]) -> None:
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["file", "true", "pred", "prob_pred", "prob_true", "loss"])
            for k in range(len(self)):
                w.writerow([self.keys[k], classes[self.labels[k]], classes[self.preds[k]],
                            f"{self.prob_pred[k]:.6f}", f"{self.prob_true[k]:.6f}", f"{self.losses[k]:.6f}"])


def predict_split(model, pipeline, samples, autocast) -> Predictions:
    """Per-image results of `model` on `samples` (eval mode, the run's precision)."""
    import torch
    import torch.nn.functional as F

    was_training = model.training
    model.eval()
    out = Predictions([samples.key(i) for i in range(len(samples))], [], [], [], [], [])
    with torch.no_grad():
        for images, labels in pipeline.eval_batches(samples):
            with autocast():
                logits = model(images)
            logits = logits.float()
            probs = logits.softmax(dim=1)
            top, pred = probs.max(dim=1)
            out.labels += labels.tolist()
            out.preds += pred.tolist()
            out.prob_pred += top.tolist()
            out.prob_true += probs.gather(1, labels[:, None])[:, 0].tolist()
            out.losses += F.cross_entropy(logits, labels, reduction="none").tolist()
    model.train(was_training)
    return out


def top_losses(pred: Predictions, samples, classes: Sequence[str], crop_pct: float,
               k: int = TOP_IMAGES) -> tuple[list[Any], list[str], list[bool]]:
    """(thumbnails, titles, wrong?) of the k images with the highest loss."""
    order = sorted(range(len(pred)), key=lambda i: (-pred.losses[i], i))[:k]
    images, titles, wrong = [], [], []
    for i in order:
        images.append(thumbnail(samples, i, crop_pct))
        t, p = classes[pred.labels[i]], classes[pred.preds[i]]
        name = "/".join(Path(pred.keys[i]).parts[-2:])  # class folders often reuse file names
        titles.append(f"true: {t}\npred: {p} ({pred.prob_pred[i]:.2f})\nloss {pred.losses[i]:.2f} · {name}")
        wrong.append(pred.labels[i] != pred.preds[i])
    return images, titles, wrong


def thumbnail(samples, i: int, crop_pct: float, size: int = THUMB_PX):
    """Sample i framed like the eval transform (shorter side to size/crop_pct, center crop size)."""
    from PIL import Image

    img = samples.load(i)
    resize = max(size, int(math.floor(size / crop_pct)))
    w, h = img.size
    scale = resize / min(w, h)
    img = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR)
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    return img.crop((left, top, left + size, top + size))
