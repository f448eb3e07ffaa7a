"""How files meant for other machines name the base model: its Hub id and revision.

peft's ``adapter_config.json`` (``base_model_name_or_path``) and a model card's ``base_model`` are read
where the training machine's folders do not exist. A local folder that is a copy of a Hub model is
therefore named by its Hub id; only a model that is not on the Hub (the offline CLIP that
``clipfood base-model`` builds) keeps its folder. Nothing here reaches the network.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import yaml
from huggingface_hub import metadata_load
from huggingface_hub.utils import HFValidationError, validate_repo_id

# The Hub cache's layout: <cache>/models--<org>--<name>/snapshots/<commit>/ (a repo id never holds "--").
_CACHE_SNAPSHOT = re.compile(r"/models--(?P<repo>[^/]+)/snapshots/(?P<revision>[0-9a-f]{40})$")


@dataclass(frozen=True)
class BaseModelSource:
    """A base model as the platform names it (``name``: hub id or local folder) and as the Hub does.

    ``hub_id`` is None for a model that is not on the Hub; ``revision`` is the Hub commit when the
    local copy says which.
    """

    name: str
    hub_id: str | None = None
    revision: str | None = None

    @property
    def portable_name(self) -> str:
        """What another machine can load: the hub id, else (not a Hub model) the folder."""
        return self.hub_id or self.name


def _is_repo_id(name: str) -> bool:
    if name.startswith((".", "/", "~")):
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def _card_metadata(card: Path | str | None) -> dict:
    """A model card's front matter ({} when there is none or it does not parse)."""
    if not card or not Path(card).is_file():
        return {}
    try:
        return metadata_load(card) or {}
    except (OSError, ValueError, yaml.YAMLError):
        return {}


def base_model_source(name_or_path: str | Path) -> BaseModelSource:
    """Which Hub model ``name_or_path`` is.

    A name that is not a local folder is a hub id. A folder is a copy of a Hub model when it sits in
    the Hub cache (``models--org--name/snapshots/<commit>``), or when its ``config.json`` names a hub
    id in ``_name_or_path`` (the Hub's own configs of older uploads do, e.g. openai/clip-vit-base-patch32)
    and its own card declares no ``base_model`` (transformers 4 also wrote the parent's id into a
    fine-tune's config: that folder is a derivative, not a copy). Any other folder is not a Hub model.
    """
    name = str(name_or_path)
    folder = Path(name).expanduser()
    if not folder.is_dir():
        return BaseModelSource(name, name if _is_repo_id(name) else None)
    snapshot = _CACHE_SNAPSHOT.search(folder.absolute().as_posix())
    if snapshot:
        return BaseModelSource(name, snapshot["repo"].replace("--", "/"), snapshot["revision"])
    try:
        declared = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("_name_or_path")
    except (OSError, ValueError, AttributeError):
        declared = None
    if (isinstance(declared, str) and _is_repo_id(declared) and not Path(declared).exists()
            and "base_model" not in _card_metadata(folder / "README.md")):
        return BaseModelSource(name, declared)
    return BaseModelSource(name)
