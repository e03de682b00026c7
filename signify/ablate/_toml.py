"""TOML reading: ``tomllib`` on Python >= 3.11, ``tomli`` on 3.10 (a clear error without it)."""

from __future__ import annotations

import pathlib
import sys
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib as _toml
else:  # pragma: no cover - exercised on Python 3.10 only
    try:
        import tomli as _toml
    except ImportError:
        _toml = None


def loads(text: str) -> dict[str, Any]:
    if _toml is None:  # pragma: no cover
        raise RuntimeError(
            "reading TOML on Python 3.10 needs the 'tomli' package: pip install tomli"
        )
    return _toml.loads(text)


def load_file(path: str | pathlib.Path) -> dict[str, Any]:
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        return loads(path.read_text())
    except UnicodeDecodeError as e:  # a binary file: name it (the codec's text does not)
        raise ValueError(f"{path}: not a UTF-8 text file: {e}") from e
    except Exception as e:
        if type(e).__name__ == "TOMLDecodeError":
            raise ValueError(f"{path}: invalid TOML: {e}") from e
        raise
