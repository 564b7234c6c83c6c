"""The encoder task routes on the task API (``llmc.tasks``): what each takes and gives.

* ``POST /v1/embeddings`` (OpenAI's): ``input`` (a string or a list of at most 2048 strings; token
  ids are refused), ``model``, ``encoding_format`` (``float`` or ``base64``: the float32 vector's
  little-endian bytes), ``dimensions`` (only the model's own), ``user`` (ignored) ->
  ``{"object": "list", "data": [{"object": "embedding", "index", "embedding"}], "model",
  "usage": {"prompt_tokens", "total_tokens"}}``; tokens counted as the model sees them (special
  tokens included, after truncation).
* ``POST /rerank`` (text-embeddings-inference's): ``{query, texts, raw_scores?, return_text?,
  truncate?}`` -> ``[{index, score, text?}]`` most relevant first (``runner.rerank``'s scores;
  ``raw_scores``: a cross-encoder's logit).
* ``POST /embed`` (text-embeddings-inference's): ``{inputs: str | [str], normalize?: true,
  truncate?: false}`` -> ``[[float, ...], ...]`` (one vector per text, a list even for one
  string), on the same batcher as ``/v1/embeddings``. ``normalize``: unit vectors (a model whose
  graph normalises gives nothing else: ``false`` is refused there, 422); ``truncate: false`` (the
  default, as in TEI): a text longer than the model's ``max_length`` tokens (special tokens
  included) is refused, 413 ``Validation``, "`inputs` must have less than N tokens. Given: M"
  (TEI's words) instead of being cut; ``truncate: true`` cuts it.
* ``POST /predict`` (TEI's; ``/classify`` too): ``inputs`` a string, a pair ``[a, b]`` (or
  ``[a]``), or a batch ``[[a], [a, b], ...]``; ``raw_scores`` -> ``[{label, score}]`` best first
  (``runner.classify``'s), a list of those for a batch.

Elsewhere texts are truncated to the model's length, as the task API does (``/v1/embeddings``,
and ``truncate`` on ``/rerank`` and ``/predict`` does not turn that into an error). Each
``*_batch`` function answers a batch of concurrent requests (``llmc.serving.batcher``) in one pass
over the task API and splits the answers back; a request's answer equals the task API's for its
texts alone (up to float rounding between batch shapes).
"""

from __future__ import annotations

import base64
import threading
from typing import Any

import numpy as np

from llmc.errors import LlmcError
from llmc.serving.errors import EMPTY, TOO_LARGE, UNSUPPORTED, BadRequest
from llmc.serving.openai_params import token_ids

MAX_INPUTS = 2048  # OpenAI's limit on inputs in one embeddings request
_TOKENIZER = threading.Lock()  # the task model's tokenizer sets its truncation before each encode


def _texts(value: Any, field: str, max_items: int = MAX_INPUTS) -> list[str]:
    """A string or a non-empty list of strings as a list (token ids refused by name)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(_token_ids(v) or isinstance(v, list) for v in value) and (
        _token_ids(value) or all(_token_ids(v) for v in value)
    ):
        raise BadRequest(f'"{field}" as token ids is not supported by this server; send text (a string or a list '
                         "of strings)", param=field)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BadRequest(f'"{field}" must be a string or a list of strings', param=field)
    if not value:
        raise BadRequest(f'"{field}" is an empty list; send at least one text', EMPTY, param=field)
    if len(value) > max_items:
        raise BadRequest(f'"{field}" holds {len(value)} texts; at most {max_items} a request', TOO_LARGE, param=field)
    return value


def _token_ids(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) or token_ids(value)


def _flag(body: dict[str, Any], key: str, default: bool = False) -> bool:
    value = body.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise BadRequest(f'"{key}" must be true or false', param=key)
    return value


def _object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    return body


def require(task: Any, verb: str, *tasks: Any) -> None:
    """The route's task on this model, or a :class:`BadRequest` (unsupported) saying what it can do."""
    if task is None:
        raise BadRequest(f"this artifact is a decoder: it cannot {verb} (POST /v1/completions)", UNSUPPORTED)
    try:
        task.require(verb, *tasks)
    except LlmcError as exc:
        raise BadRequest(str(exc), UNSUPPORTED) from None


def parse_embeddings(body: Any, dimension: int | None) -> tuple[list[str], bool]:
    """(texts, base64?) of an embeddings request (its ``model`` is checked by the app)."""
    body = _object(body)
    if "input" not in body:
        raise BadRequest('"input" is required: a string or a list of strings', param="input")
    texts = _texts(body["input"], "input")
    empty = next((i for i, text in enumerate(texts) if not text), None)
    if empty is not None:  # OpenAI's rule for /v1/embeddings (text-embeddings-inference's routes take "")
        where = '"input"' if isinstance(body["input"], str) else f'"input[{empty}]"'
        raise BadRequest(f"{where} is an empty string; OpenAI's embeddings take non-empty text", param="input")
    encoding = body.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise BadRequest(f'"encoding_format" must be "float" or "base64", not {encoding!r}', param="encoding_format")
    wanted = body.get("dimensions")
    if wanted is not None:
        if isinstance(wanted, bool) or not isinstance(wanted, int) or wanted < 1:
            raise BadRequest('"dimensions" must be a positive integer', param="dimensions")
        if dimension is not None and wanted != dimension:
            raise BadRequest(f'"dimensions": this model gives {dimension}-dimensional embeddings and does not '
                             f"shorten them; leave it out or send {dimension}", param="dimensions")
    return texts, encoding == "base64"


def embed_batch(task: Any, items: list[Any]) -> list[Any]:
    """Per request, its [n, D] vectors and its token count, from one ``embed`` over all the
    requests' texts. A request is its list of texts (cut to the model's length), or ``(texts,
    truncate)``: with ``truncate`` false, a text longer than the model's length makes that
    request's answer a :class:`BadRequest` (413) and its texts are not run."""
    from llmc.tasks.embed import embed_encodings

    requests = [item if isinstance(item, tuple) else (item, True) for item in items]
    texts = [text for item, _ in requests for text in item]
    with _TOKENIZER:
        encodings = task.tokenizer.encode(texts)
        bounds = np.cumsum([0, *(len(item) for item, _ in requests)])
        refusals = [None if truncate else _too_long(task, texts[b:e], encodings[b:e])
                    for (_, truncate), b, e in zip(requests, bounds[:-1], bounds[1:], strict=True)]
    kept = [i for i, refusal in enumerate(refusals) if refusal is None]
    runs = [encodings[k] for i in kept for k in range(bounds[i], bounds[i + 1])]
    vectors = embed_encodings(task, runs)
    out: list[Any] = list(refusals)
    start = 0
    for i in kept:
        count = bounds[i + 1] - bounds[i]
        out[i] = (vectors[start : start + count], sum(len(encodings[k].ids) for k in range(bounds[i], bounds[i + 1])))
        start += count
    return out


def _too_long(task: Any, texts: list[str], encodings: list[Any]) -> BadRequest | None:
    """TEI's refusal of the first text the tokenizer cut (its length counted uncut), or None.
    Called with the tokenizer lock held; the next ``encode`` sets the truncation again."""
    limit = task.tokenizer.max_length
    cut = [text for text, encoding in zip(texts, encodings, strict=True) if encoding.overflowing]
    if limit is None or not cut:
        return None
    raw = task.tokenizer.tokenizer
    raw.no_truncation()
    given = len(raw.encode(cut[0]).ids)
    return BadRequest(f"`inputs` must have less than {limit} tokens. Given: {given}", TOO_LARGE, param="inputs")


def parse_embed(body: Any, graph_normalizes: bool) -> tuple[list[str], bool, bool]:
    """(texts, normalize, truncate) of a TEI ``/embed`` request."""
    body = _object(body)
    if "inputs" not in body:
        raise BadRequest('"inputs" is required: a string or a list of strings', param="inputs")
    texts = _texts(body["inputs"], "inputs")
    normalize, truncate = _flag(body, "normalize", True), _flag(body, "truncate")
    if not normalize and graph_normalizes:
        raise BadRequest('"normalize": false: this model normalises its embeddings in its graph (its '
                         "sentence-transformers Normalize module), so only unit vectors are available", param="normalize")
    return texts, normalize, truncate


def embed_json(vectors: np.ndarray, normalize: bool) -> list[list[float]]:
    """TEI's ``/embed`` answer: the vectors (L2-normalised with ``normalize``) as lists."""
    vectors = np.asarray(vectors, dtype=np.float32)
    if normalize:
        vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=-1, keepdims=True), 1e-12)
    return vectors.tolist()


def embeddings_json(vectors: np.ndarray, tokens: int, model: str, as_base64: bool) -> dict[str, Any]:
    def encoded(vector: np.ndarray) -> Any:
        if as_base64:
            return base64.b64encode(np.ascontiguousarray(vector, dtype="<f4").tobytes()).decode("ascii")
        return vector.astype(np.float32).tolist()

    data = [{"object": "embedding", "index": i, "embedding": encoded(v)} for i, v in enumerate(vectors)]
    return {"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


def parse_rerank(body: Any) -> tuple[str, list[str], bool, bool]:
    """(query, texts, raw_scores, return_text) of a TEI rerank request."""
    body = _object(body)
    if not isinstance(body.get("query"), str):
        raise BadRequest('"query" must be a string', param="query")
    if not isinstance(body.get("texts"), list):
        raise BadRequest('"texts" must be a list of strings', param="texts")
    texts = _texts(body["texts"], "texts")
    _flag(body, "truncate")
    return body["query"], texts, _flag(body, "raw_scores"), _flag(body, "return_text")


def rerank_batch(task: Any, items: list[tuple[str, list[str], bool]]) -> list[list[tuple[int, float]]]:
    """Per (query, texts, raw) request, ``rerank``'s (index, score) list, from one pass per
    ``raw`` setting."""
    from llmc.tasks.classify import rerank_many

    out: list[Any] = [None] * len(items)
    for raw in (False, True):
        members = [i for i, item in enumerate(items) if item[2] is raw]
        if members:
            with _TOKENIZER:
                ranked = rerank_many(task, [items[i][:2] for i in members], raw=raw)
            for i, answer in zip(members, ranked, strict=True):
                out[i] = answer
    return out


def rerank_json(ranked: list[tuple[int, float]], texts: list[str], return_text: bool) -> list[dict[str, Any]]:
    return [{"index": i, "score": score, **({"text": texts[i]} if return_text else {})} for i, score in ranked]


def parse_predict(body: Any) -> tuple[list[tuple[str, str | None]], bool, bool]:
    """(sequences as (text, pair or None), batch?, raw_scores) of a TEI predict request."""
    body = _object(body)
    inputs = body.get("inputs")
    shape = '"inputs" must be a string, a pair [string, string] or a batch [[string], [string, string], ...]'
    if isinstance(inputs, str):
        sequences, batch = [(inputs, None)], False
    elif isinstance(inputs, list) and inputs and all(isinstance(v, str) for v in inputs):
        if len(inputs) > 2:
            raise BadRequest(shape + " (a list of strings is one text or one pair)", param="inputs")
        sequences, batch = [(inputs[0], inputs[1] if len(inputs) == 2 else None)], False
    elif isinstance(inputs, list) and inputs and all(
        isinstance(v, list) and len(v) in (1, 2) and all(isinstance(s, str) for s in v) for v in inputs
    ):
        if len(inputs) > MAX_INPUTS:
            raise BadRequest(f'"inputs" holds {len(inputs)} sequences; at most {MAX_INPUTS} a request', TOO_LARGE)
        sequences, batch = [(v[0], v[1] if len(v) == 2 else None) for v in inputs], True
    elif inputs == []:
        raise BadRequest('"inputs" is an empty batch', EMPTY, param="inputs")
    else:
        raise BadRequest(shape, param="inputs")
    _flag(body, "truncate")
    return sequences, batch, _flag(body, "raw_scores")


def predict_batch(task: Any, items: list[tuple[list[tuple[str, str | None]], bool]]) -> list[list[list[tuple[str, float]]]]:
    """Per (sequences, raw) request, ``classify``'s labels for each sequence: one pass per kind
    (single texts, pairs) and ``raw`` setting over all the requests' sequences."""
    from llmc.tasks.classify import classify

    flat = [(n, k, seq) for n, (sequences, _) in enumerate(items) for k, seq in enumerate(sequences)]
    out: list[list[Any]] = [[None] * len(sequences) for sequences, _ in items]
    for raw in (False, True):
        for paired in (False, True):
            group = [(n, k, seq) for n, k, seq in flat if items[n][1] is raw and (seq[1] is not None) is paired]
            if not group:
                continue
            texts = [seq[0] for _, _, seq in group]
            pairs = [seq[1] for _, _, seq in group] if paired else None
            with _TOKENIZER:
                labelled = classify(task, texts, pairs, raw=raw)
            for (n, k, _), labels in zip(group, labelled, strict=True):
                out[n][k] = labels
    return out


def predict_json(labelled: list[list[tuple[str, float]]], batch: bool) -> Any:
    answers = [[{"label": label, "score": score} for label, score in labels] for labels in labelled]
    return answers if batch else answers[0]
