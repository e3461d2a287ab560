"""What a valid hugnc config is: the checks run on a composed config before anything is built.

A typo or an out-of-range value used to surface minutes later, deep in a constructor, after Hydra
had made the run directory (and W&B a run). :func:`validate_config` finds these on the composed
config alone, in two layers:

- **Rules** (:data:`RULES`): the ranges and choices that no signature can express, in one table
  (``loss.alpha >= 0``, ``data.imb_factor`` in (0, 1], ``model.feature_dim >= 2`` ...). They apply
  to whichever config option is selected, as long as it has the key.
- **Signatures**: every node with a ``_target_`` is checked against the signature of the callable
  it names (found with :func:`hydra.utils.get_object`): a key the callable does not accept is an
  unknown key (unless it takes ``**kwargs`` that go nowhere known), a value that does not fit a
  simple annotation (``int``, ``float``, ``bool``, ``str``, ``Literal``, ``Optional``, lists) is a
  wrong type, and a required argument that neither the config nor the code supplies is missing.
  Allowed keys and types are thus never written twice: the yaml files and the constructors stay
  the source of truth (Lightning's ``Trainer(precision=...)`` ``Literal`` gives the allowed
  precisions, for instance).

The constructors keep their own checks (defense in depth); this module only makes the same
mistakes fail before the first byte is written. The command line side (composing the configs of a
run or of every job of a sweep, and printing the problems) is :mod:`hugnc.preflight`.
"""

from __future__ import annotations

import collections.abc
import difflib
import enum
import inspect
import os
import types
import typing
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import cache
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

#: Keys Hydra's ``instantiate`` reads itself; allowed in every ``_target_`` node.
INSTANTIATE_KEYS = frozenset({"_target_", "_partial_", "_recursive_", "_convert_", "_args_"})

#: Groups that are a dict of ``_target_`` nodes (``train.py`` instantiates every entry): a new
#: entry (``+callbacks.my_callback={...}``) is a legitimate addition, not a typo.
COLLECTIONS = frozenset({"callbacks", "logger"})

#: Groups ``train.py`` builds objects from: a config without one of them cannot run.
REQUIRED_GROUPS = ("data", "model", "loss", "head", "optimizer", "trainer")

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
        return f"{self.key} = {_show(self.value)}: {self.message}"


def _show(value: Any) -> str:
    """A value as the user would write it on the command line (``null``, ``true``, lists)."""
    if isinstance(value, DictConfig | ListConfig):
        value = OmegaConf.to_container(value, resolve=False)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_show(v)}" for k, v in value.items()) + "}"
    return repr(value) if isinstance(value, str) else str(value)


# --------------------------------------------------------------------------------------------
# Rules: ranges and choices, one table.


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass(frozen=True)
class Rule:
    """``check(value)`` returns what is allowed when ``value`` is not (``None`` when it is).

    ``deferred`` rules need an import (of torch, via the package that defines the allowed values):
    they run after the cheap rules found nothing, so the common mistakes fail fast.
    """

    check: Callable[[Any], str | None]
    deferred: bool = False


def number(
    minimum: float | None = None,
    *,
    above: bool = False,
    maximum: float | None = None,
    nullable: bool = False,
    integer: bool = False,
    also: tuple[Any, ...] = (),
) -> Rule:
    """A number (an ``int`` if ``integer``) in ``[minimum, maximum]`` (``(minimum, ...`` if
    ``above``), or one of ``also``, or ``null`` if ``nullable``."""
    kind = "an integer" if integer else "a number"
    bounds = ""
    if minimum is not None and maximum is not None:
        bounds = f"in {'(' if above else '['}{minimum:g}, {maximum:g}]"
    elif minimum is not None:
        bounds = f"{'>' if above else '>='} {minimum:g}"
    elif maximum is not None:
        bounds = f"<= {maximum:g}"
    alternatives = "".join(f" or {_show(v)}" for v in also) + (" or null" if nullable else "")

    def check(value: Any) -> str | None:
        if value is None:
            return None if nullable else f"must be {kind} {bounds}{alternatives}"
        if value in also and type(value) in {type(v) for v in also}:
            return None
        if not (_is_int(value) if integer else _is_number(value)):
            return f"must be {kind} {bounds}{alternatives}"
        too_low = minimum is not None and (value <= minimum if above else value < minimum)
        too_high = maximum is not None and value > maximum
        return f"must be {bounds}{alternatives}" if too_low or too_high else None

    return Rule(check)


def choice(options: Callable[[], Iterable[Any]] | Iterable[Any], *, nullable: bool = False) -> Rule:
    """One of ``options``; a callable is called (and its module imported) only when needed."""
    deferred = callable(options)

    def check(value: Any) -> str | None:
        allowed = list(options() if callable(options) else options)
        # Strings or integers only: YAML's true would otherwise equal an allowed 1.
        exact = isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))
        if (value is None and nullable) or (exact and value in allowed):
            return None
        return "must be one of " + ", ".join(map(str, allowed)) + (" or null" if nullable else "")

    return Rule(check, deferred=deferred)


def of_type(kind: type, *, nullable: bool = False) -> Rule:
    """A ``str`` or a ``bool`` (for top-level keys, which have no signature)."""
    name = {str: "a string", bool: "true or false"}[kind]

    def check(value: Any) -> str | None:
        if (value is None and nullable) or isinstance(value, kind):
            return None
        return f"must be {name}" + (" or null" if nullable else "")

    return Rule(check)


def _hug_variants() -> tuple[str, ...]:
    from hugnc.losses import VARIANTS

    return tuple(VARIANTS)


def _cifar_resnet_depths() -> tuple[int, ...]:
    from hugnc.models.backbones import CIFAR_RESNET_BLOCKS

    return tuple(sorted(CIFAR_RESNET_BLOCKS))


def _torchvision_resnets() -> tuple[str, ...]:
    from hugnc.models.backbones import TORCHVISION_RESNETS

    return TORCHVISION_RESNETS


def _imb_types() -> tuple[str, ...]:
    from hugnc.data.long_tail import IMB_TYPES

    return IMB_TYPES


def _scenarios() -> tuple[str, ...]:
    from hugnc.data.continual import SCENARIOS

    return SCENARIOS


def _continual_datasets() -> list[str]:
    from hugnc.data import DATAMODULES

    return sorted(DATAMODULES)


#: The ranges and choices of every group (key -> rule). A key absent from the composed config (a
#: loss without ``mhe_power``, a dataset without ``imb_factor``) is not checked.
RULES: dict[str, Rule] = {
    # train.yaml
    "task_name": of_type(str),
    "seed": number(0, integer=True),
    "test": of_type(bool),
    "ckpt_path": of_type(str, nullable=True),
    "matmul_precision": choice(("highest", "high", "medium")),
    "retain_host_memory": of_type(bool),
    # loss
    "loss.alpha": number(0),
    "loss.beta": number(0),
    "loss.mhe_power": number(0),
    "loss.label_smoothing": number(0, maximum=1),
    "loss.variant": choice(_hug_variants),
    # head
    "head.scale": number(0, above=True),
    # model
    "model.feature_dim": number(2, integer=True, nullable=True),
    "model.kernel_size": number(1, integer=True),
    "model.convs_per_stage": number(1, integer=True),
    "model.depth": choice(_cifar_resnet_depths),
    "model.arch": choice(_torchvision_resnets),
    # data
    "data.num_classes": number(2, integer=True),
    "data.batch_size": number(1, integer=True),
    "data.eval_batch_size": number(1, integer=True, nullable=True),
    "data.val_size": number(0, integer=True),
    "data.train_subset": number(1, integer=True, nullable=True),
    "data.seed": number(0, integer=True),
    "data.imb_factor": number(0, above=True, maximum=1, nullable=True),
    "data.num_workers": number(0, integer=True),
    "data.num_tasks": number(1, integer=True),
    "data.imb_type": choice(_imb_types),
    "data.scenario": choice(_scenarios),
    "data.dataset": choice(_continual_datasets),
    # optimizer, scheduler
    "optimizer.lr": number(0, above=True),
    "optimizer.weight_decay": number(0),
    "optimizer.momentum": number(0),
    "scheduler.interval": choice(("epoch", "step")),
    # trainer (types and the allowed precisions come from lightning.Trainer's signature)
    "trainer.max_epochs": number(1, integer=True, also=(-1,), nullable=True),
    "trainer.num_nodes": number(1, integer=True),
    "trainer.log_every_n_steps": number(1, integer=True),
    "trainer.check_val_every_n_epoch": number(1, integer=True, nullable=True),
    # python -m hugnc.continual
    "continual.fresh_optimizer": of_type(bool),
}


# --------------------------------------------------------------------------------------------
# Signatures of _target_ callables.


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
        return typing.get_type_hints(function)
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


@cache
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
                if p.name in function_hints and p.name not in hints:
                    hints[p.name] = function_hints[p.name]
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


def _describe(hint: Any) -> str:
    """An annotation in words: ``int or null``, ``one of 'a', 'b'``, ``a list of int``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is type(None):
        return "null"
    if origin in (typing.Union, types.UnionType):
        literals = [a for a in args if typing.get_origin(a) is typing.Literal]
        words = [_describe(a) for a in args if a not in literals and a is not type(None)]
        if literals:
            values = [_show(v) for a in literals for v in typing.get_args(a)]
            words.insert(0, "one of " + ", ".join(dict.fromkeys(values)))
        if type(None) in args:
            words.append("null")
        return " or ".join(dict.fromkeys(words))
    if origin is typing.Literal:
        return "one of " + ", ".join(_show(a) for a in args)
    if origin is not None and _is_sequence_type(origin):
        return f"a list of {_describe(args[0])}" if args else "a list"
    if hint is bool:
        return "true or false"
    return getattr(hint, "__name__", str(hint))


def _is_sequence_type(origin: Any) -> bool:
    return (
        isinstance(origin, type)
        and issubclass(origin, collections.abc.Iterable)
        and not issubclass(origin, str | bytes | collections.abc.Mapping)
    )


def matches(value: Any, hint: Any) -> bool:
    """Whether a config value fits an annotation; unknown annotations accept anything.

    Only the cases a config can express are judged: scalars, ``Literal``, unions, lists and
    dicts. A class annotation accepts a node (which Hydra may instantiate) but not a scalar,
    except strings for paths and enums.
    """
    if hint is Any or hint is inspect.Parameter.empty or isinstance(hint, str | typing.TypeVar):
        return True
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(matches(value, a) for a in args)
    if origin is typing.Literal:
        return any(type(value) is type(a) and value == a for a in args)
    if hint is type(None) or hint is None:
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return _is_int(value)
    if hint is float:
        return _is_number(value)
    if hint is str:
        return isinstance(value, str)
    base = origin if origin is not None else hint
    if not isinstance(base, type):
        return True  # Callable[...], NewType, Annotated and the like: not judged
    if issubclass(base, collections.abc.Mapping):
        return isinstance(value, dict)
    if _is_sequence_type(base):
        if isinstance(value, str):
            return issubclass(base, str)
        if not isinstance(value, list | tuple):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(args) == len(value) and all(map(matches, value, args))
        return not args or all(matches(v, args[0]) for v in value)
    if issubclass(base, os.PathLike) or issubclass(base, enum.Enum):
        return isinstance(value, str | dict)
    return isinstance(value, dict) or not isinstance(value, int | float | str | bool | list)


# --------------------------------------------------------------------------------------------
# Walking a composed config.


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


def _check_rules(cfg: DictConfig, deferred: bool) -> list[Problem]:
    problems = []
    for key, rule in RULES.items():
        if rule.deferred != deferred:
            continue
        parent_key, _, name = key.rpartition(".")
        parent = OmegaConf.select(cfg, parent_key) if parent_key else cfg
        if not isinstance(parent, DictConfig) or name not in parent:
            continue
        value, problem = _value(parent, name, key)
        if problem is None:
            message = rule.check(value)
            problem = Problem(key, message, value) if message else None
        if problem is not None:
            problems.append(problem)
    return problems


def target_signature(path: str, node: DictConfig) -> Signature | Problem:
    """The signature of the callable ``node._target_`` names (with its ``**kwargs`` followed to
    their destination, see :data:`KWARGS_PASSED_TO`), or why there is none."""
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
    passed_to = KWARGS_PASSED_TO.get(target)
    destination = passed_to(node) if passed_to is not None else None
    if destination is not None:
        base = signature_of(destination)
        keys = None if base.keys is None or signature.keys is None else signature.keys | base.keys
        hints = base.hints | signature.hints
        signature = Signature(signature.name, keys, signature.required, hints)
    return Signature(target, signature.keys, signature.required, signature.hints)


def _check_target(path: str, node: DictConfig, skip: set[str]) -> list[Problem]:
    """Problems of one ``_target_`` node: importable, known keys, types, required arguments."""
    signature = target_signature(path, node)
    if isinstance(signature, Problem):
        return [signature]
    problems = []
    for key in map(str, node):
        full = f"{path}.{key}"
        if key in INSTANTIATE_KEYS or full in skip:
            continue
        if signature.keys is not None and key not in signature.keys:
            problems.append(unknown_key_problem(full, signature.keys, signature.name))
            continue
        child = node._get_node(key)
        if isinstance(child, DictConfig) and "_target_" in child:
            continue  # checked as a node of its own
        value, problem = _value(node, key, full)
        if problem is None and key in signature.hints and not matches(value, signature.hints[key]):
            problem = Problem(full, f"must be {_describe(signature.hints[key])}", value)
        if problem is not None:
            problems.append(problem)
    if not node.get("_partial_", False):
        supplied = SUPPLIED_BY_CODE.get(path, frozenset())
        for key in sorted(signature.required - set(map(str, node)) - supplied):
            problems.append(Problem(f"{path}.{key}", f"missing: {signature.name} needs it"))
    return problems


def _check_structure(cfg: DictConfig) -> list[Problem]:
    """The groups ``train.py`` builds from must be there, collections must hold targets, and a
    continual split belongs to ``python -m hugnc.continual``."""
    problems = []
    for group in REQUIRED_GROUPS:
        if not isinstance(cfg.get(group), DictConfig):
            problems.append(Problem(group, "missing: the run builds an object from it"))
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
    if entry_point == "train" and OmegaConf.select(cfg, "data._target_", default=None) == (
        "hugnc.data.ContinualDataModule"
    ):
        name = OmegaConf.select(cfg, "hydra.runtime.choices.data", default=None) or "split_*"
        problems.append(
            Problem(
                "data",
                f"{name} is a continual split: run it with python -m hugnc.continual "
                f"data={name} (README, 'Continual learning')",
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


def validate_config(
    cfg: DictConfig, added_keys: Iterable[str] = (), cheap_only: bool = False
) -> list[Problem]:
    """Everything wrong with a composed hugnc config (empty: valid).

    Args:
        cfg: a config as Hydra composes it for a job (``hydra`` node optional; interpolations into
            it need :class:`~hydra.core.hydra_config.HydraConfig` to be set, as in a run).
        added_keys: dotted keys the command line added with ``+`` (see
            :func:`added_key_problems`).
        cheap_only: only the checks that import nothing (the cheap rules, structure, added keys).

    The cheap checks run first and their problems are returned alone: the usual mistake (a
    negative weight, a bad batch size) is then reported without importing torch. Otherwise the
    rules that need imports and the ``_target_`` signatures are checked.
    """
    problems = _check_rules(cfg, deferred=False) + _check_structure(cfg)
    problems += added_key_problems(cfg, added_keys)
    if problems or cheap_only:
        return problems
    problems = _check_rules(cfg, deferred=True)
    judged = {p.key for p in problems}
    for path, node in _target_nodes(cfg):
        problems += _check_target(path, node, judged)
    return problems
