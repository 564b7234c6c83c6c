"""A sentence-transformers directory (``modules.json``) as one graph: the Transformer module's token
states, its Pooling, any Dense layers and Normalize, computed as sentence-transformers computes them.

``modules.json`` lists the modules in order. llmc export knows four, by their ``type`` (the names
sentence-transformers writes before 5.x, ``sentence_transformers.models.X``, and after, their
module paths): ``Transformer`` (first, its model in the directory or the subdirectory its
``path`` names), ``Pooling`` (``config.json``: one of the mean, cls, max or lasttoken modes, over
the tokens ``attention_mask`` keeps), ``Dense`` (``config.json`` + ``model.safetensors`` or
``pytorch_model.bin``: a linear layer and a ``torch.nn`` activation) and ``Normalize`` (L2). Any
other module is refused in one line naming it and ``modules.json``: its computation would be
missing from the graph.

A directory with ``config_sentence_transformers.json`` naming ``"model_type": "CrossEncoder"``
(or, before sentence-transformers 4, a config.json with ``sbert_ce_default_activation_function``)
is a cross-encoder: a sequence classifier reading a text pair (:func:`is_cross_encoder`), not a
sentence embedding.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from llmc.errors import LlmcError

MODULES_FILE = "modules.json"
ST_CONFIG_FILE = "config_sentence_transformers.json"

# modules.json ``type`` -> the module llmc export builds (before 5.x, then the 5.x+ module paths).
_KNOWN = {
    "sentence_transformers.models.Transformer": "transformer",
    "sentence_transformers.base.modules.transformer.Transformer": "transformer",
    "sentence_transformers.models.Pooling": "pooling",
    "sentence_transformers.sentence_transformer.modules.pooling.Pooling": "pooling",
    "sentence_transformers.models.Dense": "dense",
    "sentence_transformers.base.modules.dense.Dense": "dense",
    "sentence_transformers.models.Normalize": "normalize",
    "sentence_transformers.base.modules.normalize.Normalize": "normalize",
}
# Pooling's config: the pre-5.x boolean keys, and the mode names of 5.x's ``pooling_mode``.
_MODE_KEYS = {
    "pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max",
    "pooling_mode_lasttoken": "lasttoken", "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
}
_MODES = ("mean", "cls", "max", "lasttoken")
_EMBEDDING = "sentence_embedding"
# sentence-transformers' ``transformer_task`` (sentence_bert_config.json) of AutoModel's token states.
_TOKEN_STATES = "feature-extraction"


@dataclasses.dataclass(frozen=True)
class Dense:
    directory: Path
    in_features: int
    out_features: int
    bias: bool
    activation: str  # a torch.nn class name: Tanh, Identity, ...


@dataclasses.dataclass(frozen=True)
class SentenceModules:
    """What ``modules.json`` asks for, read and checked before any weights are loaded."""

    transformer: Path  # the directory of the Transformer module's model
    pooling: str  # one of llmc.spec.task.POOLING_MODES
    pooled: int  # the pooling's size (the token states' width, word_embedding_dimension)
    dimension: int  # the embedding's size: the last Dense's out_features, else the pooling's
    dense: tuple[Dense, ...] = ()
    normalize: bool = False
    max_length: int | None = None  # sentence_bert_config.json's max_seq_length: texts are cut there

    def check_width(self, hidden_size: int | None) -> None:
        """One line when the Transformer's token states are not as wide as the Pooling says."""
        if hidden_size is not None and hidden_size != self.pooled:
            raise LlmcError(
                f"{self.transformer / 'config.json'}: hidden_size {hidden_size} is not the Pooling module's "
                f"word_embedding_dimension {self.pooled}; check the sentence-transformers modules"
            )


def model_folder(directory: Path) -> Path:
    """Where ``directory``'s model (config.json, weights, tokenizer) is: the directory itself, or
    the folder its sentence-transformers Transformer module's ``path`` names when config.json is
    there instead (the older layout: ``0_Transformer/``)."""
    if (directory / "config.json").is_file() or not (directory / MODULES_FILE).is_file():
        return directory
    try:
        modules = json.loads((directory / MODULES_FILE).read_text())
    except (OSError, ValueError):
        return directory  # read_modules says what is wrong with it
    for module in modules if isinstance(modules, list) else []:
        if isinstance(module, dict) and _KNOWN.get(str(module.get("type"))) == "transformer" and module.get("path"):
            folder = directory / str(module["path"])
            return folder if (folder / "config.json").is_file() else directory
    return directory


def is_sentence_transformer(directory: Path, config: dict[str, Any]) -> bool:
    """A sentence-transformers directory (``modules.json`` in it) that is not a cross-encoder."""
    return (directory / MODULES_FILE).is_file() and not is_cross_encoder(directory, config)


def is_cross_encoder(directory: Path, config: dict[str, Any]) -> bool:
    """A sentence-transformers CrossEncoder (a reranker): its ``config_sentence_transformers.json``
    says so (4.x and later), or its config.json carries the pre-4.x activation entry."""
    if config.get("sbert_ce_default_activation_function") is not None:
        return True
    return _json(directory / ST_CONFIG_FILE, default={}).get("model_type") == "CrossEncoder"


# torch.nn activations a CrossEncoder applies to its logits -> llmc's names (llmc.spec.task)
_SCORE_ACTIVATIONS = {"Sigmoid": "sigmoid", "Identity": "identity", "Tanh": "tanh"}


def cross_encoder_activation(config: dict[str, Any], num_labels: int, where: str, directory: Path | None = None) -> str:
    """What sentence-transformers' ``CrossEncoder.predict`` applies to the logits, as it resolves
    it: ``config_sentence_transformers.json``'s ``activation_fn`` in ``directory`` (5.x and later
    save it there), else ``config.json``'s ``sentence_transformers.activation_fn`` (4.x), else its
    ``sbert_ce_default_activation_function`` (before 4), else a sigmoid for one label and none for
    several. One line for an activation llmc does not read."""
    path = _json(directory / ST_CONFIG_FILE, default={}).get("activation_fn") if directory is not None else None
    recorded = config.get("sentence_transformers")
    if path is None and isinstance(recorded, dict):
        path = recorded.get("activation_fn")
    if path is None:
        path = config.get("sbert_ce_default_activation_function")
    if path is None:
        return "sigmoid" if num_labels == 1 else "identity"
    name = str(path).rsplit(".", 1)[-1]
    if not str(path).startswith("torch.") or name not in _SCORE_ACTIVATIONS:
        raise LlmcError(
            f"{where}: the CrossEncoder's activation_fn {path!r} is not one llmc export reads (torch.nn's "
            f"{', '.join(_SCORE_ACTIVATIONS)}); export it with --task text-classification and score its logits yourself"
        )
    return _SCORE_ACTIVATIONS[name]


def read_modules(directory: Path) -> SentenceModules:
    """``modules.json`` and each module's config, checked; one line for what cannot be exported."""
    where = directory / MODULES_FILE
    modules = _json(where)
    if not isinstance(modules, list) or not modules or not all(isinstance(m, dict) for m in modules):
        raise LlmcError(f"{where}: not a list of sentence-transformers modules; check the file")
    kinds = []
    for module in sorted(modules, key=lambda m: m.get("idx", 0)):
        kind = _KNOWN.get(str(module.get("type")))
        if kind is None:
            raise LlmcError(
                f"{where}: module {module.get('type')!r} is one llmc export does not know (it exports "
                "Transformer, Pooling, Dense and Normalize modules); export the token states with --task feature-extraction"
            )
        kinds.append((kind, directory / str(module.get("path") or "")))
    if [k for k, _ in kinds[:2]] != ["transformer", "pooling"]:
        raise LlmcError(f"{where}: a sentence embedding is a Transformer module then a Pooling module; these modules are not")
    max_length = _check_transformer(kinds[0][1] / "sentence_bert_config.json")
    pooling, dimension = _pooling(kinds[1][1] / "config.json")
    dense, normalize = [], False
    for (before, _), (kind, path) in zip(kinds[1:-1], kinds[2:], strict=True):
        if kind == "dense" and not normalize:
            dense.append(_dense(path, dimension if not dense else dense[-1].out_features))
        elif kind == "normalize" and not normalize:
            _plain_io(path / "config.json", {})
            normalize = True
        else:
            raise LlmcError(f"{where}: a {kind} module after a {before} module is an order llmc export does not build")
    last = dense[-1].out_features if dense else dimension
    return SentenceModules(kinds[0][1], pooling, dimension, last, tuple(dense), normalize, max_length)


def _check_transformer(path: Path) -> int | None:
    """The Transformer module's ``max_seq_length`` (None where it names none), after checking it
    computes token states."""
    config = _json(path, default={})
    task = config.get("transformer_task", _TOKEN_STATES)
    if task != _TOKEN_STATES:
        raise LlmcError(
            f"{path}: the Transformer module's transformer_task is {task!r}; a sentence embedding pools token "
            f"states ({_TOKEN_STATES}), which is what llmc export builds"
        )
    length = config.get("max_seq_length")
    return length if isinstance(length, int) and not isinstance(length, bool) and length > 0 else None


def _pooling(path: Path) -> tuple[str, int]:
    config = _json(path)
    mode = config.get("pooling_mode")
    modes = ([mode] if isinstance(mode, str) else list(mode)) if mode is not None else [
        name for key, name in _MODE_KEYS.items() if config.get(key)
    ]
    dimension = config.get("embedding_dimension", config.get("word_embedding_dimension"))
    if len(modes) != 1 or modes[0] not in _MODES:
        raise LlmcError(
            f"{path}: pooling {' + '.join(modes) or 'none'} is not one llmc export builds; it builds one of "
            f"{', '.join(_MODES)}"
        )
    if config.get("include_prompt") is False:
        raise LlmcError(f"{path}: pooling without the prompt's tokens (include_prompt false) needs the prompt's length, "
                        "which the graph does not take; llmc export cannot export it")
    if not isinstance(dimension, int) or dimension <= 0:
        raise LlmcError(f"{path}: no positive embedding dimension (word_embedding_dimension); check the file")
    return modes[0], dimension


def _dense(directory: Path, in_features: int) -> Dense:
    path = directory / "config.json"
    config = _json(path)
    _plain_io(path, config)
    if config.get("use_residual"):
        raise LlmcError(f"{path}: a Dense module with a residual connection is not one llmc export builds")
    activation = str(config.get("activation_function") or "torch.nn.modules.activation.Tanh")
    name = activation.rsplit(".", 1)[-1]
    if not activation.startswith("torch.nn.") or not _is_torch_module(name):
        raise LlmcError(f"{path}: activation {activation!r} is not a torch.nn module; llmc export builds torch.nn ones")
    dense = Dense(directory, int(config.get("in_features", 0)), int(config.get("out_features", 0)),
                  bool(config.get("bias", True)), name)
    if dense.in_features != in_features or dense.out_features <= 0:
        raise LlmcError(f"{path}: in_features {dense.in_features} does not take the {in_features} values before it")
    return dense


def _plain_io(path: Path, config: dict[str, Any]) -> None:
    """Refuse a module reading or writing another feature than the sentence embedding."""
    config = config or _json(path, default={})
    for key in ("module_input_name", "module_output_name"):
        if config.get(key) not in (None, _EMBEDDING):
            raise LlmcError(f"{path}: {key} {config[key]!r}: llmc export builds modules on the sentence embedding only")


def _is_torch_module(name: str) -> bool:
    import torch

    found = getattr(torch.nn, name, None)
    return isinstance(found, type) and issubclass(found, torch.nn.Module)


def _json(path: Path, default: Any = None) -> Any:
    """``path``'s JSON (``default`` when the file is absent and a default is given); a module's
    config (``default`` given, or a ``config.json``) must be an object."""
    if default is not None and not path.is_file():
        return default
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise LlmcError(f"{path}: not a readable JSON file ({str(exc).splitlines()[0]})") from None
    if (default is not None or path.name == "config.json") and not isinstance(data, dict):
        raise LlmcError(f"{path}: holds a JSON {type(data).__name__}, not an object; check the file")
    return data


def sentence_embedding(encoder: Any, modules: SentenceModules) -> Any:
    """A torch module: (input_ids, attention_mask) -> the sentence embedding [batch, dimension]."""
    import torch

    dense = torch.nn.Sequential(*(_dense_layer(d) for d in modules.dense))
    return _module_class()(encoder, modules.pooling, dense, modules.normalize).eval()


def _dense_layer(dense: Dense) -> Any:
    import torch

    linear = torch.nn.Linear(dense.in_features, dense.out_features, bias=dense.bias)
    weights = _weights(dense.directory)
    state = {k.removeprefix("linear."): v for k, v in weights.items() if k.startswith("linear.")}
    try:
        linear.load_state_dict(state)
    except RuntimeError as exc:
        raise LlmcError(f"{dense.directory}: the Dense weights do not fit its config ({str(exc).splitlines()[0]})") from None
    return torch.nn.Sequential(linear, getattr(torch.nn, dense.activation)())


def _weights(directory: Path) -> dict[str, Any]:
    import torch

    if (directory / "model.safetensors").is_file():
        from safetensors.torch import load_file

        return load_file(str(directory / "model.safetensors"))
    if (directory / "pytorch_model.bin").is_file():
        return torch.load(str(directory / "pytorch_model.bin"), map_location="cpu", weights_only=True)
    raise LlmcError(f"{directory}: the Dense module has no model.safetensors or pytorch_model.bin")


def pool(tokens: Any, mask: Any, mode: str) -> Any:
    """sentence-transformers' pooling of ``tokens`` [batch, sequence, hidden] over the positions
    ``mask`` [batch, sequence] keeps (its ``Pooling._forward_padded``, as torch.onnx exports it)."""
    import torch

    weights = mask.unsqueeze(-1).to(tokens.dtype)
    if mode == "mean":
        return (tokens * weights).sum(dim=1) / torch.clamp(weights.sum(dim=1), min=1e-9)
    if mode == "max":
        return tokens.masked_fill(weights == 0, float("-inf")).max(dim=1).values
    hidden = tokens.shape[-1]
    if mode == "cls":  # the first position the mask keeps (left padding too)
        first = mask.to(tokens.dtype).argmax(dim=1)
        return torch.gather(tokens, 1, first.view(-1, 1, 1).expand(-1, 1, hidden)).squeeze(1)
    # lasttoken: the last position the mask keeps; the last position when it keeps none.
    length = tokens.shape[1]
    values, indices = mask.to(tokens.dtype).flip(1).max(dim=1)
    indices = torch.where(values == 0, torch.full_like(indices, length - 1), indices)
    last = (length - indices - 1).view(-1, 1, 1).expand(-1, 1, hidden)
    return torch.gather(tokens * weights, 1, last).squeeze(1)


def _module_class():
    import torch

    class SentenceEmbedding(torch.nn.Module):
        def __init__(self, encoder: Any, pooling: str, dense: Any, normalize: bool) -> None:
            super().__init__()
            self.encoder, self.pooling, self.dense, self.normalize = encoder, pooling, dense, normalize

        def forward(self, input_ids, attention_mask):
            tokens = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            embedding = self.dense(pool(tokens, attention_mask, self.pooling))
            return torch.nn.functional.normalize(embedding, p=2, dim=-1) if self.normalize else embedding

    return SentenceEmbedding
