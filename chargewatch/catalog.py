"""Catalog of every OCPP action of 1.6, 2.0.1 and 2.1 with its direction.

The committed ``data/ocpp_catalog.json`` is built by :func:`build_catalog` from the JSON
schemas shipped in the PyPI ``ocpp`` package (the action list) and the direction table in
``data/ocpp-directions.json`` (who initiates each action). A test rebuilds it and fails on
drift. Run ``python -m chargewatch.catalog`` to regenerate it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

from chargewatch.errors import ChargewatchError
from chargewatch.model import Direction

VERSION_DIRS = {"1.6": "v16", "2.0.1": "v201", "2.1": "v21"}
CP_INITIATED = "CP->CSMS"
CSMS_INITIATED = "CSMS->CP"
BOTH = "both"


@dataclass(frozen=True, slots=True)
class ActionInfo:
    """One action of one OCPP version."""

    version: str
    action: str
    initiator: str  # CP->CSMS, CSMS->CP or both
    sensitivity: str
    send_only: bool

    def allowed_from(self, direction: Direction) -> bool:
        """True when a CALL of this action may travel in direction."""
        if self.initiator == BOTH:
            return True
        wanted = CP_INITIATED if direction is Direction.CP_TO_CSMS else CSMS_INITIATED
        return self.initiator == wanted


@dataclass(frozen=True)
class Catalog:
    """Lookup of actions by version."""

    actions: dict[str, dict[str, ActionInfo]]

    def get(self, version: str | None, action: str) -> ActionInfo | None:
        """The action's info for version, or None when the version does not define it."""
        if version is None:
            return None
        return self.actions.get(version, {}).get(action)

    def versions(self) -> list[str]:
        return sorted(self.actions)


def request_schema_action(filename: str) -> str:
    """Action of a request schema file: 1.6 names it ``Action.json``, 2.x ``ActionRequest.json``."""
    stem = filename.removesuffix(".json")
    return stem.removesuffix("Request") if stem.endswith("Request") else stem


def build_catalog(schema_root: Path, directions_file: Path) -> dict[str, list[dict[str, object]]]:
    """Actions per version from the ``ocpp`` package schemas, directions from the table."""
    table = json.loads(directions_file.read_text())
    out: dict[str, list[dict[str, object]]] = {}
    for version, folder in VERSION_DIRS.items():
        names = sorted(request_schema_action(p.name) for p in (schema_root / folder / "schemas").glob("*.json")
                       if not p.name.endswith("Response.json"))
        known = {row["action"]: row for row in table[folder]["actions"]}
        missing = [n for n in names if n not in known]
        if missing:
            raise ChargewatchError(f"{directions_file}: no direction for {version} actions {missing}")
        out[version] = [
            {"action": n, "initiator": known[n]["initiator"], "sensitivity": known[n]["sensitivity"],
             "send_only": bool(known[n]["send_only"])}
            for n in sorted(names)
        ]
    return out


@cache
def load_catalog() -> Catalog:
    """The committed catalog (loaded once, on first use)."""
    text = resources.files("chargewatch").joinpath("data/ocpp_catalog.json").read_text()
    raw = json.loads(text)
    actions = {
        version: {row["action"]: ActionInfo(version=version, action=row["action"], initiator=row["initiator"],
                                            sensitivity=row["sensitivity"], send_only=row["send_only"])
                  for row in rows}
        for version, rows in raw.items()
    }
    return Catalog(actions=actions)


def main() -> None:
    """Regenerate data/ocpp_catalog.json from the installed ``ocpp`` package."""
    import ocpp

    here = Path(__file__).parent / "data"
    built = build_catalog(Path(ocpp.__file__).parent, here / "ocpp-directions.json")
    (here / "ocpp_catalog.json").write_text(json.dumps(built, indent=1, sort_keys=True) + "\n")
    print({v: len(rows) for v, rows in built.items()})


if __name__ == "__main__":
    main()
