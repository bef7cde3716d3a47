"""Config schemas for `rlir train` and `rlir pretrain`: pydantic models read from YAML and ``key=value`` overrides.

A schema is a tree of ``Schema`` models (pydantic v2, ``extra="forbid"``, strict types): types, bounds and
``Literal`` choices are declared on the fields, and rules that tie fields together are validators in the model
that holds them. ``validate(cls, data)`` turns the first problem into a ``ConfigError``, a ValueError whose
one-line message starts with the dotted key at fault (``optim.lrr: unknown key (known: lr, schedule, ...)``);
a validator raises ``ConfigError(key, message)`` with the key relative to its model, and the path to that model
is put in front. ``key_reference(cls)`` prints every key with its type, bounds, default and description, so the
reference is generated from the schema (``rlir train --help-config``).

Numbers are strict too (``true`` is not 1), except that a float may be written as a string: YAML 1.1 reads
``1e-5`` (no dot) as one, and override values are parsed as YAML.
"""
from __future__ import annotations

import argparse
import copy
import textwrap
import typing
from pathlib import Path
from typing import Any, Annotated, Callable, Iterable, Literal, Optional

import annotated_types
import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from rlir.assets import resolve as resolve_asset


class ConfigError(ValueError):
    """A bad configuration; the message starts with the dotted key at fault."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")
        self.key, self.message = key, message


class Schema(BaseModel):
    """Base of every config model: unknown keys are errors, no silent type conversions."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, validate_default=False)


def _number(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("must be a number")
    return value


# A float field: an int or a numeric string (YAML 1.1 reads 1e-5 as a string) is read as a float, a bool is not.
Number = Annotated[float, Field(strict=False), BeforeValidator(_number)]


# ---- validation -------------------------------------------------------------------------------------------

_MESSAGES = {
    "finite_number": "must be finite", "bool_type": "must be true or false", "string_type": "must be a string",
    "list_type": "must be a list", "dict_type": "must be a mapping", "model_type": "must be a mapping of keys",
    "model_attributes_type": "must be a mapping of keys", "too_short": "must have >= {min_length} items",
    "too_long": "must have <= {max_length} items",
}
_NUMBER_ERRORS = {"int_type", "int_from_float", "int_parsing", "float_type", "float_parsing", "greater_than",
                  "greater_than_equal", "less_than", "less_than_equal"}


def _dotted(loc: Iterable) -> str:
    key = ""
    for part in loc:
        key += f"[{part}]" if isinstance(part, int) else (f".{part}" if key else str(part))
    return key


def _schema_class(annotation) -> Optional[type]:
    """The Schema class of a field's annotation (``X`` or ``Optional[X]``), else None."""
    for tp in (annotation, *typing.get_args(annotation)):
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            return tp
    return None


def unwrap_type(annotation, metadata=()):
    """(the type, its metadata) of ``Annotated[X, ...]`` / ``Optional[X]``."""
    while True:
        origin, args = typing.get_origin(annotation), typing.get_args(annotation)
        if origin is Annotated:
            annotation, metadata = args[0], (*metadata, *args[1:])
        elif origin is typing.Union and type(None) in args and len(args) == 2:
            annotation = next(a for a in args if a is not type(None))
        else:
            return annotation, metadata


def _lookup(cls: type, loc: tuple):
    """What ``loc`` points at from the schema ``cls``: (model class, type, metadata); list indices step into the
    list's item type."""
    model, annotation, metadata = cls, cls, ()
    for part in loc:
        if isinstance(part, int):
            annotation, metadata = unwrap_type(typing.get_args(annotation)[0] if typing.get_args(annotation) else Any)
            continue
        field = model.model_fields.get(part) if model is not None else None
        if field is None:
            return None, None, ()
        annotation, metadata = unwrap_type(field.annotation, tuple(field.metadata))
        model = _schema_class(annotation)
    return model, annotation, metadata


def _flat(metadata) -> list:
    return [m for item in metadata for m in (*_flat(getattr(item, "metadata", ())), item)]


def _number_phrase(annotation, metadata) -> str:
    """``must be an int >= 1``, ``must be a positive number``, ``must be in (0, 1)`` from a field's bounds."""
    kind = "an int" if annotation is int else "a number"
    found = {attr: getattr(m, attr) for m in _flat(metadata) for _, attr, _ in _BOUNDS if hasattr(m, attr)}
    low = next(((a, found[a]) for a in ("ge", "gt") if a in found), None)
    high = next(((a, found[a]) for a in ("le", "lt") if a in found), None)
    if low and high:
        return f"must be in {'[' if low[0] == 'ge' else '('}{low[1]:g}, {high[1]:g}{']' if high[0] == 'le' else ')'}"
    if low == ("gt", 0) and kind == "a number":
        return "must be a positive number"
    words = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
    bound = low or high
    return f"must be {kind} {words[bound[0]]} {bound[1]:g}" if bound else f"must be {kind}"


def config_error(cls: type, error: ValidationError) -> ConfigError:
    """The first error of a ValidationError of ``cls`` as one ConfigError naming its dotted key."""
    first = error.errors()[0]
    loc, kind, ctx = tuple(first["loc"]), first["type"], first.get("ctx") or {}
    cause = ctx.get("error")
    if isinstance(cause, ConfigError):  # raised by a validator, with a key relative to its model (or field)
        prefix = _dotted(loc)
        key = prefix + cause.key if cause.key.startswith("[") else ".".join(filter(None, (prefix, cause.key)))
        return ConfigError(key, cause.message)
    key = _dotted(loc) or "<root>"
    _, annotation, metadata = _lookup(cls, loc)
    if kind == "extra_forbidden":
        model = _lookup(cls, loc[:-1])[0]
        return ConfigError(key, "unknown key" + (f" (known: {', '.join(model.model_fields)})" if model else ""))
    if kind == "missing":
        return ConfigError(key, "is required")
    if kind == "value_error" and cause is not None:
        message = str(cause)
    elif kind == "literal_error":
        message = f"must be one of {list(typing.get_args(annotation))}"
    elif kind in _NUMBER_ERRORS:
        message = _number_phrase(annotation, metadata)
    elif kind in _MESSAGES:
        message = _MESSAGES[kind].format(**ctx)
    else:
        message = first["msg"][0].lower() + first["msg"][1:]
    return ConfigError(key, f"{message}, got {first['input']!r}")


def validate(cls: type, data: Any):
    """``cls.model_validate(data)``; a bad value raises ConfigError."""
    if not isinstance(data, dict):
        raise ConfigError("<root>", f"a config must be a mapping of keys, got {type(data).__name__}")
    try:
        return cls.model_validate(data)
    except ValidationError as error:
        raise config_error(cls, error) from None


def shipped_path(value):
    """A path field's value with a shipped checkpoint or config resolved to its installed copy (rlir.assets)."""
    return str(resolve_asset(value)) if isinstance(value, str) else value


# ---- YAML and overrides -----------------------------------------------------------------------------------

def read_yaml(path) -> dict:
    """A YAML mapping from ``path`` (a shipped config is found wherever rlir is installed)."""
    path = resolve_asset(path)
    if not path.is_file():
        raise ConfigError("config", f"{path}: no such file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError("config", f"{path}: not valid YAML: {error}") from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError("config", f"{path}: a config must be a mapping of keys, got {type(data).__name__}")
    return data or {}


def parse_overrides(overrides) -> list[tuple[str, Any]]:
    """``["a.b=1", ...]`` -> [("a.b", 1), ...]; values are parsed as YAML scalars or flow lists."""
    out = []
    for item in overrides or ():
        key, sep, raw = str(item).partition("=")
        key = key.strip()
        if not sep or not key or not all(key.split(".")):
            raise ConfigError(str(item), "overrides must look like key=value (e.g. rollout.group_size=16)")
        try:
            out.append((key, yaml.safe_load(raw) if raw.strip() else ""))
        except yaml.YAMLError as error:
            raise ConfigError(key, f"cannot parse override value {raw!r}: {error}") from None
    return out


def with_overrides(data: Optional[dict], overrides=()) -> dict:
    """A deep copy of ``data`` with each ``key=value`` (dotted keys into sections) set."""
    data = copy.deepcopy(data) if data is not None else {}
    if not isinstance(data, dict):
        raise ConfigError("<root>", f"a config must be a mapping of keys, got {type(data).__name__}")
    for dotted, value in parse_overrides(overrides):
        parts, node = dotted.split("."), data
        for i, part in enumerate(parts[:-1]):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(".".join(parts[: i + 1]), f"is not a section; cannot set {dotted}")
        node[parts[-1]] = value
    return data


def _setting(data: dict, dotted: str):
    """(True, the value) when ``data`` sets the dotted key, else (False, None)."""
    node = data
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def reject_old_keys(data: dict, moved: dict, removed: dict) -> None:
    """A one-line ConfigError for the first old setting ``data`` holds, naming what to write instead (not the
    section's unknown-key list): ``<old key>: moved to <new key>`` for a key of ``moved``; for an entry
    ``"<key>"`` of ``removed`` (why, instead) ``<key>: removed (why); instead``, and for an entry
    ``"<key>: <value>"`` (a choice that went, its key stays) ``<key>: <value> removed (why); instead``."""
    for old, new in moved.items():
        if _setting(data, old)[0]:
            raise ConfigError(old, f"moved to {new}")
    for entry, (why, instead) in removed.items():
        key, _, value = entry.partition(": ")
        found, got = _setting(data, key)
        if found and (not value or got == value):
            raise ConfigError(key, f"{value + ' ' if value else ''}removed ({why}); {instead}")


def save_yaml(config: BaseModel, path) -> None:
    Path(path).write_text(yaml.safe_dump(config.model_dump(), sort_keys=False))


# ---- the key reference ------------------------------------------------------------------------------------

_BOUNDS = ((annotated_types.Ge, "ge", ">="), (annotated_types.Gt, "gt", ">"), (annotated_types.Le, "le", "<="),
           (annotated_types.Lt, "lt", "<"))


def _bounds(metadata) -> list[str]:
    out, lengths = [], {}
    for item in metadata:
        out += _bounds(getattr(item, "metadata", ()))  # a FieldInfo inside Annotated
        out += [f"{words} {getattr(item, attr)}" for kind, attr, words in _BOUNDS if isinstance(item, kind)]
        for kind in (annotated_types.MinLen, annotated_types.MaxLen):
            if isinstance(item, kind):
                lengths[kind] = getattr(item, "min_length", getattr(item, "max_length", None))
    if lengths:
        low, high = lengths.get(annotated_types.MinLen), lengths.get(annotated_types.MaxLen)
        out.append(f"{low} items" if low == high else ", ".join(
            text for text in (low and f">= {low} items", high and f"<= {high} items") if text))
    return out


def describe_type(annotation, metadata=()) -> str:
    """A field's type in words (``int >= 1``, ``a|b``, ``list of int``, ``number or null``) with the bounds in
    its ``metadata``."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Annotated:
        return describe_type(args[0], (*args[1:], *metadata))
    if origin is typing.Union:
        inner = [a for a in args if a is not type(None)]
        text = " or ".join(describe_type(a) for a in inner)
        return describe_type(inner[0], metadata) + " or null" if len(inner) == 1 else text
    bounds = _bounds(metadata)
    if origin is list:
        sized = f" ({bounds[-1]})" if bounds and bounds[-1].endswith("items") else ""
        return f"list{sized} of {describe_type(args[0])}" if args else "list"
    if origin is dict:
        return "mapping"
    if origin is Literal:
        text = "|".join(str(a) for a in args)
    else:
        names = {bool: "true|false", int: "int", float: "number", str: "string"}
        text = names.get(annotation, getattr(annotation, "__name__", str(annotation)))
    return f"{text} {', '.join(bounds)}" if bounds else text


def _yaml_value(value) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=1000, sort_keys=False).strip().removesuffix(
        "...").strip()


def key_reference(cls: type, prefix: str = "") -> str:
    """Every key of the schema ``cls``, one entry each: ``key: type = default`` and its description, a section's
    own keys before its subsections; a section starts with its model's docstring."""
    lines, sections = [], []
    for name, field in cls.model_fields.items():
        key = prefix + name
        section = _schema_class(field.annotation)
        if section is not None and section is field.annotation:
            doc = " ".join((section.__doc__ or "").split())
            sections.append(textwrap.fill(f"{key}: {doc}" if doc else f"{key}:", 118, subsequent_indent="    "))
            sections.append(key_reference(section, key + "."))
            continue
        default = _yaml_value(field.get_default(call_default_factory=True))
        entry = f"  {key}: {describe_type(field.annotation, field.metadata)} = {default}"
        if field.description:
            entry += f". {field.description}"
        lines.append(textwrap.fill(entry, 118, subsequent_indent="      "))
    return "\n".join(lines + sections)


def print_action(render: Callable[[], str]) -> type:
    """An argparse action that prints ``render()`` and exits, as --help does (so before required options are
    checked): ``parser.add_argument("--help-config", action=print_action(lambda: key_reference(Cfg)))``."""

    class PrintAndExit(argparse.Action):
        def __init__(self, option_strings, dest, **kwargs):
            super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

        def __call__(self, parser, namespace, values, option_string=None):
            print(render())
            parser.exit()

    return PrintAndExit
