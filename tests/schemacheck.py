"""The schema side of the hostile-input test: a message the daemon refused is refused by the
message schema too, or its reason is one of the checks the schema documents it cannot express."""

from __future__ import annotations

import json
import re

from clipper.schemas import load_schema, schema_error


def checks_beyond_schema() -> list[dict[str, str]]:
    return load_schema("message")["x-checks-beyond-schema"]


def explain_rejection(raw: bytes | str, reason: str) -> str | None:
    """Why a message the daemon refused with `reason` may pass the schema: None when the schema
    refuses it too (or it is not JSON), else the documented check whose error `reason` is."""
    try:
        message = json.loads(raw)
    except (ValueError, RecursionError):
        return None  # not JSON (or too deep to decode): no schema says anything about it
    if schema_error("message", message) is not None:
        return None
    for check in checks_beyond_schema():
        if re.search(check["error"], reason):
            return check["check"]
    raise AssertionError(f"the schema accepts a message the daemon refuses ({reason!r}), and no documented "
                         f"check beyond the schema explains it: {raw[:300]!r}")
