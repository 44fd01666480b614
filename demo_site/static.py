"""Where xblock-sdk keeps the static files its workbench serves (jQuery, the XBlock JS runtime)."""

from __future__ import annotations

import importlib.util
from pathlib import Path


def xblock_sdk_static_dir() -> Path:
    """Return xblock-sdk's ``workbench/static`` folder, without importing its Django app."""
    spec = importlib.util.find_spec("workbench")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "xblock-sdk is not installed; the workbench needs it: "
            'pip install "setuptools<82" -e ".[demo]"'
        )
    return Path(next(iter(spec.submodule_search_locations))) / "static"
