"""Distilling a pruned student against its original (the teacher) on unlabeled text, in a CPU
time budget with progress and an ETA.

Encoders: the student's last hidden states are pulled to the teacher's at every real token
(mean squared error) and its mean-pooled sentence embeddings to the teacher's (1 - cosine); with
a layer map (the cut kept whole layers) every student layer's output is also pulled to the output
of the teacher layer it was cut from. Decoders: the student's next-token distribution is pulled
to the teacher's at every real token (KL divergence of the logits) and its last hidden states to
the teacher's (mean squared error). Dropout stays off (the student runs in eval mode; gradients
flow all the same). Encoders see half their steps on variants of the text the teacher labels
anew (:data:`AUGMENTATIONS`: tokens replaced by others of the batch, tokens masked, a span
shuffled, tokens replaced from the whole vocabulary), drawn in turn. With 2:4 masks the pruned
weights are re-zeroed after every step.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from llmc.compression.augment import replace_tokens, variant

__all__ = ["Signal", "agreement", "distill", "pooled", "replace_tokens"]

# Peak learning rates, decayed linearly to a tenth over the time budget, as measured. Encoders:
# MiniLM with 3/4 of its FFN neurons removed, 2 minutes: held-out cosine 0.891 at 5e-5, 0.908 at
# 2e-4, 0.920 at 5e-4, 0.912 at 1e-3. Decoders: SmolLM2 (a quarter of the FFN and a third of the
# heads removed), 1.5 minutes: perplexity 406 at 5e-5, 166 at 2e-4, 162 at 6e-4.
LEARNING_RATE = {"encoder": 5e-4, "decoder": 2e-4}
# Encoders that start close to the original need smaller steps. MiniLM with a quarter of its FFN
# removed (pruned and refitted: held-out loss 0.0251), 2 minutes: 0.0395 at 5e-4 (worse than
# before training), 0.0206 at 1e-4, 0.0213 at 3e-5; half its FFN and a layer removed (0.126):
# 0.0660 at 5e-4, 0.0669 at 1e-4. So an encoder's peak scales with its held-out loss before
# training: the full rate at FAR_LOSS and above, down to a fifth of it.
FAR_LOSS = 0.1
PROGRESS_SECONDS = 15.0
# Encoders: the text is small next to the steps a budget runs (1,700 sentences are seen ~50 times
# in 20 minutes), so half the steps see a variant the teacher labels anew.
AUGMENT = 0.5
AUGMENTATIONS = ("replace", "mask", "shuffle", "vocabulary")  # llmc.compression.augment


@dataclasses.dataclass(frozen=True)
class Signal:
    """What the student is trained on besides the text itself: the variants drawn for augmented
    steps (:data:`AUGMENTATIONS`; "mask" needs ``mask_id``, "vocabulary" ``vocabulary``) and, for encoders, the teacher layer
    each student layer was cut from (None: only the last hidden states are matched)."""

    augmentations: tuple[str, ...] = ("replace",)
    mask_id: int | None = None
    layer_map: tuple[int, ...] | None = None
    vocabulary: Any = None  # numpy ids for "vocabulary" (llmc.compression.augment.ordinary_ids)


def pooled(hidden: Any, mask: Any) -> Any:
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)


def _teacher_targets(teacher: Any, batch: dict[str, Any], layer_map: tuple[int, ...] | None) -> tuple[Any, Any]:
    """The teacher's last hidden states and, with a layer map, its mapped layers' outputs (kept
    in float16: every batch's targets are held for the whole run)."""
    import torch

    with torch.no_grad():
        out = teacher(**batch, output_hidden_states=layer_map is not None)
    inner = None if layer_map is None else tuple(out.hidden_states[i + 1].half() for i in layer_map[:-1])
    return out.last_hidden_state, inner


def _encoder_loss(student: Any, target: tuple[Any, Any], batch: dict[str, Any]) -> Any:
    import torch

    last, inner = target
    out = student(**batch, output_hidden_states=inner is not None)
    hidden = out.last_hidden_state
    real = batch["attention_mask"].bool()
    cosine = torch.nn.functional.cosine_similarity(pooled(hidden, batch["attention_mask"]),
                                                   pooled(last, batch["attention_mask"]))
    loss = torch.nn.functional.mse_loss(hidden[real], last[real]) + (1.0 - cosine).mean()
    if inner:  # every student layer but the last against the teacher layer it was cut from
        layers = [torch.nn.functional.mse_loss(out.hidden_states[j + 1][real], want[real].float())
                  for j, want in enumerate(inner)]
        loss = loss + torch.stack(layers).mean()
    return loss


def _decoder_loss(student: Any, teacher: Any, batch: dict[str, Any]) -> Any:
    import torch

    with torch.no_grad():
        want = teacher(**batch, use_cache=False, output_hidden_states=True)
    got = student(**batch, use_cache=False, output_hidden_states=True)
    real = batch["attention_mask"].bool()
    kl = torch.nn.functional.kl_div(torch.log_softmax(got.logits[real], -1), torch.log_softmax(want.logits[real], -1),
                                    log_target=True, reduction="batchmean")
    return kl + torch.nn.functional.mse_loss(got.hidden_states[-1][real], want.hidden_states[-1][real])


def peak_rate(decoder: bool, start_loss: float | None = None) -> float:
    """The peak learning rate of a student whose held-out loss before training
    (:class:`llmc.compression.budget.Budget`'s) is ``start_loss`` (None: not known)."""
    rate = LEARNING_RATE["decoder" if decoder else "encoder"]
    if decoder or start_loss is None or not math.isfinite(start_loss):
        return rate
    return rate * min(1.0, max(0.2, start_loss / FAR_LOSS))


def distill(
    student: Any, teacher: Any, batches: list[dict[str, Any]], minutes: float, log: Callable[[str], None],
    *, decoder: bool = False, after_step: Callable[[], None] | None = None, seed: int = 0,
    signal: Signal | None = None, start_loss: float | None = None,
) -> dict[str, Any]:
    """Train ``student`` in place for at most ``minutes``; what it did. ``start_loss``: its
    held-out loss now, which sets an encoder's learning rate (:func:`peak_rate`)."""
    import torch

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    teacher.eval()
    student.eval()
    if decoder:  # logits of every batch would not fit: the teacher runs beside the student
        loss_of = lambda index: _decoder_loss(student, teacher, batches[index])  # noqa: E731
    else:
        loss_of = _encoder_steps(student, teacher, batches, signal or Signal(), rng)
    peak = peak_rate(decoder, start_loss)
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
    return {"steps": steps, "seconds": round(time.perf_counter() - start, 1), "peak_lr": peak,
            "loss_first": round(losses[0], 5) if losses else None, "loss_last": round(float(np.mean(losses[-20:])), 5)
            if losses else None}


def _encoder_steps(student: Any, teacher: Any, batches: list[dict[str, Any]], signal: Signal,
                   rng: np.random.Generator) -> Callable[[int], Any]:
    """The loss of one encoder step on batch ``index``: the batch itself, or (:data:`AUGMENT` of
    the steps) one of its variants, the kinds in turn, labelled by the teacher anew."""
    targets = [_teacher_targets(teacher, batch, signal.layer_map) for batch in batches]
    drawn = [0]

    def loss_of(index: int) -> Any:
        if not signal.augmentations or rng.random() >= AUGMENT:
            return _encoder_loss(student, targets[index], batches[index])
        kind = signal.augmentations[drawn[0] % len(signal.augmentations)]
        drawn[0] += 1
        batch = variant(batches[index], kind, rng, signal.mask_id, signal.vocabulary)
        return _encoder_loss(student, _teacher_targets(teacher, batch, signal.layer_map), batch)

    return loss_of


def embeddings(model: Any, batches: list[dict[str, Any]]) -> list[Any]:
    """An encoder's mean-pooled embeddings of each batch (the ``reference`` of :func:`agreement`)."""
    import torch

    with torch.no_grad():
        return [pooled(model(**batch).last_hidden_state, batch["attention_mask"]) for batch in batches]


def agreement(student: Any, teacher: Any, batches: list[dict[str, Any]], decoder: bool = False,
              reference: list[Any] | None = None) -> dict[str, float]:
    """Held-out agreement. Encoders: mean-pooled embedding cosine (mean, worst sentence), against
    ``reference`` (the teacher's :func:`embeddings` of ``batches``, computed here when None).
    Decoders: perplexity of student and teacher, and how often their top-1 next tokens agree."""
    import torch

    if decoder:
        return _decoder_agreement(student, teacher, batches)
    wanted = embeddings(teacher, batches) if reference is None else reference
    cosines = [torch.nn.functional.cosine_similarity(got, want)
               for got, want in zip(embeddings(student, batches), wanted, strict=True)]
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
