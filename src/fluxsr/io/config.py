"""Typed configuration: nested dataclasses read from YAML files and ``key.sub=value`` overrides, strictly checked.

Unknown keys, wrong types and missing required values fail at start with a message naming the field
(``train.lr: expected float, got 'fast'``). YAML is read as ``yaml.safe_load`` reads it, except that a duplicate key
and nesting deeper than :data:`MAX_YAML_DEPTH` are refused; every YAML error is one :class:`ConfigError` line naming
the file (or ``--set`` item), the line and column.
"""

from __future__ import annotations

import dataclasses
import operator
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value is missing, unknown or of the wrong type; the message names the field."""


MAX_YAML_DEPTH = 100  # far beyond any recipe; PyYAML's composer recurses, so this keeps it off RecursionError


class StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (safe_load keeps the later silently) and
    nesting deeper than :data:`MAX_YAML_DEPTH`; merge keys (``<<``) still override as in safe_load."""

    def __init__(self, stream) -> None:
        super().__init__(stream)
        self.depth = 0

    def compose_node(self, parent, index):
        self.depth += 1
        try:
            if self.depth > MAX_YAML_DEPTH:
                raise yaml.composer.ComposerError(
                    None, None, f"nested deeper than {MAX_YAML_DEPTH} levels", self.peek_event().start_mark
                )
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    duplicate = key in seen
                except TypeError:  # an unhashable key: safe_load's own error says so below
                    continue
                if duplicate:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r} (each key once per mapping)", key_node.start_mark
                    )
                seen.add(key)
        return super().construct_mapping(node, deep)


def yaml_problem(error: yaml.YAMLError) -> str:
    """``line L, column C: what is wrong`` for a YAML error (1-based, as editors count)."""
    if isinstance(error, yaml.reader.ReaderError):  # bytes that are not text
        return f"byte {error.position}: {str(error).split(chr(10))[0]} (not UTF-8 text)"
    if not isinstance(error, yaml.MarkedYAMLError) or error.problem_mark is None:
        return " ".join(str(error).split())
    mark, problem = error.problem_mark, str(error.problem)
    if "'\\t'" in problem:
        problem = "a tab character: YAML indents with spaces only"
    elif problem.startswith("could not determine a constructor for the tag"):
        tag = problem.split("'")[1].replace("tag:yaml.org,2002:", "!!")
        problem = f"tag {tag} is not allowed (recipes hold plain values: numbers, strings, lists, mappings)"
    elif error.context:
        problem = f"{problem} ({error.context})"
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"


def parse_yaml(text: str | bytes, source: str) -> Any:
    """Read YAML with :class:`StrictLoader`; any YAML error is a one-line :class:`ConfigError` naming ``source``."""
    try:
        return yaml.load(text, Loader=StrictLoader)  # a SafeLoader: no tag builds a Python object
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: {yaml_problem(e)}") from None


def _convert(value: Any, tp: Any, where: str) -> Any:
    """``value`` read from YAML as type ``tp`` (a dataclass, union, list, tuple, dict, literal or scalar), or a
    one-line :class:`ConfigError` naming ``where``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return _convert_union(value, args, where)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return from_dict(tp, value, where)
    if origin in (list, tuple):
        return _convert_sequence(value, origin, args, where)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: expected one of {list(args)}, got {value!r}")
        return value
    return _convert_scalar(value, tp, where)


def _convert_union(value: Any, args: tuple, where: str) -> Any:
    """``value`` as the first member of an ``X | Y | None`` union it converts to (None stays None when allowed)."""
    if value is None and type(None) in args:
        return None
    errors = []
    for arg in (a for a in args if a is not type(None)):
        try:
            return _convert(value, arg, where)
        except ConfigError as e:
            errors.append(str(e))
    raise ConfigError(errors[0] if errors else f"{where}: bad value {value!r}")


def _convert_sequence(value: Any, origin: type, args: tuple, where: str) -> list | tuple:
    """``value`` as ``list[X]``, ``tuple[X, ...]`` or a fixed-length ``tuple[X, Y]``, item by item."""
    if not isinstance(value, list | tuple):
        raise ConfigError(f"{where}: expected a list, got {value!r}")
    if origin is tuple and args and args[-1] is not Ellipsis:
        if len(value) != len(args):
            raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)}")
        return tuple(
            _convert(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True))
        )
    item = args[0] if args else Any
    out = [_convert(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    return tuple(out) if origin is tuple else out


_SCALARS: dict[Any, tuple[Any, str]] = {
    int: (int, "int"),
    bool: (bool, "true/false"),
    str: (str, "a string"),
    Path: (str | Path, "a path"),
}
"""Scalar types a config field may have (besides float): the Python types a YAML value may be, and their name."""


def _convert_scalar(value: Any, tp: Any, where: str) -> Any:
    """``value`` as a float, int (not bool), bool, str or Path; other types (``Any``) take it as it is."""
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                raise ConfigError(f"{where}: expected float, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected float, got {value!r}")
        return float(value)
    if tp not in _SCALARS:
        return value
    kinds, name = _SCALARS[tp]
    if not isinstance(value, kinds) or (tp is int and isinstance(value, bool)):
        raise ConfigError(f"{where}: expected {name}, got {value!r}")
    return Path(value) if tp is Path else value


def from_dict(cls: type[T], data: dict, where: str = "") -> T:
    """Build dataclass ``cls`` from ``data``: unknown keys and wrong types raise :class:`ConfigError`."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(f"unknown config key(s): {', '.join(prefix + k for k in unknown)}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        key = f"{where}.{f.name}" if where else f.name
        if f.name in data:
            kwargs[f.name] = _convert(data[f.name], hints[f.name], key)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{key}: required but missing")
    return cls(**kwargs)


def to_dict(obj: Any) -> Any:
    """Dataclass -> plain YAML-able dict (paths as strings, tuples as lists)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, list | tuple):
        return [to_dict(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``a.b=value`` strings (value parsed as YAML) to a nested dict, returning a new dict."""
    import copy

    data = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        node = data
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {key}: {p} is not a section")
        node[parts[-1]] = parse_yaml(raw, f"--set {item!r} value")
    return data


def read_yaml_mapping(path: Path) -> dict:
    """The mapping a YAML config file holds (empty file: ``{}``); ConfigError naming the file otherwise."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found")
    data = parse_yaml(path.read_bytes(), str(path)) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return data


def load_config(cls: type[T], path: Path | None = None, overrides: list[str] | None = None) -> T:
    """Read ``cls`` from a YAML file (optional) plus overrides."""
    data = read_yaml_mapping(path) if path is not None else {}
    return from_dict(cls, apply_overrides(data, overrides or []))


def config_hash(obj: Any) -> str:
    """Short stable hash of a config (sha256 of its canonical YAML), for manifests."""
    import hashlib

    return hashlib.sha256(yaml.safe_dump(to_dict(obj), sort_keys=True).encode()).hexdigest()[:12]


_OPS = {">=": operator.ge, ">": operator.gt, "in": lambda value, allowed: value in allowed}


def check_range(section: str, obj, **rules: tuple) -> None:
    """Raise :class:`ConfigError` naming ``section.field`` when a field breaks its rule ``(op, bound)``, op one of
    '>=', '>' or 'in' (checked when a section is built, so a bad value fails at start)."""
    for name, (op, bound) in rules.items():
        value = getattr(obj, name)
        if not _OPS[op](value, bound):
            want = f"one of {list(bound)}" if op == "in" else f"{op} {bound}"
            raise ConfigError(f"{section}.{name}: must be {want}, got {value!r}")
