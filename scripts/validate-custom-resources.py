#!/usr/bin/env python3
"""Validates custom resources against the openAPIV3Schema of their CRD, offline and strictly.

kubernetes-validate knows the built-in kinds only; this does for OpenGaussCluster objects what
the API server does with strict field validation: every field must be declared by the CRD's
schema (unknown fields are errors, as with `kubectl apply --validate=strict`), and types,
enums, ranges and patterns must hold. CEL rules (x-kubernetes-validations) are not evaluated
here; the operator's own validation, which the tests run on the same files, covers them.

Usage: validate-custom-resources.py CRD.yaml FILE...   (run with the .venv python)
Exits non-zero, naming each problem, when a document does not validate.
"""

import copy
import sys

import jsonschema
import yaml


def strict(schema):
    """Makes every object schema refuse undeclared properties, as strict field validation does."""
    schema = copy.deepcopy(schema)

    def walk(node):
        if isinstance(node, dict):
            if (
                node.get("type") == "object"
                and "properties" in node
                and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")
            ):
                node["additionalProperties"] = False
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return schema


def load_crd(path):
    with open(path) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    crds = [d for d in docs if d.get("kind") == "CustomResourceDefinition"]
    if len(crds) != 1:
        sys.exit(f"{path}: expected exactly one CustomResourceDefinition")
    crd = crds[0]
    group = crd["spec"]["group"]
    kind = crd["spec"]["names"]["kind"]
    schemas = {}
    for version in crd["spec"]["versions"]:
        schema = strict(version["schema"]["openAPIV3Schema"])
        # apiVersion, kind and metadata are the API server's own, not the CRD schema's.
        props = schema.setdefault("properties", {})
        props["apiVersion"] = {"type": "string"}
        props["kind"] = {"type": "string"}
        props["metadata"] = {"type": "object"}
        schemas[f"{group}/{version['name']}"] = schema
    return kind, schemas


def main(argv):
    if len(argv) < 3:
        sys.exit(__doc__)
    kind, schemas = load_crd(argv[1])
    failures = 0
    checked = 0
    for path in argv[2:]:
        with open(path) as f:
            docs = [d for d in yaml.safe_load_all(f) if d]
        for doc in docs:
            if doc.get("kind") != kind:
                continue
            name = doc.get("metadata", {}).get("name", "?")
            schema = schemas.get(doc.get("apiVersion"))
            if schema is None:
                print(f"ERROR {path}: {kind}/{name} has apiVersion {doc.get('apiVersion')!r}, "
                      f"which the CRD does not serve ({', '.join(schemas)})")
                failures += 1
                continue
            validator = jsonschema.Draft7Validator(schema)
            errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
            for e in errors:
                where = ".".join(str(p) for p in e.absolute_path) or "(top level)"
                print(f"ERROR {path}: {kind}/{name}: {where}: {e.message}")
            failures += len(errors)
            checked += 1
            if not errors:
                print(f"INFO {path}: {kind}/{name} validates against {argv[1]}")
    if checked == 0:
        print(f"ERROR no {kind} found in {' '.join(argv[2:])}")
        return 1
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
