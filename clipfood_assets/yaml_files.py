"""YAML documents that must be a mapping: one reader for config files, run configs and UI text.

Every caller names where the document came from and what it must be, so an error says which
file (or field) is wrong and why. Pure: imports neither dagster nor anything of this package,
so lake/, data/ and modeling/ can all use it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


def yaml_mapping(
    text: str | bytes, where: str, must_be: str, *, empty: str | None = None, invalid: str = "not valid YAML"
) -> dict[str, Any]:
    """The YAML document ``text`` as a dict.

    ValueError ``f"{where}: {invalid}: <parser error>"`` when it does not parse, and
    ``f"{where}: {must_be}, got <type>"`` when it is not a mapping. An empty document (or only
    comments) is ``{}``, or the ValueError ``f"{where}: {empty}"`` when ``empty`` is given.
    """
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"{where}: {invalid}: {exc}") from None
    if loaded is None:
        if empty is not None:
            raise ValueError(f"{where}: {empty}")
        return {}
    if not isinstance(loaded, dict):
        raise ValueError(f"{where}: {must_be}, got {type(loaded).__name__}")
    return loaded


def read_yaml_mapping(
    path: str | Path, must_be: str, *, empty: str | None = None, invalid: str = "not valid YAML"
) -> dict[str, Any]:
    """The YAML file ``path`` as a dict, errors naming the file (see :func:`yaml_mapping`).

    A missing file is FileNotFoundError, as for any read.
    """
    path = Path(path)
    return yaml_mapping(path.read_text(encoding="utf-8"), str(path), must_be, empty=empty, invalid=invalid)
