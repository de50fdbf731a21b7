"""Validates FIWARE keyValues entities against the vendored Smart Data Models schemas.

    validate.py ENTITIES.json [ENTITIES.json ...]

Each file holds a JSON array of entities; each entity is checked against the schema of its
`type` (tests/data/fiware/, with the schemas they reference resolved locally, never fetched).
Prints one line per problem and exits 1 if there is any, 0 when every entity is valid.
"""

import json
import pathlib
import sys

from jsonschema import Draft202012Validator, FormatChecker
from referencing import Registry
from referencing.jsonschema import DRAFT202012

DATA = pathlib.Path(__file__).resolve().parent.parent / "data" / "fiware"
MODELS = {
    "AirQualityObserved": "AirQualityObserved.schema.json",
    "WaterQualityObserved": "WaterQualityObserved.schema.json",
    "TrafficFlowObserved": "TrafficFlowObserved.schema.json",
    "Device": "Device.schema.json",
}
# Where the schemas' absolute $refs point, and the vendored copy of each (SOURCES.md).
REFERENCED = {
    "https://smart-data-models.github.io/data-models/common-schema.json": "common-schema.json",
    "https://raw.githubusercontent.com/smart-data-models/dataModel.Environment/master/Environment-schema.json": "Environment-schema.json",
    "https://smart-data-models.github.io/dataModel.Environment/Environment-schema.json": "Environment-schema.json",
    "https://smart-data-models.github.io/dataModel.Device/device-schema.json": "device-schema.json",
}


def load(name):
    return json.loads((DATA / name).read_text(encoding="utf-8"))


def registry():
    # Several files declare "http://json-schema.org/schema#", which names no draft: read as 2020-12.
    resources = [(url, DRAFT202012.create_resource(load(f))) for url, f in REFERENCED.items()]
    return Registry().with_resources(resources)


def main(paths):
    reg = registry()
    validators = {
        t: Draft202012Validator(load(f), registry=reg, format_checker=FormatChecker())
        for t, f in MODELS.items()
    }
    problems = 0
    checked = 0
    for path in paths:
        for i, entity in enumerate(json.loads(pathlib.Path(path).read_text(encoding="utf-8"))):
            validator = validators.get(entity.get("type"))
            if validator is None:
                print(f"{path}[{i}]: no schema for type {entity.get('type')!r}")
                problems += 1
                continue
            for error in validator.iter_errors(entity):
                where = "/".join(str(p) for p in error.absolute_path) or "(entity)"
                print(f"{path}[{i}] {entity.get('id')}: {where}: {error.message}")
                problems += 1
            checked += 1
    print(f"{checked} entities checked, {problems} problems")
    return 1 if problems or not checked else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
