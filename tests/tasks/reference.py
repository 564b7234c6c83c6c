"""What transformers itself gives on the same tiny models: the references the task runtime is
judged against (tests only)."""

from __future__ import annotations

from typing import Any

import numpy as np

from tests.tasks.models import TaskModel, mean_pool


def hf_tokenizer(model: TaskModel) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model.source.parent))


def _inputs(model: TaskModel, encoded: Any) -> dict[str, Any]:
    names = ["input_ids", "attention_mask"] + (["token_type_ids"] if model.token_type_ids else [])
    return {name: encoded[name] for name in names}


def torch_embedding(model: TaskModel, texts: list[str], normalize: bool) -> np.ndarray:
    """The torch model's mean-pooled (and optionally normalised) states, one text at a time."""
    import torch

    tokenizer = hf_tokenizer(model)
    vectors = []
    for text in texts:
        encoded = tokenizer(text, return_tensors="pt", truncation=True)
        with torch.no_grad():
            hidden = model.torch_model(**_inputs(model, encoded)).last_hidden_state
        vector = mean_pool(hidden, encoded["attention_mask"])
        if normalize:
            vector = torch.nn.functional.normalize(vector, dim=-1)
        vectors.append(vector[0].numpy())
    return np.stack(vectors)


def torch_logits(model: TaskModel, texts: list[str], pairs: list[str] | None = None) -> np.ndarray:
    """A sequence-classification model's logits, one text (pair) at a time."""
    import torch

    tokenizer = hf_tokenizer(model)
    rows = []
    for i, text in enumerate(texts):
        encoded = tokenizer(text, pairs[i] if pairs else None, return_tensors="pt", truncation=True)
        with torch.no_grad():
            rows.append(model.torch_model(**_inputs(model, encoded)).logits[0].numpy())
    return np.stack(rows)


def pipeline(task: str, model: TaskModel, **options: Any) -> Any:
    from transformers import pipeline as make

    return make(task, model=model.torch_model, tokenizer=hf_tokenizer(model), device="cpu", **options)


def qa_answer(model: TaskModel, question: str, context: str, max_answer_len: int = 15) -> dict[str, Any]:
    """transformers' question-answering pipeline (removed from transformers 5; its steps rebuilt
    here from the tokenizer and ``select_starts_ends``, which transformers 5 still has):
    windows of min(model_max_length, 384) tokens with a stride of min(window // 2, 128),
    p_mask = not the context but [CLS], best span per window, word-aligned characters, and spans
    of the same text (case aside) one answer whose score is their sum (its ``get_answer``)."""
    import torch
    from transformers.pipelines.document_question_answering import select_starts_ends

    tokenizer = hf_tokenizer(model)
    window = min(tokenizer.model_max_length, 384)
    encoded = tokenizer(
        question, context, truncation="only_second", max_length=window, stride=min(window // 2, 128),
        return_overflowing_tokens=True, return_offsets_mapping=True, return_token_type_ids=True,
        padding=True, return_tensors="np",
    )
    answers = []
    for span in range(len(encoded["input_ids"])):
        ids = encoded["input_ids"][span]
        p_mask = np.array([sequence != 1 for sequence in encoded.sequence_ids(span)])
        p_mask[ids == tokenizer.cls_token_id] = False
        feeds = {name: torch.tensor(encoded[name][span : span + 1]) for name in ("input_ids", "attention_mask",
                 "token_type_ids")}
        with torch.no_grad():
            out = model.torch_model(**feeds)
        starts, ends, scores, _ = select_starts_ends(
            out.start_logits.numpy(), out.end_logits.numpy(), p_mask.astype(int)[None],
            encoded["attention_mask"][span : span + 1], max_answer_len=max_answer_len,
        )
        enc = encoded.encodings[span]
        for s, e, score in zip(starts, ends, scores, strict=True):
            start = enc.word_to_chars(enc.token_to_word(s), sequence_index=1)[0]
            end = enc.word_to_chars(enc.token_to_word(e), sequence_index=1)[1]
            same = next((a for a in answers if a["answer"].lower() == context[start:end].lower()), None)
            if same is not None:
                same["score"] += float(score)
            else:
                answers.append({"score": float(score), "start": start, "end": end, "answer": context[start:end]})
    return sorted(answers, key=lambda a: a["score"], reverse=True)[0]
