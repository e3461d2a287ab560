"""What a valid hugnc config is: a composed config checked against what it builds.

Every node with a ``_target_`` is checked against the signature of the callable it names (found
with :func:`hydra.utils.get_object`): a key the callable does not accept is an unknown key (unless
it takes ``**kwargs`` that go nowhere known), a required argument that neither the config nor the
code supplies is missing, and a value must fit its annotation, ranges and choices included
(``alpha: NonNegative``, ``depth: Literal[18, 34]``: :mod:`hugnc.arguments`). The run's own keys,
which no constructor takes, are checked against the entry point's ``TypedDict`` of them
(:class:`hugnc.train.RunKeys`). Third-party constructors state no ranges; :data:`THIRD_PARTY` adds
the few a config sets. Allowed keys, types and ranges are thus written once, in the code that
consumes them; pydantic judges the values.

The Hydra side (when the check runs, sweeps, printing) is :mod:`hugnc.preflight`.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import functools
import inspect
import os
import types
import typing
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import annotated_types
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from pydantic import BeforeValidator

from hugnc.arguments import NonNegative, Positive, PositiveInt, describe, fits, has_rule, show

#: Keys Hydra's ``instantiate`` reads itself; allowed in every ``_target_`` node.
INSTANTIATE_KEYS = frozenset({"_target_", "_partial_", "_recursive_", "_convert_", "_args_"})

#: Groups that are a dict of ``_target_`` nodes (``train.py`` instantiates every entry): a new
#: entry (``+callbacks.my_callback={...}``) is a legitimate addition, not a typo.
COLLECTIONS = frozenset({"callbacks", "logger"})

#: Constructor arguments ``train.py`` passes itself (so the config must not need to supply them).
SUPPLIED_BY_CODE: dict[str, frozenset[str]] = {
    "model": frozenset({"input_shape"}),
    "head": frozenset({"feature_dim", "num_classes"}),
    "trainer": frozenset({"callbacks", "logger"}),
}

_UNSET = object()


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a config: the dotted ``key``, its ``value`` (if it has one) and what
    is allowed (``message``)."""

    key: str
    message: str
    value: Any = _UNSET

    def __str__(self) -> str:
        if self.value is _UNSET:
            return f"{self.key}: {self.message}"
        return f"{self.key} = {show(self.value)}: {self.message}"


#: Ranges of the third-party constructors a config sets (their signatures state none).
THIRD_PARTY: dict[str, dict[str, Any]] = {
    "lightning.Trainer": {
        "max_epochs": Annotated[int, annotated_types.Ge(1)] | Literal[-1] | None,
        "num_nodes": PositiveInt,
        "log_every_n_steps": PositiveInt,
        "check_val_every_n_epoch": PositiveInt | None,
    },
    "torch.optim.SGD": {"lr": Positive, "momentum": NonNegative, "weight_decay": NonNegative},
    "torch.optim.AdamW": {"lr": Positive, "weight_decay": NonNegative},
}


@dataclass(frozen=True)
class Signature:
    """What a ``_target_`` accepts. ``keys`` is ``None`` when it takes any keyword (``**kwargs``
    passed on to something unknown); ``hints`` holds the annotations that could be evaluated."""

    name: str
    keys: frozenset[str] | None
    required: frozenset[str]
    hints: dict[str, Any]


def _continual_base(node: DictConfig) -> Any:
    from hugnc.data import DATAMODULES

    return DATAMODULES.get(node.get("dataset"))


#: ``_target_`` -> the callable its ``**kwargs`` are passed to, when that is not its base class
#: (a continual split builds ``DATAMODULES[dataset](**dataset_kwargs)``). ``None``: unknown.
KWARGS_PASSED_TO: dict[str, Callable[[DictConfig], Any]] = {
    "hugnc.data.ContinualDataModule": _continual_base,
}


def _hints(function: Callable[..., Any]) -> dict[str, Any]:
    """The evaluable annotations of ``function``'s parameters (string ones are skipped)."""
    try:
        return typing.get_type_hints(function, include_extras=True)
    except Exception:  # an annotation naming something not importable at runtime
        try:
            parameters = inspect.signature(function).parameters.values()
        except (TypeError, ValueError):
            return {}
        return {
            p.name: p.annotation
            for p in parameters
            if p.annotation is not inspect.Parameter.empty and not isinstance(p.annotation, str)
        }


def _own_parameters(function: Callable[..., Any], skip_first: bool) -> list[inspect.Parameter]:
    parameters = list(inspect.signature(function).parameters.values())
    return parameters[1:] if skip_first else parameters


@functools.cache
def signature_of(target: Any) -> Signature:
    """The keywords ``target`` (a class or function) accepts, following ``**kwargs`` up the base
    classes' ``__init__`` (hugnc's datamodules pass theirs to :class:`ImageDataModule`)."""
    name = f"{getattr(target, '__module__', '?')}.{getattr(target, '__qualname__', target)}"
    keys: set[str] = set()
    required: set[str] = set()
    hints: dict[str, Any] = {}
    if inspect.isclass(target):
        inits = [k.__dict__["__init__"] for k in target.__mro__ if "__init__" in k.__dict__]
        inits = [init for init in inits if init is not object.__init__]
        chain = [(init, True) for init in inits]
    else:
        chain = [(target, False)]
    open_ended = not chain
    for depth, (function, is_method) in enumerate(chain):
        try:
            parameters = _own_parameters(function, is_method)
        except (TypeError, ValueError):  # builtins without a signature
            open_ended = True
            break
        function_hints = _hints(function)
        var_keyword = False
        for p in parameters:
            if p.kind is p.VAR_KEYWORD:
                var_keyword = True
            elif p.kind is not p.VAR_POSITIONAL:
                keys.add(p.name)
                # A subclass repeating a base argument without its rule keeps the base's rule.
                hint = function_hints.get(p.name)
                if hint is not None and (p.name not in hints or not has_rule(hints[p.name])):
                    hints[p.name] = hint
                if depth == 0 and p.default is p.empty:
                    required.add(p.name)
        if not var_keyword:
            break
        if depth == len(chain) - 1:
            open_ended = True  # **kwargs with no known destination
    return Signature(
        name=name,
        keys=None if open_ended else frozenset(keys),
        required=frozenset(required),
        hints=hints,
    )


def _exactly_one_of(options: tuple[Any, ...], value: Any) -> Any:
    if not any(type(value) is type(option) and value == option for option in options):
        raise ValueError("not one of the options")
    return value


def checkable(hint: Any) -> Any:
    """``hint`` as pydantic can judge a config value by it: what a config cannot express is
    let through. A class becomes a node (which Hydra may instantiate), a path or an enum a string
    or a node, an iterable a list, a mapping a dict; ``Any``, callables, type variables and
    unevaluated (string) annotations accept anything."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Annotated:
        return Annotated[(checkable(args[0]), *args[1:])]
    if origin in (typing.Union, types.UnionType):
        return typing.Union[tuple(checkable(a) for a in args)]  # noqa: UP007 (a runtime tuple)
    if origin is Literal:  # pydantic takes 32.0 for 32; a config value must be the very one
        return Annotated[hint, BeforeValidator(functools.partial(_exactly_one_of, args))]
    if hint in (int, float, str, bool, type(None)):
        return hint
    base = origin if origin is not None else hint
    if not isinstance(base, type) or hint is Any:
        return Any
    if issubclass(base, str | bytes):
        return str
    if issubclass(base, typing.Mapping):
        return dict[str, Any]
    if issubclass(base, typing.Iterable):
        if origin is tuple and args and args[-1] is not Ellipsis:
            return tuple[tuple(checkable(a) for a in args)]  # type: ignore[misc]
        return list[checkable(args[0]) if args else Any]  # type: ignore[misc]
    if issubclass(base, os.PathLike) or issubclass(base, enum.Enum):
        return str | dict[str, Any]
    return dict[str, Any]


def unknown_key_problem(key: str, allowed: Iterable[str], owner: str) -> Problem:
    """``key`` is not one of ``allowed`` (the keys of ``owner``): the closest, then the rest."""
    parent, _, name = key.rpartition(".")
    allowed = sorted(str(k) for k in allowed if k not in INSTANTIATE_KEYS)
    match = difflib.get_close_matches(name, allowed, n=1, cutoff=0.6)
    guess = f" (did you mean {parent + '.' if parent else ''}{match[0]}?)" if match else ""
    if not allowed:
        listing = f"{owner} takes no keys"
    elif len(allowed) <= 20:
        listing = f"{owner} takes {', '.join(allowed)}"
    else:
        listing = f"not one of the {len(allowed)} arguments of {owner}"
    return Problem(key, f"unknown key{guess}; {listing}")


def _value(node: DictConfig, key: str, path: str) -> tuple[Any, Problem | None]:
    """The resolved plain value of ``node[key]``, or the problem resolving it."""
    if OmegaConf.is_missing(node, key):
        return _UNSET, Problem(path, "has no value (???): set it")
    try:
        value = node[key]
        if isinstance(value, DictConfig | ListConfig):
            value = OmegaConf.to_container(value, resolve=True)
    except OmegaConfBaseException as error:
        raw = node._get_node(key)._value()  # type: ignore[union-attr]
        message = str(error).splitlines()[0]
        return _UNSET, Problem(path, f"cannot be resolved: {message}", raw)
    return value, None


def _target_nodes(node: Any, path: str = "") -> Iterator[tuple[str, DictConfig]]:
    """Every ``_target_`` node below ``node`` (outside ``hydra``), with its dotted path."""
    if isinstance(node, DictConfig):
        if "_target_" in node:
            yield path, node
        for key in node:
            if not path and key == "hydra":
                continue
            child = node._get_node(key)
            name = str(key)
            if isinstance(child, DictConfig | ListConfig) and not child._is_none():
                yield from _target_nodes(child, f"{path}.{name}" if path else name)
    elif isinstance(node, ListConfig):
        for index in range(len(node)):
            item = node._get_node(index)
            if isinstance(item, DictConfig | ListConfig) and not item._is_none():
                yield from _target_nodes(item, f"{path}[{index}]")


def _check_structure(cfg: DictConfig) -> list[Problem]:
    """The groups ``train.py`` builds from must be there, collections must hold targets, and a
    continual split belongs to ``python -m hugnc.continual``."""
    problems = []
    for group in COLLECTIONS:
        entries = cfg.get(group)
        if not isinstance(entries, DictConfig):
            continue
        for name in map(str, entries):
            entry = entries._get_node(name)
            assert entry is not None  # name is one of entries' keys
            if entry._is_none() or (isinstance(entry, DictConfig) and "_target_" in entry):
                continue
            problems.append(Problem(f"{group}.{name}", "needs a _target_ (or null to drop it)"))
    entry_point = OmegaConf.select(cfg, "hydra.job.config_name", default=None)
    target = OmegaConf.select(cfg, "data._target_", default=None)
    name = OmegaConf.select(cfg, "hydra.runtime.choices.data", default=None) or "split_*"
    if entry_point == "train" and target == "hugnc.data.ContinualDataModule":
        problems.append(
            Problem(
                "data",
                f"{name} is a continual split: run it with python -m hugnc.continual "
                f"data={name} (README, 'Continual learning')",
            )
        )
    elif entry_point == "continual" and target != "hugnc.data.ContinualDataModule":
        problems.append(
            Problem(
                "data",
                f"{name} is not a continual split: python -m hugnc.continual trains on one "
                "(data=split_fashion_mnist, split_cifar10, split_cifar100), python -m hugnc on "
                f"data={name}",
            )
        )
    return problems


def added_key_problems(cfg: DictConfig, added: Iterable[str]) -> list[Problem]:
    """Problems of keys added with ``+key=value`` outside any ``_target_`` node.

    Inside a ``_target_`` node the signature judges the key, in a :data:`COLLECTIONS` group the
    entry checks do, and ``hydra`` judges its own; elsewhere nothing reads the key, so it is a
    typo and the existing keys are listed.
    """
    problems = []
    for key in added:
        parts = key.split(".")
        if parts[0] == "hydra" or parts[0] in COLLECTIONS:
            continue
        ancestors = [".".join(parts[:i]) for i in range(len(parts) - 1, 0, -1)]
        if any(
            isinstance(node := OmegaConf.select(cfg, a), DictConfig) and "_target_" in node
            for a in ancestors
        ):
            continue
        parent_key = ".".join(parts[:-1])
        parent = OmegaConf.select(cfg, parent_key) if parent_key else cfg
        if not isinstance(parent, DictConfig):
            continue
        existing = [str(k) for k in parent if str(k) not in (parts[-1], "hydra")]
        problems.append(unknown_key_problem(key, existing, parent_key or "the top level"))
    return problems


def target_signature(path: str, node: DictConfig) -> Signature | Problem:
    """The signature of the callable ``node._target_`` names (with its ``**kwargs`` followed to
    their destination, see :data:`KWARGS_PASSED_TO`, and :data:`THIRD_PARTY` ranges), or why
    there is none."""
    from hydra.utils import get_object

    target = node.get("_target_")
    if not isinstance(target, str):
        return Problem(f"{path}._target_", "must be a dotted name (module.Class)", target)
    try:
        obj = get_object(target)
    except Exception as error:
        cause = error.__cause__ or error
        reason = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
        return Problem(f"{path}._target_", f"cannot be imported ({reason})", target)
    signature = signature_of(obj)
    keys, hints = signature.keys, signature.hints | THIRD_PARTY.get(target, {})
    passed_to = KWARGS_PASSED_TO.get(target)
    destination = passed_to(node) if passed_to is not None else None
    if destination is not None:
        base = signature_of(destination)
        keys = None if base.keys is None or keys is None else keys | base.keys
        hints = base.hints | hints
    return Signature(target, keys, signature.required, hints)


def _value_problems(path: str, node: DictConfig, key: str, hint: Any) -> Iterator[Problem]:
    """The problem of ``node[key]`` (unresolvable, or not fitting ``hint``), if any."""
    value, problem = _value(node, key, path)
    if problem is None and hint is not None and not fits(value, checkable(hint)):
        problem = Problem(path, f"must be {describe(hint, value)}", value)
    if problem is not None:
        yield problem


def _check_target(path: str, node: DictConfig) -> list[Problem]:
    """Problems of one ``_target_`` node: importable, known keys, values, required arguments."""
    signature = target_signature(path, node)
    if isinstance(signature, Problem):
        return [signature]
    problems = []
    for key in map(str, node):
        full = f"{path}.{key}"
        if key in INSTANTIATE_KEYS:
            continue
        if signature.keys is not None and key not in signature.keys:
            problems.append(unknown_key_problem(full, signature.keys, signature.name))
            continue
        child = node._get_node(key)
        if isinstance(child, DictConfig) and "_target_" in child:
            continue  # checked as a node of its own
        problems += _value_problems(full, node, key, signature.hints.get(key))
    if not node.get("_partial_", False):
        supplied = SUPPLIED_BY_CODE.get(path, frozenset())
        for key in sorted(signature.required - set(map(str, node)) - supplied):
            problems.append(Problem(f"{path}.{key}", f"missing: {signature.name} needs it"))
    return problems


def _is_node_type(hint: Any) -> bool:
    return isinstance(hint, type) and (typing.is_typeddict(hint) or dataclasses.is_dataclass(hint))


def _check_keys(node: DictConfig, keys: type, path: str = "") -> list[Problem]:
    """Values of the keys of ``node`` that ``keys`` (a ``TypedDict`` or dataclass) declares; a
    nested one is a node checked the same way."""
    problems: list[Problem] = []
    required: frozenset[str] = getattr(keys, "__required_keys__", frozenset())
    for key, hint in typing.get_type_hints(keys, include_extras=True).items():
        full = f"{path}.{key}" if path else key
        child = node._get_node(key) if key in node else None
        if child is None or (key in required and child._is_none()):
            if key in required:
                problems.append(Problem(full, "missing: the run builds an object from it"))
            continue
        nested = [m for m in typing.get_args(hint) or (hint,) if _is_node_type(m)]
        if nested and isinstance(child, DictConfig) and not child._is_none():
            problems += _check_keys(child, nested[0], full)
        elif not nested and not isinstance(child, DictConfig):  # a group: its _target_ judges
            problems += _value_problems(full, node, key, hint)
    return problems


def validate_config(
    cfg: DictConfig, run_keys: type, added_keys: Iterable[str] = ()
) -> list[Problem]:
    """Everything wrong with a composed hugnc config (empty: valid).

    Args:
        cfg: a config as Hydra composes it for a job (``hydra`` node optional; interpolations into
            it need :class:`~hydra.core.hydra_config.HydraConfig` to be set, as in a run).
        run_keys: the ``TypedDict`` of the entry point's own top-level keys.
        added_keys: dotted keys the command line added with ``+`` (see
            :func:`added_key_problems`).
    """
    problems = _check_structure(cfg) + added_key_problems(cfg, added_keys)
    problems += _check_keys(cfg, run_keys)
    for path, node in _target_nodes(cfg):
        problems += _check_target(path, node)
    return problems
