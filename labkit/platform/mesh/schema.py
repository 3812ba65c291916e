"""Istio resources checked offline against the CRD schemas of the pinned Istio (no cluster, no network).

``istio-crds.yaml`` beside this module holds the upstream CRDs of the four kinds the mesh uses,
at the version of Istio that ``ottlab addons install`` puts on a cluster (:data:`ISTIO_VERSION`).
An object is validated like ``kubectl apply --validate=strict`` would: against its version's
``openAPIV3Schema`` (jsonschema), an unknown field is an error, and the only CEL rule these
schemas repeat everywhere (a duration of at least 1 ms) is evaluated; their few other CEL rules
(selector wildcards, one of selector/targetRef) are not.

Example::

    problems = schema.problems(obj)   # [] when valid, else "virtualservice/x: spec.http.0.timeout: ..."
    schema.validate(obj)              # raises MeshConfigError naming every problem
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]  # no stubs; it comes with jupyterlab (the lab extra)
import yaml

from labkit.platform.mesh.errors import MeshConfigError
from labkit.platform.mesh.units import duration_seconds

ISTIO_VERSION = "1.25.2"
CRDS_FILE = Path(__file__).with_name("istio-crds.yaml")
_DURATION_RULE = "duration(self) >= duration('1ms')"


@functools.cache
def _schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """``(apiVersion, kind)`` -> the strict JSON schema of that version's ``openAPIV3Schema``."""
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for crd in yaml.safe_load_all(CRDS_FILE.read_text()):
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            root = _strict(version["schema"]["openAPIV3Schema"])
            # The API server adds these to every kind; a CRD's schema leaves them out.
            root["properties"] |= {"apiVersion": {"type": "string"}, "kind": {"type": "string"},
                                   "metadata": {"type": "object"}}
            found[(f"{group}/{version['name']}", kind)] = root
    return found


def kinds() -> set[tuple[str, str]]:
    """The ``(apiVersion, kind)`` pairs the vendored CRDs describe."""
    return set(_schemas())


def is_istio(obj: Mapping[str, Any]) -> bool:
    """Whether ``obj`` is of a group the vendored CRDs cover (another Istio kind is not: it is unknown)."""
    return str(obj.get("apiVersion", "")).split("/")[0] in {api.split("/")[0] for api, _ in _schemas()}


def _strict(schema: Any) -> Any:
    """A copy where an object with declared properties refuses others and int-or-string is typed.

    The API server prunes unknown fields silently; ``kubectl --validate=strict`` reports them,
    and so does this: a misspelt ``perTryTimout`` must not pass as "no retries".
    """
    schema = copy.deepcopy(schema)

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("x-kubernetes-int-or-string"):
                node.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
            if node.get("type") == "object" and "properties" in node and not node.get(
                "x-kubernetes-preserve-unknown-fields"
            ):
                node.setdefault("additionalProperties", False)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return schema


def _where(path: Any) -> str:
    return ".".join(str(p) for p in path) or "(the object)"


def _cel_problems(schema: Any, value: Any, path: list[str | int]) -> list[str]:
    """The duration rule, wherever the schema states it; recurses along the value."""
    problems: list[str] = []
    if not isinstance(schema, dict):
        return problems
    for rule in schema.get("x-kubernetes-validations", []):
        if rule.get("rule") == _DURATION_RULE and isinstance(value, str):
            try:
                seconds = duration_seconds(value)
            except MeshConfigError:
                problems.append(f"{_where(path)}: {value!r} {rule.get('message', 'is not a duration')}")
                continue
            if seconds < 0.001:
                problems.append(f"{_where(path)}: {value!r} {rule.get('message', 'is below 1ms')}")
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        for key, item in value.items():
            sub = properties.get(key, extra if isinstance(extra, dict) else None)
            problems += _cel_problems(sub, item, [*path, key])
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            problems += _cel_problems(schema["items"], item, [*path, index])
    return problems


def problems(obj: Mapping[str, Any]) -> list[str]:
    """What is wrong with ``obj`` by its CRD schema, one line each (``kind/name: field: why``); [] if valid."""
    kind = str(obj.get("kind", ""))
    name = str(obj.get("metadata", {}).get("name", "?"))
    ref = f"{kind.lower()}/{name}"
    schema = _schemas().get((str(obj.get("apiVersion", "")), kind))
    if schema is None:
        known = ", ".join(sorted(f"{k} ({a})" for a, k in _schemas()))
        return [f"{ref}: no Istio {ISTIO_VERSION} schema for apiVersion {obj.get('apiVersion')!r}, kind {kind!r} "
                f"(known: {known})"]
    validator = jsonschema.Draft7Validator(schema)
    found = [f"{ref}: {_where(e.absolute_path)}: {e.message}" for e in validator.iter_errors(dict(obj))]
    found += [f"{ref}: {p}" for p in _cel_problems(schema, dict(obj), [])]
    return sorted(found)


def validate(obj: Mapping[str, Any]) -> None:
    """Raise :class:`MeshConfigError` naming every schema problem of ``obj``."""
    found = problems(obj)
    if found:
        raise MeshConfigError("\n".join(found), hint=f"fix the resource: Istio {ISTIO_VERSION}'s CRD schema refuses it")
