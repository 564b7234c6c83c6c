"""Hypothesis strategies for untrusted model directories (``llmc export``), exported folders with
linked companions (``llmc build``), chat templates and the values of generate/perplexity/compress.

A :class:`DirCase` is a tiny GPT-2 directory (config, safetensors, tokenizer; saved once per
process) after one to three mutations from :data:`DIR_MUTATIONS`: links to files or folders
outside the directory (which hold :data:`SECRET`), links inside it, dangling links, renamed,
dropped or extra tensors, corrupt safetensors, pickled weights, a config of another architecture
or of other sizes. Each mutation says whether it must be refused, so the tests know the outcome:
exit 1 with one line if any applied mutation must be refused, else a successful export.
"""

from __future__ import annotations

import atexit
import dataclasses
import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from hypothesis import strategies as st

SECRET = b"LLMC-FUZZ-SECRET-7f3a"  # in every file outside the model directory: never in an output
_SOURCE: dict[str, Path] = {}


def hf_source() -> Path:
    """A tiny GPT-2 Hugging Face directory, saved once per process."""
    if "dir" not in _SOURCE:
        from llmc.export import gpt2_model
        from tests.export.test_export_cli import _save

        keep = Path(tempfile.mkdtemp(prefix="llmc-fuzz-hf-"))
        atexit.register(shutil.rmtree, keep, True)
        model = gpt2_model(n_layer=1, n_embd=16, n_head=2, vocab_size=64, n_positions=64, bos_token_id=2, eos_token_id=3)
        _SOURCE["dir"] = _save(model, keep / "gpt2", 64)
    return _SOURCE["dir"]


def lay_out_outside(root: Path) -> Path:
    """``root/elsewhere``: a private file and a folder of files that all hold :data:`SECRET`."""
    outside = root / "elsewhere"
    (outside / "folder").mkdir(parents=True)
    for path in (outside / "secret.json", outside / "folder" / "tokenizer.json", outside / "folder" / "config.json"):
        path.write_bytes(b'{"x": "' + SECRET + b'"}')
        path.chmod(0o600)
    return outside


def _link(name: str, target: Callable[[Path, Path], Path]) -> Callable[[Path, Path], None]:
    def apply(model: Path, outside: Path) -> None:
        (model / name).unlink(missing_ok=True)
        (model / name).symlink_to(target(model, outside))

    return apply


def _tensors(model: Path) -> dict | None:
    """The directory's tensors, or None when an earlier step broke, linked or removed the file."""
    from safetensors.torch import load_file

    path = model / "model.safetensors"
    if path.is_symlink() or not path.is_file():
        return None
    try:
        return load_file(path)
    except Exception:  # an earlier step corrupted it: the weight edits are skipped
        return None


def _save_tensors(model: Path, tensors: dict) -> None:
    from safetensors.torch import save_file

    save_file({k: v.clone().contiguous() for k, v in tensors.items()}, model / "model.safetensors")


def _rename(model: Path, outside: Path) -> None:
    tensors = _tensors(model)
    if tensors is None:
        return
    name = next(k for k in sorted(tensors) if k.endswith("mlp.c_fc.weight"))
    tensors[name + "_renamed"] = tensors.pop(name)
    _save_tensors(model, tensors)


def _drop(model: Path, outside: Path) -> None:
    tensors = _tensors(model)
    if tensors is None:
        return
    tensors.pop(next(k for k in sorted(tensors) if k.endswith("ln_f.weight")))
    _save_tensors(model, tensors)


def _extra_layer(model: Path, outside: Path) -> None:
    tensors = _tensors(model)
    if tensors is None:
        return
    _save_tensors(model, {**tensors, **{k.replace(".h.0.", ".h.1."): v for k, v in tensors.items() if ".h.0." in k}})


def _bytes(transform: Callable[[bytes], bytes]) -> Callable[[Path, Path], None]:
    def apply(model: Path, outside: Path) -> None:
        path = model / "model.safetensors"
        if path.is_file() and not path.is_symlink():  # never written through a link
            path.write_bytes(transform(path.read_bytes()))

    return apply


def _header(edit: Callable[[dict], None]) -> Callable[[bytes], bytes]:
    def transform(data: bytes) -> bytes:
        length = int.from_bytes(data[:8], "little")
        try:
            header = json.loads(data[8 : 8 + length])
        except ValueError:  # an earlier step broke the header: left as it is
            return data
        edit(header[next(k for k in sorted(header) if k != "__metadata__")])
        text = json.dumps(header).encode()
        return len(text).to_bytes(8, "little") + text + data[8 + length :]

    return transform


def _pickled(keep_safetensors: bool) -> Callable[[Path, Path], None]:
    def apply(model: Path, outside: Path) -> None:
        import torch

        tensors = _tensors(model)
        if tensors is None:
            return
        torch.save(tensors, model / "pytorch_model.bin")
        if not keep_safetensors:
            (model / "model.safetensors").unlink()

    return apply


def _config(edit: Callable[[dict], dict]) -> Callable[[Path, Path], None]:
    def apply(model: Path, outside: Path) -> None:
        path = model / "config.json"
        config = json.loads(path.read_text()) if path.is_file() and not path.is_symlink() else None
        if isinstance(config, dict):  # an earlier step may have linked or replaced it
            path.write_text(json.dumps(edit(config)))

    return apply


def _llama(config: dict) -> dict:
    return {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 16, "intermediate_size": 32,
            "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 2, "vocab_size": 64}


def _inside_link(model: Path, outside: Path) -> None:
    (model / "shared").mkdir(exist_ok=True)
    target = model / "shared" / "tokenizer.json"
    if not target.exists() and (model / "tokenizer.json").is_file():
        shutil.move(model / "tokenizer.json", target)
        (model / "tokenizer.json").symlink_to(Path("shared") / "tokenizer.json")


def _chain(model: Path, outside: Path) -> None:
    """tokenizer_config.json -> hop (inside) -> a file outside."""
    _link("hop", lambda m, o: o / "secret.json")(model, outside)
    _link("tokenizer_config.json", lambda m, o: Path("hop"))(model, outside)


def _config_array(model: Path, outside: Path) -> None:
    if not (model / "config.json").is_symlink():
        (model / "config.json").write_text("[1, 2]")


# name -> (apply(model_dir, outside_dir), must be refused)
DIR_MUTATIONS: dict[str, tuple[Callable[[Path, Path], None], bool]] = {
    "link-out-tokenizer": (_link("tokenizer.json", lambda m, o: o / "secret.json"), True),
    "link-out-template": (_link("chat_template.jinja", lambda m, o: o / "secret.json"), True),
    "link-out-vocab": (_link("vocab.txt", lambda m, o: o / "secret.json"), True),
    "link-out-config": (_link("config.json", lambda m, o: o / "folder" / "config.json"), True),
    "link-out-weights": (_link("model.safetensors", lambda m, o: o / "secret.json"), True),
    "link-out-folder": (_link("1_Pooling", lambda m, o: o / "folder"), True),
    "link-out-relative": (_link("special_tokens_map.json", lambda m, o: Path("..") / "elsewhere" / "secret.json"), True),
    "link-out-chain": (_chain, True),
    "dangling-out": (_link("merges.txt", lambda m, o: o / "nowhere"), True),
    "link-in-tokenizer": (_inside_link, False),
    "dangling-in": (_link("added_tokens.json", lambda m, o: m / "nowhere"), False),
    "rename-tensor": (_rename, True),
    "drop-tensor": (_drop, True),
    "extra-layer": (_extra_layer, True),
    "garbage-weights": (_bytes(lambda d: b"\x00garbage" * 7), True),
    "empty-weights": (_bytes(lambda d: b""), True),
    "truncated-weights": (_bytes(lambda d: d[: len(d) * 2 // 3]), True),
    "header-length-huge": (_bytes(lambda d: (2**63).to_bytes(8, "little") + d[8:]), True),
    "header-not-json": (_bytes(lambda d: (9).to_bytes(8, "little") + b"{not json" + d[17:]), True),
    "bad-offsets": (_bytes(_header(lambda e: e.update(data_offsets=[0, 10**15]))), True),
    "bad-dtype": (_bytes(_header(lambda e: e.update(dtype="F128"))), True),
    "bad-shape": (_bytes(_header(lambda e: e.update(shape=[-1, 4]))), True),
    "pickled-only": (_pickled(keep_safetensors=False), True),
    "pickle-beside-safetensors": (_pickled(keep_safetensors=True), False),
    "config-llama": (_config(_llama), True),
    "config-wider": (_config(lambda c: {**c, "n_embd": 32}), True),
    "config-vocab": (_config(lambda c: {**c, "vocab_size": 80}), True),
    "config-deeper": (_config(lambda c: {**c, "n_layer": 2}), True),
    "config-unknown-type": (_config(lambda c: {**c, "model_type": "nosuch", "architectures": ["NoSuchModel"]}), True),
    "config-array": (_config_array, True),
}


@dataclasses.dataclass
class DirCase:
    steps: tuple[str, ...]

    @property
    def refused(self) -> bool:
        return any(DIR_MUTATIONS[step][1] for step in self.steps)

    def write(self, root: Path) -> Path:
        """Lay the mutated directory out as ``root/model`` (and ``root/elsewhere``); return it."""
        outside = lay_out_outside(root)
        model = Path(shutil.copytree(hf_source(), root / "model"))
        for step in self.steps:
            DIR_MUTATIONS[step][0](model, outside)
        return model


def dir_cases() -> st.SearchStrategy[DirCase]:
    names = sorted(DIR_MUTATIONS)
    return st.lists(st.sampled_from(names), min_size=0, max_size=3, unique=True).map(lambda s: DirCase(tuple(s)))


# -- companions beside a model.onnx that llmc build carries --------------------------------------

COMPANION_KINDS = ("regular", "link-in", "link-out", "link-out-folder", "dangling-out", "dangling-in", "folder")
REFUSED_COMPANIONS = frozenset({"link-out", "link-out-folder", "dangling-out"})


def lay_out_companion(folder: Path, outside: Path, name: str, kind: str) -> None:
    path = folder / name
    if kind == "regular":
        path.write_text('{"ok": true}')
    elif kind == "link-in":
        (folder / "real").mkdir(exist_ok=True)
        (folder / "real" / name).write_text('{"ok": true}')
        path.symlink_to(Path("real") / name)
    elif kind == "link-out":
        path.symlink_to(outside / "secret.json")
    elif kind == "link-out-folder":
        path.symlink_to(outside / "folder", target_is_directory=True)
    elif kind == "dangling-out":
        path.symlink_to(outside / "nowhere")
    elif kind == "dangling-in":
        path.symlink_to(folder / "nowhere")
    elif kind == "folder":
        path.mkdir()


# -- chat templates -----------------------------------------------------------------------------

TEMPLATE_PIECES = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}",
    "{% if add_generation_prompt %}<|assistant|>{% endif %}",
    "{{ bos_token }}",
    "{{ raise_exception('refused by the template') }}",
    "{{ messages[99]['content'] }}",
    "{{ nosuch.attribute }}",
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
    "{{ 'x' * 10000000000 }}",
    "{{ 'ab' * 3000000 }}",
    "{{ 'x'|center(100000000000) }}",
    "{{ '%999999999d' % 1 }}",
    "{{ '{:999999999}'.format(1) }}",
    "{{ 9 ** 99999999 }}",
    "{% macro f(s) %}{{ f(s ~ s) }}{% endmacro %}{{ f('x') }}",
    "{% macro g() %}{{ g() }}{% endmacro %}{{ g() }}",
    "{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ messages.append(1) }}",
    "{% for %}",
)


def templates() -> st.SearchStrategy[str]:
    return st.lists(st.sampled_from(TEMPLATE_PIECES), min_size=1, max_size=4).map("".join)
