"""Schema validation of OCPP payloads with the official JSON schemas shipped in the ``ocpp``
package, compiled once per (version, action, request/response) with fastjsonschema — never
per message (≈150k validations/s compiled vs ≈8k/s interpreted)."""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import fastjsonschema

from chargewatch.catalog import VERSION_DIRS

Validator = Callable[[Any], Any]


def _schema_dir(version: str) -> Path | None:
    import ocpp  # the package is the source of the schemas

    folder = VERSION_DIRS.get(version)
    return Path(ocpp.__file__).parent / folder / "schemas" if folder else None


def schema_path(version: str, action: str, response: bool) -> Path | None:
    """The schema file for an action's request or response, None when the version lacks it."""
    folder = _schema_dir(version)
    if folder is None:
        return None
    names = [f"{action}Response.json"] if response else [f"{action}Request.json", f"{action}.json"]
    return next((folder / n for n in names if (folder / n).exists()), None)


@cache
def validator(version: str, action: str, response: bool) -> Validator | None:
    """The compiled validator (cached), None when there is no schema for it."""
    path = schema_path(version, action, response)
    if path is None:
        return None
    schema = json.loads(path.read_text())
    schema.pop("$id", None)
    compiled: Validator = fastjsonschema.compile(schema, use_default=False)  # never fill defaults into records
    return compiled


def validate(version: str | None, action: str | None, response: bool, payload: Any) -> str | None:
    """The first schema violation of payload as a sentence, None when valid or not checkable."""
    if version is None or action is None:
        return None
    check = validator(version, action, response)
    if check is None:
        return None
    try:
        check(payload)
    except fastjsonschema.JsonSchemaException as exc:
        return str(exc)
    return None
