"""The one base of the package's YAML-backed settings (experiment and augmentation configs).

A section forbids unknown keys (a typo fails with its dotted key instead of falling back to a
default), refuses inf and NaN, coerces nothing (``"yes"`` is not True, ``"3"`` is not 3) and is
frozen: a choice made later (a device's ``auto``, a resource's override) is a new object from
``model_copy(update=...)``, never an edit of a config someone else holds.  Pure pydantic: imports
nothing of this package, so ``data/`` and ``modeling/`` both build on it.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

# A float that YAML may hand over as text: YAML 1.1 (PyYAML) reads ``1e-4`` (no dot) as the string
# "1e-4", the way people write learning rates. Only numeric text passes; "fast" still fails.
YamlFloat = Annotated[float, Field(strict=False)]


class ConfigSection(BaseModel):
    """A strict, frozen config section: unknown keys, coercions and inf/NaN are validation errors."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)
