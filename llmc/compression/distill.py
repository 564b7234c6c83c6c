"""Distilling a pruned student against its original (the teacher) on unlabeled text, in a CPU
time budget: the student's last hidden states are pulled to the teacher's at every real token
(mean squared error) and its mean-pooled sentence embeddings to the teacher's (1 - cosine).
Dropout stays off (the student runs in eval mode; gradients flow all the same)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

LEARNING_RATE = 5e-5
PROGRESS_SECONDS = 15.0


def pooled(hidden: Any, mask: Any) -> Any:
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)


def distill(
    student: Any, teacher: Any, batches: list[dict[str, Any]], minutes: float, log: Callable[[str], None], seed: int = 0
) -> dict[str, Any]:
    """Train ``student`` in place for at most ``minutes``; what it did."""
    import torch

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    teacher.eval()
    student.eval()
    with torch.no_grad():
        targets = [teacher(**batch).last_hidden_state for batch in batches]
    optimizer = torch.optim.AdamW(student.parameters(), lr=LEARNING_RATE)
    budget = 60.0 * minutes
    start = time.perf_counter()
    last_report, steps, losses = start, 0, []
    while time.perf_counter() - start < budget:
        for index in rng.permutation(len(batches)):
            batch, target = batches[index], targets[index]
            hidden = student(**batch).last_hidden_state
            real = batch["attention_mask"].bool()
            loss = torch.nn.functional.mse_loss(hidden[real], target[real]) + (
                1.0 - torch.nn.functional.cosine_similarity(pooled(hidden, batch["attention_mask"]),
                                                            pooled(target, batch["attention_mask"]))
            ).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            steps += 1
            losses.append(loss.item())
            now = time.perf_counter()
            if now - last_report >= PROGRESS_SECONDS:
                last_report = now
                log(f"distilling: {now - start:.0f}/{budget:.0f} s, step {steps}, loss {np.mean(losses[-20:]):.4f}, "
                    f"ETA {max(0.0, budget - (now - start)):.0f} s")
            if now - start >= budget:
                break
    student.eval()
    return {"steps": steps, "seconds": round(time.perf_counter() - start, 1),
            "loss_first": round(losses[0], 5) if losses else None, "loss_last": round(float(np.mean(losses[-20:])), 5)
            if losses else None}


def agreement(student: Any, teacher: Any, batches: list[dict[str, Any]]) -> dict[str, float]:
    """Mean-pooled embedding cosine between student and teacher: mean and worst sentence."""
    import torch

    cosines = []
    with torch.no_grad():
        for batch in batches:
            a = pooled(student(**batch).last_hidden_state, batch["attention_mask"])
            b = pooled(teacher(**batch).last_hidden_state, batch["attention_mask"])
            cosines.append(torch.nn.functional.cosine_similarity(a, b))
    values = torch.cat(cosines).numpy()
    return {"cosine_mean": round(float(values.mean()), 5), "cosine_worst": round(float(values.min()), 5)}
