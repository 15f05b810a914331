"""Reward lookup: a registered name, "reward_model:<folder>", "package.module:function" or "path/to/file.py:function".

A reward is a pure function `(completion: str, example: dict) -> float | None`; None means "not applicable".
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
from typing import Callable

Reward = Callable[[str, dict], "float | None"]

REWARDS: dict[str, Reward] = {}
REWARD_MODEL_PREFIX = "reward_model:"
_REWARD_MODELS: dict[str, Reward] = {}  # folder -> reward: each trained reward model is loaded once per process


def register_reward(name: str) -> Callable[[Reward], Reward]:
    """Decorator that makes a reward available to `get_reward(name)` and to recipes by name."""
    if not name or ":" in name:
        raise ValueError(f"reward name {name!r} must be non-empty and contain no ':' (':' marks module:function)")

    def register(function: Reward) -> Reward:
        previous = REWARDS.get(name)
        # Re-running the same definition (a module reload) is fine; two different functions under one name is not.
        if previous is not None and _qualified_name(previous) != _qualified_name(function):
            raise ValueError(f"reward name {name!r} is already registered to {_qualified_name(previous)}")
        REWARDS[name] = function
        return function

    return register


def _qualified_name(function: Callable) -> str:
    return f"{getattr(function, '__module__', '?')}.{getattr(function, '__qualname__', repr(function))}"


def _looks_like_file(location: str) -> bool:
    return location.endswith(".py") or "/" in location or os.sep in location


def _load_module_from_file(spec: str, path: str):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"reward {spec!r}: file {path!r} not found (resolved to {os.path.abspath(path)})")
    absolute = os.path.realpath(path)
    # One module per file, cached in sys.modules (dataclasses and pickling in the file need it there).
    stem = os.path.splitext(os.path.basename(absolute))[0]
    module_name = f"r1lab_user_reward_{stem}_{hashlib.sha256(absolute.encode()).hexdigest()[:10]}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    module_spec = importlib.util.spec_from_file_location(module_name, absolute)
    if module_spec is None or module_spec.loader is None:
        raise ImportError(f"reward {spec!r}: cannot load {path!r} as a Python module")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_name] = module
    try:
        module_spec.loader.exec_module(module)
    except Exception as error:
        del sys.modules[module_name]
        raise ImportError(f"reward {spec!r}: running {path!r} failed: {type(error).__name__}: {error}") from error
    return module


def get_reward(spec: str) -> Reward:
    """The reward function named by `spec`; every error says which spec and what is wrong with it."""
    if not isinstance(spec, str):
        raise TypeError(f"reward spec must be a string, got {type(spec).__name__}: {spec!r}")
    if spec in REWARDS:
        return REWARDS[spec]
    if spec.startswith(REWARD_MODEL_PREFIX):
        return _reward_model_reward(spec[len(REWARD_MODEL_PREFIX):])
    if ":" not in spec:
        raise ValueError(
            f"unknown reward {spec!r}; registered rewards: {', '.join(sorted(REWARDS))}; "
            "or give 'package.module:function' or 'path/to/file.py:function'"
        )
    location, attribute = spec.rsplit(":", 1)
    if not location or not attribute:
        raise ValueError(f"reward {spec!r}: expected 'module:function' or 'file.py:function'")
    if _looks_like_file(location):
        module = _load_module_from_file(spec, location)
    else:
        try:
            module = importlib.import_module(location)
        except ImportError as error:
            raise ImportError(f"reward {spec!r}: cannot import module {location!r}: {error}") from error
    if not hasattr(module, attribute):
        public = sorted(name for name in vars(module) if not name.startswith("_"))
        raise AttributeError(
            f"reward {spec!r}: {location!r} has no attribute {attribute!r} (it defines: {', '.join(public)})"
        )
    function = getattr(module, attribute)
    if not callable(function):
        raise TypeError(f"reward {spec!r}: {attribute!r} is a {type(function).__name__}, not a function")
    return function


def _reward_model_reward(path: str) -> Reward:
    """The reward of a trained reward model (a reward_model stage's ``final`` folder), cached by folder."""
    if not path:
        raise ValueError(f"reward {REWARD_MODEL_PREFIX!r} needs a folder, e.g. "
                         f"'{REWARD_MODEL_PREFIX}runs/<run>/<stage>/final'")
    key = os.path.realpath(path)
    if key not in _REWARD_MODELS:
        # Lazy on purpose (allowed in tests/test_layers.py): torch and transformers load only when a recipe uses a
        # trained reward model.
        from r1lab.rewards.reward_model import make_reward_model_reward

        _REWARD_MODELS[key] = make_reward_model_reward(path)
    return _REWARD_MODELS[key]
