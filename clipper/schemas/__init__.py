"""The JSON Schemas (draft 2020-12) of a message and of a result, shipped inside the package.

They are the contract for producers in any language (`clipper schema message|result` prints
them). The parser in `clipper.jobs.spec` stays the authority: the schema describes exactly the
messages it accepts, except for the checks listed under `x-checks-beyond-schema` (cross-field
rules, limits from the daemon's settings, what a source turns out to be), which the tests keep
honest in both directions.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterator
from importlib import resources
from typing import Any, Literal

import jsonschema
from jsonschema import Draft202012Validator, ValidationError

SchemaName = Literal["message", "result"]
SCHEMA_NAMES: tuple[SchemaName, ...] = ("message", "result")


@functools.cache
def schema_text(name: SchemaName) -> str:
    return resources.files(__package__).joinpath(f"{name}.json").read_text(encoding="utf-8")


def load_schema(name: SchemaName) -> dict[str, Any]:
    return json.loads(schema_text(name))


@functools.cache
def _ecma(pattern: str) -> re.Pattern[str]:
    # JSON Schema patterns are ECMA-262, where `$` is the end of the string; Python's `$` also
    # matches before a trailing newline, which would let "name\n" through.
    return re.compile(pattern[:-1] + r"\Z" if pattern.endswith("$") and not pattern.endswith("\\$") else pattern)


def _pattern(validator: Any, pattern: str, instance: Any, schema: dict[str, Any]) -> Iterator[ValidationError]:
    if validator.is_type(instance, "string") and not _ecma(pattern).search(instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


_EcmaValidator = jsonschema.validators.extend(Draft202012Validator, {"pattern": _pattern})


@functools.cache
def validator(name: SchemaName) -> Draft202012Validator:
    """A validator of the named schema with ECMA-262 `$` (what other languages' validators do)."""
    return _EcmaValidator(load_schema(name))


def schema_error(name: SchemaName, instance: Any) -> str | None:
    """None when `instance` is valid, else its most relevant problem, naming where it is."""
    error = jsonschema.exceptions.best_match(validator(name).iter_errors(instance))
    if error is None:
        return None
    return f"{'.'.join(map(str, error.absolute_path)) or name}: {error.message}"
