"""Config files into pydantic models, with errors that name the file, the field and the reason.

Shared by the hub and the edge agent, so both report a bad config the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError


class ConfigError(Exception):
    """A config file that cannot be used; the message says where and why."""


M = TypeVar("M", bound=BaseModel)


def load_model(path: Path | str, model: type[M]) -> M:
    """Read a YAML file into ``model``; every error names the file, the field path and the reason.

    Shared by the hub and the edge agent, so both report a bad config the same way.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read config: {exc.strerror or exc}") from None
    try:
        raw: Any = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{p}: top level must be a mapping, got {type(raw).__name__}")
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{p}: invalid config:\n{format_errors(exc)}") from None


def format_errors(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err["loc"]) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key (extra inputs are not permitted; check the spelling)"
        lines.append(f"  {loc}: {msg}")
    return "\n".join(lines)
