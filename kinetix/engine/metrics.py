"""Classification metrics: top-k accuracy, mean-class accuracy, confusion matrix, reports.

:class:`ClassificationMeter` accumulates ``(N, K)`` scores and ``(N,)`` labels batch by batch (and
across DDP ranks via :meth:`state` / :meth:`load_state`) into a ``(K, K)`` confusion matrix plus top-k
hit counts, so memory does not grow with the dataset.
"""

from __future__ import annotations

import csv
from pathlib import Path

import torch

from kinetix.utils.state_dict import atomic_path


def topk_correct(scores: torch.Tensor, labels: torch.Tensor, ks=(1, 5)) -> dict[int, int]:
    """Number of samples whose label is among the top-k scores, for each k (k capped at K)."""
    kmax = min(max(ks), scores.shape[1])
    top = scores.topk(kmax, dim=1).indices  # (N, kmax)
    hit = top == labels[:, None]  # (N, kmax)
    return {k: int(hit[:, : min(k, kmax)].any(dim=1).sum()) for k in ks}


class ClassificationMeter:
    def __init__(self, num_classes: int, ks=(1, 5)):
        self.num_classes, self.ks = num_classes, tuple(ks)
        self.reset()

    def reset(self) -> None:
        self.confusion = torch.zeros(self.num_classes, self.num_classes, dtype=torch.long)  # true x pred
        self.hits = dict.fromkeys(self.ks, 0)
        self.count = 0

    @torch.no_grad()
    def update(self, scores: torch.Tensor, labels: torch.Tensor) -> None:
        scores, labels = scores.detach().float().cpu(), labels.detach().long().cpu()
        pred = scores.argmax(dim=1)
        idx = labels * self.num_classes + pred  # (N,) flat confusion index
        self.confusion += torch.bincount(idx, minlength=self.num_classes**2).view_as(self.confusion)
        for k, n in topk_correct(scores, labels, self.ks).items():
            self.hits[k] += n
        self.count += len(labels)

    def state(self) -> torch.Tensor:
        """Everything as one tensor ``[confusion.flatten(), hits..., count]`` (for all-reduce)."""
        return torch.cat([self.confusion.flatten(), torch.tensor([*self.hits.values(), self.count])])

    def load_state(self, t: torch.Tensor) -> None:
        k2 = self.num_classes**2
        t = t.long().cpu()
        self.confusion = t[:k2].view(self.num_classes, self.num_classes).clone()
        self.hits = {k: int(v) for k, v in zip(self.ks, t[k2 : k2 + len(self.ks)])}
        self.count = int(t[-1])

    def per_class_accuracy(self) -> torch.Tensor:
        support = self.confusion.sum(dim=1)
        return self.confusion.diag().float() / support.clamp_min(1).float()

    def compute(self) -> dict[str, float]:
        support = self.confusion.sum(dim=1)
        present = support > 0
        out = {f"top{k}": 100.0 * self.hits[k] / max(1, self.count) for k in self.ks}
        out["mean_class_acc"] = (
            100.0 * float(self.per_class_accuracy()[present].mean()) if present.any() else 0.0
        )
        out["count"] = self.count
        return out

    def accuracy_on(self, classes) -> float:
        """Top-1 accuracy (%) restricted to samples whose true label is in ``classes``."""
        idx = torch.as_tensor(list(classes), dtype=torch.long)
        rows = self.confusion[idx]  # (n, K)
        total = int(rows.sum())
        return 100.0 * int(rows[torch.arange(len(idx)), idx].sum()) / max(1, total)

    def direction_accuracy(self, pairs) -> float:
        """Over samples of time-reversed class pairs ``[(a, b), ...]`` that were predicted as one of
        their pair, the % predicted as the right one: the model's grasp of temporal direction
        (chance 50%, whatever it does on the other classes)."""
        right = wrong = 0
        for a, b in pairs:
            c = self.confusion
            right += int(c[a, a] + c[b, b])
            wrong += int(c[a, b] + c[b, a])
        return 100.0 * right / max(1, right + wrong)

    def write_per_class_csv(self, path: str | Path, class_names: list[str] | None = None) -> Path:
        names = class_names or [str(i) for i in range(self.num_classes)]
        acc = self.per_class_accuracy()
        support = self.confusion.sum(dim=1)
        with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["class_index", "class_name", "support", "correct", "accuracy"])
            for i in range(self.num_classes):
                w.writerow(
                    [i, names[i], int(support[i]), int(self.confusion[i, i]), f"{100 * float(acc[i]):.2f}"]
                )
        return Path(path)

    def plot_confusion(self, path: str | Path, class_names: list[str] | None = None, title: str = "") -> Path:
        return plot_confusion(self.confusion, path, class_names, title)


def plot_confusion(confusion: torch.Tensor, path, class_names=None, title: str = "") -> Path:
    """Row-normalised confusion matrix as a PNG (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = confusion.shape[0]
    norm = (confusion.float() / confusion.sum(dim=1, keepdim=True).clamp_min(1)).numpy()
    size = min(16, 3 + 0.3 * k)
    fig, ax = plt.subplots(figsize=(size, size))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    if k <= 40:
        names = class_names or [str(i) for i in range(k)]
        ax.set_xticks(range(k), names, rotation=90, fontsize=7)
        ax.set_yticks(range(k), names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or "confusion matrix (row-normalised)")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return Path(path)
