"""How files meant for other machines name the base model (its Hub id, revision and license), and Hub cards.

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
from huggingface_hub import ModelCardData, metadata_load, try_to_load_from_cache
from huggingface_hub.utils import HFValidationError, validate_repo_id

# The Hub cache's layout: <cache>/models--<org>--<name>/snapshots/<commit>/ (a repo id never holds "--").
_CACHE_SNAPSHOT = re.compile(r"/models--(?P<repo>[^/]+)/snapshots/(?P<revision>[0-9a-f]{40})$")
_LICENSE_FIELDS = ("license", "license_name", "license_link")
# How the Hub files CLIP models; the cards' model-index names the retrieval task in words.
PIPELINE_TAG = "zero-shot-image-classification"


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

    def describe(self) -> str:
        """The base model in a card's words: its hub id (and the copy trained from), else its folder."""
        if not self.hub_id:
            return f"`{self.name}` on the training machine (not a Hub model)"
        revision = f" at revision `{self.revision}`" if self.revision else ""
        copy = f" (trained from its copy `{self.name}`)" if self.name != self.hub_id else ""
        return f"`{self.hub_id}`{revision}{copy}"


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
    if not name or not folder.is_dir():  # "" (a model built from a config) would be the working directory
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


def base_model_license(source: BaseModelSource) -> dict[str, str]:
    """The license fields (``license``, ``license_name``, ``license_link``) of the base model's own card:
    the local folder's README.md, or the Hub cache's copy for a hub id; {} when neither declares one."""
    folder = Path(source.name).expanduser()
    if source.name and folder.is_dir():
        card = folder / "README.md"
    elif source.hub_id:
        cached = try_to_load_from_cache(source.hub_id, "README.md", revision=source.revision)
        card = cached if isinstance(cached, str) else None
    else:
        card = None
    metadata = _card_metadata(card)
    return {field: str(metadata[field]) for field in _LICENSE_FIELDS if metadata.get(field)}


def card_text(data: ModelCardData, body: str) -> str:
    """A Hub model card: ``data`` as YAML front matter, then the markdown ``body``."""
    return f"---\n{data.to_yaml()}\n---\n\n{body.strip()}\n"


def card_data(source: BaseModelSource, *, library_name: str, tags: list[str], **fields) -> ModelCardData:
    """The metadata every card of ours carries: the base model (a hub id, never a folder), library,
    pipeline tag, tags and the base model's license; ``fields`` adds the rest (datasets, eval_results…)."""
    return ModelCardData(base_model=source.hub_id, library_name=library_name, pipeline_tag=PIPELINE_TAG,
                         tags=tags, **base_model_license(source), **fields)


def adapter_usage(source: BaseModelSource) -> str:
    """The code block that loads adapters of ``source`` with plain peft (the trained temperature included)."""
    base = json.dumps(source.portable_name) + (f", revision={json.dumps(source.revision)}" if source.revision else "")
    return "\n".join([
        "```python",
        "from peft import PeftModel",
        "from transformers import CLIPModel, CLIPProcessor",
        "",
        f"base = CLIPModel.from_pretrained({base}, use_safetensors=True)",
        'model = PeftModel.from_pretrained(base, "<this folder>").merge_and_unload()',
        f"processor = CLIPProcessor.from_pretrained({base})",
        "```",
    ])
