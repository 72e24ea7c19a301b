"""The data-map recorder: Welford statistics of each (sample, task) confidence, on the device.

What is averaged: one observation per (sample, task) per epoch — the probability the model gave
the true label in the training step that saw the sample (train mode, augmented input, logits from
the forward pass before the optimizer step, as in STG-MTL and Dataset Cartography). Statistics are
cumulative from the first epoch. At the end of epoch e (1-based) the snapshot holds, over the e
observations so far:

- confidence  = mean
- variability = standard deviation with ``ddof`` (0 = Cartography's ``np.std``, the default;
  1 = the official STG-MTL code; where e <= ddof it is written as 0, never NaN)
- correctness = fraction of those observations with confidence > 0.5 (prediction right)

Missing labels (NaN targets, multi-label data): a (sample, task) pair without a label is not
recorded. Its confidence is NaN, which the Welford step carries through (its mean and M2 stay NaN;
a pair's label is the same in every epoch, so no pair mixes NaN and numbers), and ``snapshot``
writes NaN for all three statistics of that pair. With no missing label nothing changes (the
confidence formula gives the same numbers bitwise). How task features treat the NaN entries:
``stg.grouping.features`` (each is replaced by its task's mean over the recorded samples).
"""

from __future__ import annotations

import numpy as np
import torch


class DataMapRecorder:
    """Running (N, T) statistics; ``update`` is a Welford step on the batch's rows, no host sync.

    The (N, T) layout makes the per-batch row gather/scatter contiguous.
    """

    def __init__(self, n_samples: int, n_tasks: int, *, device: torch.device, ddof: int = 0):
        if ddof not in (0, 1):
            raise ValueError("ddof must be 0 or 1")
        self.ddof = ddof
        self.count = torch.zeros(n_samples, device=device, dtype=torch.float32)
        self.mean = torch.zeros(n_samples, n_tasks, device=device, dtype=torch.float32)
        self.m2 = torch.zeros(n_samples, n_tasks, device=device, dtype=torch.float32)
        self.correct = torch.zeros(n_samples, n_tasks, device=device, dtype=torch.float32)

    @staticmethod
    def confidence(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Probability of the true label: sigmoid(z) where y = 1, 1 - sigmoid(z) where y = 0, NaN
        where y is NaN (missing). (B, T)."""
        p = torch.sigmoid(logits.detach().float())
        return torch.where(targets > 0.5, p, torch.where(targets.isnan(), targets.float(), 1.0 - p))

    @torch.no_grad()
    def update(self, index: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor) -> None:
        """index: (B,) distinct int64 rows; logits, targets: (B, T)."""
        c = self.confidence(logits, targets)
        n = self.count[index] + 1.0
        mean_old = self.mean[index]
        delta = c - mean_old
        mean_new = mean_old + delta / n[:, None]
        self.m2[index] = self.m2[index] + delta * (c - mean_new)
        self.mean[index] = mean_new
        self.count[index] = n
        self.correct[index] = self.correct[index] + (c > 0.5).float()

    def snapshot(self) -> dict[str, np.ndarray]:
        """{confidence, variability, correctness}: float32 (T, N) numpy arrays, NaN for the
        (sample, task) pairs without a label."""
        n = self.count[:, None]
        var = torch.where(n > self.ddof, self.m2 / (n - self.ddof).clamp_min(1.0), torch.zeros_like(self.m2))
        safe_n = n.clamp_min(1.0)
        missing = self.mean.isnan()  # only unlabelled pairs: a confidence is never NaN otherwise
        out = {
            "confidence": self.mean,
            "variability": var.clamp_min(0.0).sqrt().masked_fill(missing, float("nan")),
            "correctness": (self.correct / safe_n).masked_fill(missing, float("nan")),
        }
        return {k: v.t().contiguous().cpu().numpy().astype(np.float32) for k, v in out.items()}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"count": self.count, "mean": self.mean, "m2": self.m2, "correct": self.correct}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for key in ("count", "mean", "m2", "correct"):
            src = state[key]
            if src.shape != getattr(self, key).shape:
                raise ValueError(f"recorder state {key} has shape {tuple(src.shape)}")
            getattr(self, key).copy_(src)
