"""Distilling a pruned student against its original (the teacher) on unlabeled text, in a CPU
time budget with progress and an ETA.

Encoders: the student's last hidden states are pulled to the teacher's at every real token
(mean squared error) and its mean-pooled sentence embeddings to the teacher's (1 - cosine).
Decoders: the student's next-token distribution is pulled to the teacher's at every real token
(KL divergence of the logits) and its last hidden states to the teacher's (mean squared error).
Dropout stays off (the student runs in eval mode; gradients flow all the same). Encoders see
half their steps on token-replaced variants of the text (:func:`replace_tokens`), labelled by the
teacher. With 2:4 masks
the pruned weights are re-zeroed after every step.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

# Peak learning rates, decayed linearly to a tenth over the time budget, as measured. Encoders:
# MiniLM with 3/4 of its FFN neurons removed, 2 minutes: held-out cosine 0.891 at 5e-5, 0.908 at
# 2e-4, 0.920 at 5e-4, 0.912 at 1e-3. Decoders: SmolLM2 (a quarter of the FFN and a third of the
# heads removed), 1.5 minutes: perplexity 406 at 5e-5, 166 at 2e-4, 162 at 6e-4.
LEARNING_RATE = {"encoder": 5e-4, "decoder": 2e-4}
PROGRESS_SECONDS = 15.0
# Encoders: the text is small next to the steps a budget runs (1,700 sentences are seen ~50 times
# in 20 minutes), so half the steps see a variant the teacher labels anew: 15% of the tokens
# replaced by other tokens of the batch.
AUGMENT, REPLACE_RATE = 0.5, 0.15


def pooled(hidden: Any, mask: Any) -> Any:
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)


def replace_tokens(batch: dict[str, Any], rng: np.random.Generator, rate: float = REPLACE_RATE) -> dict[str, Any]:
    """``batch`` with ``rate`` of its inner real tokens (not the first or last of a row: [CLS] and
    [SEP]) replaced by tokens drawn from the batch's own inner tokens (right padding)."""
    import torch

    ids, mask = batch["input_ids"].clone(), batch["attention_mask"].bool()
    inner = mask.clone()
    inner[:, 0] = False
    inner[torch.arange(len(ids)), mask.sum(1) - 1] = False
    pool = ids[inner]
    chosen = inner & torch.from_numpy(rng.random(tuple(ids.shape)) < rate)
    if pool.numel() and chosen.any():
        ids[chosen] = pool[torch.from_numpy(rng.integers(0, pool.numel(), int(chosen.sum())))]
    return {**batch, "input_ids": ids}


def _encoder_loss(student: Any, target: Any, batch: dict[str, Any]) -> Any:
    import torch

    hidden = student(**batch).last_hidden_state
    real = batch["attention_mask"].bool()
    cosine = torch.nn.functional.cosine_similarity(pooled(hidden, batch["attention_mask"]),
                                                   pooled(target, batch["attention_mask"]))
    return torch.nn.functional.mse_loss(hidden[real], target[real]) + (1.0 - cosine).mean()


def _decoder_loss(student: Any, teacher: Any, batch: dict[str, Any]) -> Any:
    import torch

    with torch.no_grad():
        want = teacher(**batch, use_cache=False, output_hidden_states=True)
    got = student(**batch, use_cache=False, output_hidden_states=True)
    real = batch["attention_mask"].bool()
    kl = torch.nn.functional.kl_div(torch.log_softmax(got.logits[real], -1), torch.log_softmax(want.logits[real], -1),
                                    log_target=True, reduction="batchmean")
    return kl + torch.nn.functional.mse_loss(got.hidden_states[-1][real], want.hidden_states[-1][real])


def distill(
    student: Any, teacher: Any, batches: list[dict[str, Any]], minutes: float, log: Callable[[str], None],
    *, decoder: bool = False, after_step: Callable[[], None] | None = None, seed: int = 0,
) -> dict[str, Any]:
    """Train ``student`` in place for at most ``minutes``; what it did."""
    import torch

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    teacher.eval()
    student.eval()
    if decoder:  # logits of every batch would not fit: the teacher runs beside the student
        loss_of = lambda index: _decoder_loss(student, teacher, batches[index])  # noqa: E731
    else:
        with torch.no_grad():
            targets = [teacher(**batch).last_hidden_state for batch in batches]

        def loss_of(index: int) -> Any:
            if rng.random() >= AUGMENT:
                return _encoder_loss(student, targets[index], batches[index])
            batch = replace_tokens(batches[index], rng)
            with torch.no_grad():
                target = teacher(**batch).last_hidden_state
            return _encoder_loss(student, target, batch)
    peak = LEARNING_RATE["decoder" if decoder else "encoder"]
    optimizer = torch.optim.AdamW(student.parameters(), lr=peak)
    budget = 60.0 * minutes
    start = time.perf_counter()
    last_report, steps, losses = start, 0, []
    while time.perf_counter() - start < budget:
        for index in rng.permutation(len(batches)):
            for group in optimizer.param_groups:
                group["lr"] = peak * max(0.1, 1.0 - (time.perf_counter() - start) / budget)
            loss = loss_of(index)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if after_step is not None:
                after_step()
            steps += 1
            losses.append(loss.item())
            now = time.perf_counter()
            if now - last_report >= PROGRESS_SECONDS:
                last_report = now
                done = min(1.0, (now - start) / budget)
                bar = "#" * int(20 * done) + "." * (20 - int(20 * done))
                log(f"distilling [{bar}] {now - start:.0f}/{budget:.0f} s, step {steps}, "
                    f"loss {np.mean(losses[-20:]):.4f}, ETA {max(0.0, budget - (now - start)):.0f} s")
            if now - start >= budget:
                break
    student.eval()
    return {"steps": steps, "seconds": round(time.perf_counter() - start, 1),
            "loss_first": round(losses[0], 5) if losses else None, "loss_last": round(float(np.mean(losses[-20:])), 5)
            if losses else None}


def agreement(student: Any, teacher: Any, batches: list[dict[str, Any]], decoder: bool = False) -> dict[str, float]:
    """Held-out agreement. Encoders: mean-pooled embedding cosine (mean, worst sentence).
    Decoders: perplexity of student and teacher, and how often their top-1 next tokens agree."""
    import torch

    if decoder:
        return _decoder_agreement(student, teacher, batches)
    cosines = []
    with torch.no_grad():
        for batch in batches:
            a = pooled(student(**batch).last_hidden_state, batch["attention_mask"])
            b = pooled(teacher(**batch).last_hidden_state, batch["attention_mask"])
            cosines.append(torch.nn.functional.cosine_similarity(a, b))
    values = torch.cat(cosines).numpy()
    return {"cosine_mean": round(float(values.mean()), 5), "cosine_worst": round(float(values.min()), 5)}


def _decoder_agreement(student: Any, teacher: Any, batches: list[dict[str, Any]]) -> dict[str, float]:
    import torch

    nll = {"student": 0.0, "teacher": 0.0}
    same = count = 0
    with torch.no_grad():
        for batch in batches:
            mask = batch["attention_mask"][:, 1:].bool()
            labels = batch["input_ids"][:, 1:][mask]
            tops = {}
            for name, model in (("student", student), ("teacher", teacher)):
                logits = model(**batch, use_cache=False).logits[:, :-1][mask]
                nll[name] += float(torch.nn.functional.cross_entropy(logits, labels, reduction="sum"))
                tops[name] = logits.argmax(-1)
            same += int((tops["student"] == tops["teacher"]).sum())
            count += int(mask.sum())
    return {"perplexity": round(float(np.exp(nll["student"] / max(count, 1))), 4),
            "teacher_perplexity": round(float(np.exp(nll["teacher"] / max(count, 1))), 4),
            "top1_agreement": round(same / max(count, 1), 5)}
