"""Ranges and choices of arguments, declared once in annotations and judged by pydantic.

A constructor states what it accepts in its signature (``alpha: NonNegative``,
``variant: Literal["mhe", "mhs", "mgd"]``); :func:`checked` makes it refuse anything else with
one ``ValueError``, and the config check (:mod:`hugnc.schema`) reads the same annotations to
refuse a bad config before a run starts. :func:`fits` is the judgement (pydantic), :func:`describe`
the words for what is allowed.
"""

from __future__ import annotations

import functools
import inspect
import json
import typing
from collections.abc import Callable, Iterable
from typing import Annotated, Any, TypeVar

import annotated_types
from pydantic import TypeAdapter, ValidationError

NonNegative = Annotated[float, annotated_types.Ge(0)]
Positive = Annotated[float, annotated_types.Gt(0)]
NonNegativeInt = Annotated[int, annotated_types.Ge(0)]
PositiveInt = Annotated[int, annotated_types.Ge(1)]
#: A feature dimension: a point on a sphere needs d >= 2.
FeatureDim = Annotated[int, annotated_types.Ge(2)]

_BOUNDS = (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"))


def _union_members(hint: Any) -> tuple[Any, ...]:
    if typing.get_origin(hint) in (typing.Union, type(int | None)):
        return typing.get_args(hint)
    return (hint,)


def has_rule(hint: Any) -> bool:
    """Whether ``hint`` states a range or a choice (``Annotated`` metadata or ``Literal``)."""
    origin = typing.get_origin(hint)
    if origin is Annotated or origin is typing.Literal:
        return True
    return any(has_rule(arg) for arg in typing.get_args(hint) if not isinstance(arg, str))


@functools.cache
def _adapter(hint: Any) -> TypeAdapter:
    return TypeAdapter(hint)


def fits(value: Any, hint: Any, *, as_config: bool = True) -> bool:
    """Whether ``value`` is allowed by ``hint``.

    ``as_config``: judged as a YAML/JSON value, strictly (1.5 is no ``int``, ``true`` no ``1``,
    a list may fill a ``tuple``); else as a Python argument (pydantic's lax mode: ``1`` fills a
    ``float``). ``hint`` must be one pydantic understands (see :func:`hugnc.schema.checkable`).
    """
    try:
        adapter = _adapter(hint)
        if as_config:
            adapter.validate_json(json.dumps(value), strict=True)
        else:
            adapter.validate_python(value)
    except (ValidationError, TypeError, ValueError):
        return False
    return True


def show(value: Any) -> str:
    """A value as written on the command line (``null``, ``true``, ``'text'``, lists)."""
    from omegaconf import Container, OmegaConf

    if isinstance(value, Container):
        value = OmegaConf.to_container(value, resolve=False)
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(show(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {show(v)}" for k, v in value.items()) + "}"
    return repr(value) if isinstance(value, str) else str(value)


def _bounds(constraints: list[Any]) -> str:
    limits = {}
    for constraint in constraints:
        for name, _ in _BOUNDS:
            if getattr(constraint, name, None) is not None:
                limits[name] = getattr(constraint, name)
    low = next(((n, limits[n]) for n in ("ge", "gt") if n in limits), None)
    high = next(((n, limits[n]) for n in ("le", "lt") if n in limits), None)
    if low and high:
        opening, closing = "[" if low[0] == "ge" else "(", "]" if high[0] == "le" else ")"
        return f"in {opening}{low[1]:g}, {high[1]:g}{closing}"
    return " ".join(f"{dict(_BOUNDS)[n]} {v:g}" for n, v in limits.items())


def describe(hint: Any, value: Any = None) -> str:
    """What ``hint`` allows, in words (``>= 0``, ``one of mhe, mhs, mgd``, ``int or null``).

    The kind of a ranged number (``a number``, ``an integer``) is left out when ``value`` is of
    that kind already: the range is then what is wrong.
    """
    members = _union_members(hint)
    literals = [v for m in members if typing.get_origin(m) is typing.Literal for v in m.__args__]
    others = [m for m in members if typing.get_origin(m) is not typing.Literal]
    words: list[str] = []
    for member in members:
        if typing.get_origin(member) is typing.Literal:
            if member is next(m for m in members if typing.get_origin(m) is typing.Literal):
                plain = not others and all(isinstance(v, str) for v in literals)
                shown = [str(v) if plain else show(v) for v in literals]
                numeric = len(literals) == 1 and not isinstance(literals[0], str | bool)
                words.append(shown[0] if numeric else "one of " + ", ".join(shown))
        elif member is type(None):
            continue
        elif typing.get_origin(member) is Annotated:
            base, *constraints = typing.get_args(member)
            kind = "an integer" if base is int else "a number"
            bounds = _bounds(constraints)
            words.append(bounds if fits(value, base) else f"{kind} {bounds}")
        else:
            words.append(_word(member))
    if type(None) in members:
        words.append("null")
    return " or ".join(dict.fromkeys(words))


def _word(hint: Any) -> str:
    if hint is bool:
        return "true or false"
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if isinstance(origin, type) and issubclass(origin, Iterable) and not issubclass(origin, str):
        return f"a list of {describe(args[0])}" if args else "a list"
    return getattr(hint, "__name__", str(hint))


Init = TypeVar("Init", bound=Callable[..., None])


def _refuse(owner: str, values: dict[str, Any], hints: dict[str, Any]) -> None:
    bad = [
        f"{name} must be {describe(hint, values[name])}, got {show(values[name])}"
        for name, hint in hints.items()
        if has_rule(hint) and not fits(values[name], hint, as_config=False)
    ]
    if bad:
        raise ValueError(f"{owner}: " + "; ".join(bad))


def checked(init: Init) -> Init:
    """Make ``__init__`` refuse arguments outside their annotated ranges and choices.

    Raises ``ValueError("<Class>: alpha must be >= 0, got -1")`` (every bad argument, ``; ``
    separated). Only annotations with a rule are judged; plain types are the type checker's.
    """
    signature = inspect.signature(init)
    hints = typing.get_type_hints(init, include_extras=True)
    hints.pop("return", None)

    @functools.wraps(init)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> None:
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        _refuse(type(self).__name__, bound.arguments, hints)
        init(self, *args, **kwargs)

    return typing.cast(Init, wrapper)


def check_fields(instance: Any) -> None:
    """:func:`checked` for a dataclass (call it in ``__post_init__``)."""
    hints = typing.get_type_hints(type(instance), include_extras=True)
    _refuse(type(instance).__name__, {n: getattr(instance, n) for n in hints}, hints)
