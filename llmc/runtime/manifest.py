"""The artifact's ``manifest.json``, typed: :class:`Manifest`, with one writer
(:func:`write_manifest`) and one reader (:func:`read_manifest`).

The sections llmc's code reads are dataclasses (``source``, ``artifact``, ``session``, ``nodes``,
``shapes``, ``tokenizer``, ``gqa``, ``cache``); the report sections (``passes``, ``memory``,
``verification``, ``padding``, ``engine``...) stay the JSON objects and lists their producers
write, and each precision's section stays an object under its ``manifest_section`` name
(``reports``: precisions can be registered from outside llmc). :meth:`Manifest.to_dict` writes
the JSON llmc has always written, ``schema_version`` first; :meth:`Manifest.from_dict` checks
every section's type and refuses, in one line, a manifest of another schema (or of none: the
artifacts built before it was recorded), which must be rebuilt.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import re
from pathlib import Path
from typing import Any, Callable, Iterator

from llmc.errors import LlmcError, first_line
from llmc.model.files import MANIFEST_FILE, MODEL_FILE, PLAN_FILE
from llmc.runtime.integrity import REBUILD
from llmc.spec.task import TaskSpec

SCHEMA_VERSION = 1

_SHA256 = re.compile(r"[0-9a-f]{64}")
Refuse = Callable[[str], LlmcError]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _counts(value: Any) -> bool:
    return isinstance(value, dict) and all(_is_int(v) for v in value.values())


def _objects(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, dict) for v in value)


def _object(value: Any) -> bool:
    return isinstance(value, dict)


def _need(ok: bool, refuse: Refuse, what: str) -> None:
    if not ok:
        raise refuse(what)


def _section(data: dict[str, Any], key: str, refuse: Refuse, fields: str) -> dict[str, Any]:
    section = data.get(key)
    _need(isinstance(section, dict), refuse, f"'{key}' must be an object with {fields}")
    return section


@dataclasses.dataclass
class Source:
    """The source model: its file (None for an in-memory model) and the sha256 of its bytes."""

    path: str | None
    sha256: str

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "sha256": self.sha256}

    @classmethod
    def from_dict(cls, data: dict[str, Any], refuse: Refuse) -> Source:
        section = _section(data, "source", refuse, "'path' and 'sha256'")
        path, digest = section.get("path"), section.get("sha256")
        _need((path is None or isinstance(path, str)) and isinstance(digest, str), refuse,
              "'source' must be an object with 'path' (text or null) and 'sha256' (text)")
        return cls(path, digest)


@dataclasses.dataclass
class ArtifactFiles:
    """The manifest's ``artifact``: the model's files, and the sha256 of every file of the
    artifact (the integrity contract, ``llmc.runtime.integrity``)."""

    files: list[str]
    model_sha256: str | None  # informative: ``sha256`` is what binds the files
    external_data: bool
    sha256: dict[str, str] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"files": self.files}
        if self.model_sha256 is not None:
            out["model_sha256"] = self.model_sha256
        return {**out, "external_data": self.external_data, "sha256": self.sha256}

    @classmethod
    def from_dict(cls, data: dict[str, Any], refuse: Refuse) -> ArtifactFiles:
        section = data.get("artifact")
        _need(isinstance(section, dict), refuse, "the 'artifact' section is missing")
        hashes = section.get("sha256")
        _need(isinstance(hashes, dict) and bool(hashes), refuse,
              "'artifact.sha256' (the hash of every file) is missing; artifacts built before llmc recorded it "
              "cannot be checked")
        for name, digest in hashes.items():
            _need(_plain_name(name) and isinstance(digest, str) and bool(_SHA256.fullmatch(digest)), refuse,
                  f"'artifact.sha256' has a bad entry {_quoted(name)}")
        files = section.get("files")
        _need(_strings(files) and MODEL_FILE in files and all(f in hashes for f in files), refuse,
              "'artifact.files' must list model.onnx and files hashed in 'artifact.sha256'")
        model, external = section.get("model_sha256"), section.get("external_data")
        _need(model is None or isinstance(model, str), refuse, "'artifact.model_sha256' must be text")
        _need(isinstance(external, bool), refuse, "'artifact.external_data' must be true or false")
        return cls(files, model, external, hashes)


@dataclasses.dataclass
class Session:
    """How ``llmc.load`` opens the model: ONNX Runtime providers and the session options it
    re-applies (``llmc.runtime.ort.SessionConfig``), and what creating it took at build time."""

    providers: list[str]
    options: dict[str, Any]
    create_seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {"providers": self.providers, "options": self.options, "create_seconds": self.create_seconds}

    @classmethod
    def from_dict(cls, data: dict[str, Any], refuse: Refuse) -> Session:
        what = "'session' must be an object with an 'options' object, 'providers' and 'create_seconds'"
        section = data.get("session")
        _need(isinstance(section, dict) and isinstance(section.get("options"), dict), refuse, what)
        _need(_strings(section.get("providers")) and _is_number(section.get("create_seconds")), refuse, what)
        return cls(section["providers"], section["options"], section["create_seconds"])


@dataclasses.dataclass
class Nodes:
    """Node counts of the source and the artifact."""

    before: int
    after: int

    def to_dict(self) -> dict[str, Any]:
        return {"before": self.before, "after": self.after}

    @classmethod
    def from_dict(cls, data: dict[str, Any], refuse: Refuse) -> Nodes:
        section = _section(data, "nodes", refuse, "'before' and 'after' counts")
        _need(_is_int(section.get("before")) and _is_int(section.get("after")), refuse,
              "'nodes' must be an object with 'before' and 'after' counts")
        return cls(section["before"], section["after"])


@dataclasses.dataclass
class Shapes:
    """The verification inputs' shapes, and the symbolic dims the build assumed."""

    inputs: dict[str, list[int]]
    assumed: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        return {"inputs": self.inputs, "assumed": self.assumed}

    @classmethod
    def from_dict(cls, data: dict[str, Any], refuse: Refuse) -> Shapes:
        what = "'inputs' and 'assumed' objects"
        section = _section(data, "shapes", refuse, what)
        _need(_object(section.get("inputs")) and _object(section.get("assumed")), refuse,
              f"'shapes' must be an object with {what}")
        return cls(section["inputs"], section["assumed"])


@dataclasses.dataclass
class Tokenizer:
    """The tokenizer files and generation config carried from beside the source model."""

    files: list[str]
    generation_config: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"files": self.files, "generation_config": self.generation_config}

    @classmethod
    def from_dict(cls, section: Any, refuse: Refuse) -> Tokenizer:
        config = section.get("generation_config") if isinstance(section, dict) else None
        _need(isinstance(section, dict) and _strings(section.get("files")) and (config is None or isinstance(config, str)),
              refuse, "'tokenizer' must be an object with 'files' and 'generation_config'")
        return cls(section["files"], config)


@dataclasses.dataclass
class Gqa:
    """GroupQueryAttention nodes, how many take the padding from ``attention_mask``
    (``llmc.passes.fusion.gqa``) and how many rotate by mask column themselves
    (``llmc.passes.fusion.gqa_rotary``: ``position_ids`` is not read, a left-padded row's keys are
    cached rotated by column); the generation runtime reads it."""

    nodes: int
    padding_from_attention_mask: int
    rotary_inside: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "nodes": self.nodes, "padding_from_attention_mask": self.padding_from_attention_mask,
            "rotary_inside": self.rotary_inside,
        }

    @classmethod
    def from_dict(cls, section: Any, refuse: Refuse) -> Gqa:
        _need(isinstance(section, dict) and _is_int(section.get("nodes"))
              and _is_int(section.get("padding_from_attention_mask")), refuse,
              "'gqa' must be an object with 'nodes' and 'padding_from_attention_mask' counts")
        rotating = section.get("rotary_inside", 0)  # absent in artifacts built before it existed
        _need(_is_int(rotating), refuse, "'gqa.rotary_inside' must be a count")
        return cls(section["nodes"], section["padding_from_attention_mask"], rotating)


@dataclasses.dataclass
class Cache:
    """The build cache: whether the artifact was copied from it, its key, and (on a hit) how
    long the copy took."""

    hit: bool
    key: str
    seconds: float | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"hit": self.hit, "key": self.key}
        return out if self.seconds is None else {**out, "seconds": self.seconds}

    @classmethod
    def from_dict(cls, section: Any, refuse: Refuse) -> Cache:
        seconds = section.get("seconds") if isinstance(section, dict) else None
        _need(isinstance(section, dict) and isinstance(section.get("hit"), bool) and isinstance(section.get("key"), str)
              and (seconds is None or _is_number(seconds)), refuse,
              "'cache' must be an object with 'hit', 'key' and 'seconds'")
        return cls(section["hit"], section["key"], seconds)


# The sections kept as the JSON they are: key -> (check, what it must be).
_PLAIN: dict[str, tuple[Callable[[Any], bool], str]] = {
    "llmc_version": (lambda v: isinstance(v, str), "a string"),
    "pipeline": (lambda v: isinstance(v, str), "a string"),
    "passes": (_objects, "a list of objects"),
    "rewrites": (_counts, "an object of counts"),
    "fusions": (_counts, "an object of counts"),
    "fused_ops": (_counts, "an object of counts"),
    "not_fused": (_objects, "a list of objects"),
    "fusion_families": (_object, "an object"),
    "compile_seconds": (_is_number, "a number"),
    "validity": (lambda v: v is None or isinstance(v, dict), "an object or null"),
    "memory": (_object, "an object"),
    "verification": (_object, "an object"),
    "versions": (_object, "an object"),
}
_OPTIONAL_PLAIN = ("padding", "sparsity", "engine", "task", "compression")  # objects when present
_TYPED = ("source", "nodes", "shapes", "artifact", "session", "gqa", "tokenizer", "cache")
_KNOWN = frozenset({"schema_version", "target", "precision", *_PLAIN, *_OPTIONAL_PLAIN, *_TYPED})


@dataclasses.dataclass
class Manifest:
    """``manifest.json``: what a build made, how it was checked, and how to run it."""

    llmc_version: str
    source: Source
    target: str
    precision: str
    pipeline: str
    passes: list[dict[str, Any]]  # llmc.passes.instruments: one record per pass run
    rewrites: dict[str, int]
    fusions: dict[str, int]  # fused ops this build created, by op type
    fused_ops: dict[str, int]  # fused ops in the artifact
    not_fused: list[dict[str, Any]]
    fusion_families: dict[str, Any]
    nodes: Nodes
    compile_seconds: float
    validity: dict[str, Any] | None
    memory: dict[str, Any]
    shapes: Shapes
    verification: dict[str, Any]
    artifact: ArtifactFiles
    versions: dict[str, str]
    session: Session
    padding: dict[str, Any] | None = None  # llmc.runtime.padding.probe
    gqa: Gqa | None = None
    reports: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)  # by manifest_section
    sparsity: dict[str, Any] | None = None
    engine: dict[str, Any] | None = None  # the target's finishing step (trt: the signed plan)
    tokenizer: Tokenizer | None = None
    cache: Cache | None = None
    task: dict[str, Any] | None = None  # llmc.spec.task.TaskSpec.to_dict() of the model's llmc.task metadata
    compression: dict[str, Any] | None = None  # llmc compress's record (its budget and figures), when it made the model

    def task_spec(self) -> TaskSpec | None:
        """The model's task (:mod:`llmc.spec.task`), None for a model exported without one."""
        return None if self.task is None else TaskSpec.from_dict(self.task, f"{MANIFEST_FILE} 'task'")

    def report(self, section: str | None) -> dict[str, Any] | None:
        """A precision's section (its ``manifest_section``), None when the build has none."""
        return self.reports.get(section) if section else None

    def to_dict(self) -> dict[str, Any]:
        """The JSON llmc writes, ``schema_version`` first; absent optional sections are left out.
        Report sections are the manifest's own objects, not copies."""
        out: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION, "llmc_version": self.llmc_version, "source": self.source.to_dict(),
            "target": self.target, "precision": self.precision, "pipeline": self.pipeline, "passes": self.passes,
            "rewrites": self.rewrites, "fusions": self.fusions, "fused_ops": self.fused_ops,
            "not_fused": self.not_fused, "fusion_families": self.fusion_families, "nodes": self.nodes.to_dict(),
            "compile_seconds": self.compile_seconds, "validity": self.validity, "memory": self.memory,
            "shapes": self.shapes.to_dict(), "verification": self.verification, "artifact": self.artifact.to_dict(),
            "versions": self.versions, "session": self.session.to_dict(),
        }
        optional = {
            "padding": self.padding, "gqa": self.gqa and self.gqa.to_dict(), **self.reports, "sparsity": self.sparsity,
            "engine": self.engine, "tokenizer": self.tokenizer and self.tokenizer.to_dict(),
            "cache": self.cache and self.cache.to_dict(), "task": self.task, "compression": self.compression,
        }
        out.update((key, value) for key, value in optional.items() if value is not None)
        return out

    @classmethod
    def from_dict(cls, data: Any, where: str | Path = MANIFEST_FILE) -> Manifest:
        """The manifest in ``data`` (parsed JSON), every section of the type llmc writes, else one
        error line naming ``where`` (the file) and the fix: rebuilding the artifact."""
        refuse = _refuser(where)
        _need(isinstance(data, dict), refuse, f"holds a JSON {type(data).__name__}, not an object")
        _check_schema(data, where)
        for key in ("target", "precision"):
            _need(isinstance(data.get(key), str), refuse, f"'{key}' is missing or not a string")
        artifact, session = ArtifactFiles.from_dict(data, refuse), Session.from_dict(data, refuse)
        for key, (ok, what) in _PLAIN.items():
            _need(key in data and ok(data[key]), refuse, f"'{key}' is missing or not {what}")
        for key in _OPTIONAL_PLAIN:
            _need(data.get(key) is None or isinstance(data[key], dict), refuse, f"'{key}' must be an object")
        reports = {key: value for key, value in data.items() if key not in _KNOWN}
        for key, value in reports.items():  # a precision's section, by its manifest_section name
            _need(isinstance(value, dict), refuse, f"{_quoted(key)} must be an object")
        engine = data.get("engine")
        _need(not (engine and engine.get("built")) or PLAN_FILE in artifact.sha256, refuse,
              f"the engine is built but {PLAN_FILE} is not hashed in 'artifact.sha256'")
        optional = {key: data[key] for key in ("gqa", "tokenizer", "cache") if data.get(key) is not None}
        if data.get("task") is not None:
            try:
                TaskSpec.from_dict(data["task"], "'task'")
            except LlmcError:
                raise refuse(f"'task' is not a task record llmc writes ({_quoted(data['task'])})") from None
        return cls(
            **{key: data[key] for key in _PLAIN}, target=data["target"], precision=data["precision"],
            source=Source.from_dict(data, refuse), nodes=Nodes.from_dict(data, refuse),
            shapes=Shapes.from_dict(data, refuse), artifact=artifact, session=session,
            padding=data.get("padding"), sparsity=data.get("sparsity"), engine=engine, reports=reports, task=data.get("task"),
            compression=data.get("compression"),
            gqa=Gqa.from_dict(optional["gqa"], refuse) if "gqa" in optional else None,
            tokenizer=Tokenizer.from_dict(optional["tokenizer"], refuse) if "tokenizer" in optional else None,
            cache=Cache.from_dict(optional["cache"], refuse) if "cache" in optional else None,
        )

    # A read-only view of the JSON, by top-level key, for scripts and tests (llmc reads the fields).
    def __getitem__(self, key: str) -> Any:
        return copy.deepcopy(self.to_dict()[key])

    def get(self, key: str, default: Any = None) -> Any:
        view = self.to_dict()
        return copy.deepcopy(view[key]) if key in view else default

    def __contains__(self, key: object) -> bool:
        return key in self.to_dict()

    def __iter__(self) -> Iterator[str]:
        return iter(list(self.to_dict()))


def write_manifest(directory: Path, manifest: Manifest) -> None:
    """``directory/manifest.json``: strict JSON (no NaN/Infinity), written to a new file then renamed."""
    if not isinstance(manifest, Manifest):
        raise TypeError(f"write_manifest takes a Manifest, not {type(manifest).__name__}")
    text = json.dumps(manifest.to_dict(), indent=2, allow_nan=False) + "\n"
    partial = directory / f".{MANIFEST_FILE}.partial"
    partial.write_text(text)
    os.replace(partial, directory / MANIFEST_FILE)


def read_manifest(directory: str | Path) -> Manifest:
    """The manifest of the artifact at ``directory``, checked (:meth:`Manifest.from_dict`);
    not an artifact, a link, not JSON or not llmc's manifest is one error line."""
    directory = Path(directory)
    path = directory / MANIFEST_FILE
    if not directory.is_dir() or not path.is_file():
        raise LlmcError(f"{directory}: not an llmc artifact (no {MANIFEST_FILE}); build one with `llmc build`")
    if path.is_symlink():
        raise LlmcError(f"{path}: is a symlink; an artifact's files are never links, rebuild it")
    try:
        data = json.loads(path.read_text(), parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # RecursionError: nested too deep
        raise LlmcError(f"{path}: not valid JSON ({first_line(str(exc))}); rebuild the artifact") from None
    return Manifest.from_dict(data, path)


def _check_schema(data: dict[str, Any], where: str | Path) -> None:
    if "schema_version" not in data:
        raise LlmcError(
            f"{where}: written by an llmc without a manifest schema version (this llmc reads schema "
            f"{SCHEMA_VERSION}); {REBUILD}"
        )
    version = data["schema_version"]
    if not _is_int(version) or version != SCHEMA_VERSION:
        newer = _is_int(version) and version > SCHEMA_VERSION
        raise LlmcError(
            f"{where}: manifest schema {_quoted(version)}, written by {'a newer' if newer else 'another'} llmc "
            f"(this llmc reads schema {SCHEMA_VERSION}); {REBUILD}{' (or upgrade llmc)' if newer else ''}"
        )


def _refuser(where: str | Path) -> Refuse:
    def refuse(what: str) -> LlmcError:
        return LlmcError(f"{where}: {what}; this is not a manifest llmc wrote (or it was edited): {REBUILD}")

    return refuse


def _quoted(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _plain_name(name: Any) -> bool:
    return isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and "\\" not in name \
        and "\0" not in name and name != MANIFEST_FILE


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")
