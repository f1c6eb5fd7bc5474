"""The CLI's `package.module:factory` (a function that returns the user's nn.Module and its build settings)
and safe weight loading for it: safetensors always, pickle only when asked."""

from __future__ import annotations

import importlib
import inspect
import re
import sys
from pathlib import Path
from typing import Any

import torch

from edgetx.errors import EdgetxError

SETTINGS = ("kind", "inputs", "tokenizer", "spec", "pooling", "held_out", "eos_token_ids", "name")


FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


def is_factory_ref(text: str) -> bool:
    """`package.module:factory` (and no file or folder of that name)."""
    return bool(FACTORY.match(text)) and not Path(text).exists()


def load_factory(ref: str, *, allow_pickle: bool = False) -> tuple[torch.nn.Module, dict]:
    """Import `package.module` by name (the current folder first on sys.path) and call its `factory`.

    The factory returns the module, or `(module, settings)` with settings a dict of `edgetx.build`'s
    keywords (kind, inputs, tokenizer, spec, pooling, held_out, eos_token_ids, name). A factory with an
    `allow_pickle` parameter is passed the flag (for `load_weights`).
    """
    module_name, _, attribute = ref.partition(":")
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        package = importlib.import_module(module_name)
    except ImportError as e:
        raise EdgetxError(f"{ref}: cannot import {module_name} ({e}); run from the folder that holds it or put it "
                          "on PYTHONPATH") from None
    factory: Any = package
    for part in attribute.split("."):
        factory = getattr(factory, part, None)
    if not callable(factory):
        raise EdgetxError(f"{ref}: {module_name} has no callable {attribute}")
    try:
        takes_flag = "allow_pickle" in inspect.signature(factory).parameters
    except (TypeError, ValueError):
        takes_flag = False
    result = factory(allow_pickle=allow_pickle) if takes_flag else factory()
    module, settings = result if isinstance(result, tuple) and len(result) == 2 else (result, {})
    if not isinstance(module, torch.nn.Module) or not isinstance(settings, dict):
        raise EdgetxError(f"{ref} returned {type(result).__name__}; a factory returns a torch.nn.Module, or "
                          "(module, settings) with settings a dict of edgetx.build keywords")
    unknown = sorted(set(settings) - set(SETTINGS))
    if unknown:
        raise EdgetxError(f"{ref}: unknown settings {', '.join(unknown)} (known: {', '.join(SETTINGS)})")
    return module, settings


def load_weights(module: torch.nn.Module, path: str | Path, *, allow_pickle: bool = False) -> torch.nn.Module:
    """Load a state dict into `module`: safetensors always; a pickle (.pt, .pth, .bin) only with allow_pickle,
    then with torch.load(weights_only=True). Missing or unexpected keys are an error naming them."""
    path = Path(path)
    if not path.is_file():
        raise EdgetxError(f"{path}: no such weights file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    elif not allow_pickle:
        raise EdgetxError(f"{path} is a pickle file, which can run code when loaded; convert it to safetensors, or "
                          "pass --allow-pickle (allow_pickle=True) if you trust it (then weights_only=True)")
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise EdgetxError(f"{path}: torch.load(weights_only=True) refused it ({type(e).__name__}: "
                              f"{str(e)[:200]}); a pickle that runs code is refused even with --allow-pickle") from None
    result = module.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise EdgetxError(f"{path} does not fit {type(module).__name__}: missing {result.missing_keys[:5]}, "
                          f"unexpected {result.unexpected_keys[:5]}")
    return module
