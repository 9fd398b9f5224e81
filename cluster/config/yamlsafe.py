"""Read YAML that people wrote, refusing what would hang, mislead or crash the loader.

A config file is read as bytes, capped in size, decoded as strict UTF-8 and parsed with a SafeLoader
that refuses anchors and aliases (a few hundred bytes of nested aliases expand to gigabytes before
any check could run) and mappings that give a key twice (YAML keeps the last one silently). Every
refusal is one `ConfigError` naming the file and, where there is one, the line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from cluster.errors import ConfigError

MAX_BYTES = 1 << 20  # 1 MiB: conf and sweep files are a few KB


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader without aliases and without duplicate keys."""

    def compose_node(self, parent, index):  # type: ignore[override]
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise _Refused(
                f"line {event.start_mark.line + 1}: YAML aliases (*{event.anchor}) are not allowed"
            )
        event = self.peek_event()
        if getattr(event, "anchor", None):
            raise _Refused(
                f"line {event.start_mark.line + 1}: YAML anchors (&{event.anchor}) are not allowed"
            )
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):  # type: ignore[override]
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if not isinstance(key, (str, int, float, bool)) and key is not None:
                raise _Refused(f"line {line}: a mapping key must be a plain value, got {type(key).__name__}")
            if key in seen:
                raise _Refused(f"line {line}: key '{key}' given twice (first on line {seen[key]})")
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


class _Refused(Exception):
    """Raised inside the loader; turned into a ConfigError with the file name."""


def parse(text: str, source: str) -> Any:
    """Parse YAML text strictly; raise ConfigError naming `source`."""
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except _Refused as exc:
        raise ConfigError(f"{source}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML ({str(exc).splitlines()[0]})") from None
    except RecursionError:
        raise ConfigError(f"{source}: nested too deeply") from None


def read(path: Path) -> Any:
    """Read and parse one YAML file or raise a ConfigError naming it."""
    if not path.is_file():
        raise ConfigError(f"{path}: file not found")
    size = path.stat().st_size
    if size > MAX_BYTES:
        raise ConfigError(f"{path}: {size} bytes; config files are limited to {MAX_BYTES} bytes")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})"
        ) from None
    if "\x00" in text:
        raise ConfigError(f"{path}: contains a NUL byte (not a text file)")
    return parse(text, str(path))
