"""Build options, each declared once: its name (the keyword of ``llmc.build``), default, help,
help panel, command-line spelling, which section of the build request it fills and whether it
decides the artifact's bytes (the build cache key).

``llmc.compiler.request`` assembles the table (the general options, then each target's and each
precision's :class:`Section`); ``llmc build`` makes its flags from it, ``llmc.build`` checks its
keywords against it, the cache key and the manifest read the request it fills.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

BUILD = "build"  # the section of the general options: fields of the request itself


@dataclasses.dataclass(frozen=True)
class Flag:
    """One command-line flag: typer's declarations, value type, default and extra arguments."""

    decls: tuple[str, ...]
    type: Any
    default: Any
    help: str
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # show_default, metavar, hidden


@dataclasses.dataclass(frozen=True)
class Option:
    """One build option.

    ``section``/``field``: where its value goes (:data:`BUILD`: the request's own field ``name``,
    whichever section declares it; otherwise field ``field or name`` of that section's settings
    object). ``key``: the value decides the artifact's bytes; ``file``: it names a file or
    directory whose bytes do (the cache key hashes their content). ``flags``: its command-line flags; None makes one flag,
    ``--name-with-dashes``, of ``type`` with ``flag_extra``; ``()`` keeps it off the command line.
    ``from_cli`` turns the flags' values (in ``flags`` order) into the option's value (default:
    the one flag's value as it is); with ``fills``, into a dict of values of the options it names
    (one flag giving two values, as ``--dump-ir-after NAME DIR`` does).
    """

    name: str
    default: Any
    help: str
    type: Any = None
    panel: str | None = None
    section: str = BUILD
    field: str | None = None
    key: bool = True
    file: bool = False
    flags: tuple[Flag, ...] | None = None
    flag_extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    from_cli: Callable[..., Any] | None = None
    fills: tuple[str, ...] = ()

    @property
    def field_name(self) -> str:
        return self.field or self.name

    def cli_flags(self) -> tuple[Flag, ...]:
        if self.flags is not None:
            return self.flags
        decl = "--" + self.name.replace("_", "-")
        return (Flag((decl,), self.type, self.default, self.help, self.flag_extra),)

    def values_from_cli(self, values: list[Any]) -> dict[str, Any]:
        """The option values (by name) that the flags' ``values`` give."""
        value = self.from_cli(*values) if self.from_cli is not None else values[0]
        return dict(value) if self.fills else {self.name: value}


@dataclasses.dataclass(frozen=True)
class Section:
    """The options of one target or precision and the settings object they fill (options of
    section :data:`BUILD` among them are general ones the target or precision introduces).

    ``settings`` is a dataclass built from the section's option values (``make`` builds it when
    it needs the rest of the request, e.g. a default taken from a general option). A caller of
    ``llmc.build`` may also pass a whole settings object by the section's ``name``.
    """

    name: str
    settings: type
    options: tuple[Option, ...]
    panel: str
    make: Callable[[dict[str, Any], Mapping[str, Any]], Any] | None = None

    def build(self, fields: dict[str, Any], general: Mapping[str, Any]) -> Any:
        """The settings object from option fields (``general``: the request's general values)."""
        if self.make is not None:
            return self.make(fields, general)
        return self.settings(**fields)
