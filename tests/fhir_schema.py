"""The official FHIR R4 (4.0.1) JSON schema (vendored: tests/fixtures/fhir-r4/README.md) as a validator
that is not fhir.resources: ``jsonschema`` (draft-06), one compiled validator per resource type."""

from __future__ import annotations

import gzip
import json
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft6Validator

SCHEMA_PATH = Path(__file__).parent / "fixtures" / "fhir-r4" / "fhir.schema.json.gz"
# The one gap of this schema build: its FHIRVersion enum stops at 3.5.0 (generated before the R4 release
# codes were added to the value set), so 4.0.1 itself is accepted there and nothing else is excused.
RELEASE = "4.0.1"


@cache
def r4_schema() -> dict[str, Any]:
    return json.loads(gzip.decompress(SCHEMA_PATH.read_bytes()))


@cache
def _validator(resource_type: str) -> Draft6Validator:
    schema = r4_schema()
    assert resource_type in schema["definitions"], f"{resource_type} is not an R4 resource"
    return Draft6Validator({"$ref": f"#/definitions/{resource_type}", "definitions": schema["definitions"]})


def r4_errors(resource: dict[str, Any]) -> list[str]:
    """Every R4 schema violation of ``resource`` (and of each Bundle entry's resource), as path: message."""
    errors = []
    kind = resource.get("resourceType", "?")
    if kind == "Bundle":  # each entry against its own type: the schema's oneOf over all types says too little
        for i, entry in enumerate(resource.get("entry", [])):
            errors += [f"entry[{i}].resource.{e}" for e in r4_errors(entry["resource"])]
        resource = {
            **resource,
            "entry": [{k: v for k, v in e.items() if k != "resource"} for e in resource.get("entry", [])],
        }
    for error in _validator(kind).iter_errors(resource):
        if error.instance == RELEASE and list(error.absolute_path) == ["fhirVersion"]:
            continue
        errors.append(f"{kind}.{'.'.join(str(p) for p in error.absolute_path)}: {error.message[:200]}")
    return errors
