"""Config helpers: load ``get_config()`` files, validate values, compare and serialise configs.

Configs are ml_collections ``ConfigDict`` objects returned by ``get_config()`` in a config file,
overridden on the command line through ``ml_collections.config_flags``
(``--config=path.py --config.train.steps=100``). Validation raises :class:`ConfigError`, whose
message names the offending key, its value and what is allowed.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import ml_collections


class ConfigError(ValueError):
    """A config value is invalid; the message names the key and what is allowed."""


def load_file(path: str | Path) -> ml_collections.ConfigDict:
    """Returns ``get_config()`` of the config file at ``path``."""
    spec = importlib.util.spec_from_file_location(Path(path).stem, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"cannot load config file {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def get(config: ml_collections.ConfigDict, key: str) -> Any:
    """Value at a dotted ``key`` such as ``"train.steps"``."""
    value: Any = config
    for part in key.split("."):
        value = value[part]
    return value


def check(
    config: ml_collections.ConfigDict, key: str, ok: Callable[[Any], bool], want: str
) -> None:
    """Raises :class:`ConfigError` unless ``ok(value at key)``; ``want`` says what is allowed."""
    value = get(config, key)
    if not ok(value):
        raise ConfigError(f"config.{key} = {value!r} is invalid: {want}")


def check_one_of(config: ml_collections.ConfigDict, key: str, choices: Iterable[Any]) -> None:
    """Raises :class:`ConfigError` unless the value at ``key`` is one of ``choices``."""
    choices = tuple(choices)
    check(config, key, lambda v: v in choices, "expected one of " + ", ".join(map(str, choices)))


def check_positive(
    config: ml_collections.ConfigDict, key: str, *, allow_zero: bool = False
) -> None:
    """Raises :class:`ConfigError` unless the value at ``key`` is > 0 (or ≥ 0)."""
    if allow_zero:
        check(config, key, lambda v: v >= 0, "expected a number ≥ 0")
    else:
        check(config, key, lambda v: v > 0, "expected a number > 0")


def to_dict(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """Plain nested dict (tuples as lists), as it round-trips through JSON."""
    return json.loads(to_json(config))


def to_json(config: ml_collections.ConfigDict) -> str:
    """Compact, key-sorted JSON of the config (recorded with every result row)."""
    return json.dumps(config.to_dict(), sort_keys=True, separators=(",", ":"), default=str)


def check_resumable(
    workdir: Path, config: ml_collections.ConfigDict, allowed: tuple[str, ...]
) -> None:
    """Refuses to resume the run in ``workdir`` if its recorded config differs from ``config``.

    ``allowed`` lists dotted keys (or prefixes such as ``"eval."``) that may change between a
    run and its resumption because they do not change the training trajectory.
    """
    path = workdir / "config.json"
    if not path.exists():
        return
    recorded = json.loads(path.read_text())
    changes = [d for d in diff(recorded, to_dict(config)) if not d.startswith(allowed)]
    if changes:
        raise ConfigError(
            f"workdir {workdir} holds a run with another config ({'; '.join(changes)}). "
            "Set --config.workdir (or --config.run_name) to start a new run, or delete it."
        )


def record(workdir: Path, config: ml_collections.ConfigDict) -> None:
    """Writes the config to ``workdir/config.json`` (what :func:`check_resumable` compares)."""
    workdir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(to_dict(config), indent=2, sort_keys=True)
    (workdir / "config.json").write_text(text + "\n")


def diff(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested dicts, as ``key: old → new``."""
    out = []
    for key in sorted(old.keys() | new.keys()):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += diff(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} → {b!r}")
    return out
