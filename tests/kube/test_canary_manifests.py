"""catalog's second release (k8s/components/canary), offline: it renders, validates, is catalog but its release.

The canary of notebook 05 is catalog's own Deployment with OTT_VERSION=v2 and the pod label
version: v2; the Service catalog selects both releases' pods and the DestinationRule catalog's
subsets tell them apart. With the canary rendered, a VirtualService sending part of catalog's
requests to v2 is a mesh without a problem; without it, the same route is refused naming the subset.
"""

from __future__ import annotations

import copy
import functools
from typing import Any

import pytest
from test_manifests import schema_problems

from labkit.platform.mesh import resources, schema
from labkit.targets.kube import manifest


@functools.cache
def rendered(overlay: str, components: tuple[str, ...]) -> tuple[dict[str, Any], ...]:
    return tuple(manifest.render(manifest.overlay_dir(overlay), components=components))


def deployment(objects: tuple[dict[str, Any], ...], name: str) -> dict[str, Any]:
    return copy.deepcopy(next(o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == name))


def canary_route(weight_v2: int) -> dict[str, Any]:
    (vs,) = [copy.deepcopy(v) for v in resources.load().of_kind("VirtualService") if v["metadata"]["name"] == "catalog"]
    destination = vs["spec"]["http"][0]["route"][0]
    vs["spec"]["http"][0]["route"] = [
        {**destination, "weight": 100 - weight_v2},
        {"destination": {**destination["destination"], "subset": "v2"}, "weight": weight_v2},
    ]
    return vs


@pytest.mark.parametrize("overlay", manifest.overlays())
@pytest.mark.parametrize("components", [("canary", "mesh"), ("canary", "postgres", "mesh")])
def test_catalog_v2_validates_and_is_catalog_but_for_its_release(overlay: str, components: tuple[str, ...]) -> None:
    objects = rendered(overlay, components)
    problems = [p for obj in objects for p in schema_problems(obj)]
    assert not problems, "\n".join(problems)
    v1, v2 = deployment(objects, "catalog"), deployment(objects, "catalog-v2")
    assert v1["spec"]["template"]["metadata"]["labels"].pop("version") == "v1"
    assert v2["spec"]["template"]["metadata"]["labels"].pop("version") == "v2"
    assert v2["spec"]["selector"]["matchLabels"] == {manifest.NAME_LABEL: "catalog", "version": "v2"}
    env = v2["spec"]["template"]["spec"]["containers"][0]["env"]
    assert env.pop() == {"name": "OTT_VERSION", "value": "v2"}
    # The same pods but for the release: template, image, command, environment, probes, identity.
    assert v2["spec"]["template"]["spec"]["containers"][0].pop("imagePullPolicy") == "IfNotPresent"
    v1["spec"]["template"]["spec"]["containers"][0].pop("imagePullPolicy", None)
    for each in (v1, v2):
        # The overlay's own annotations are added to what it holds, not to a component's objects.
        annotations = each["spec"]["template"]["metadata"]["annotations"]
        each["spec"]["template"]["metadata"]["annotations"] = {
            k: v for k, v in annotations.items() if not k.startswith("ottlab.io/")}
    assert v2["spec"]["template"] == v1["spec"]["template"]
    assert v2["spec"]["replicas"] == v1["spec"]["replicas"]
    service = next(o for o in objects if o["kind"] == "Service" and o["metadata"]["name"] == "catalog")
    assert all(v2["spec"]["template"]["metadata"]["labels"].get(k) == v for k, v in service["spec"]["selector"].items())


@pytest.mark.parametrize("overlay", manifest.overlays())
def test_a_route_to_v2_is_a_mesh_without_problem_only_with_the_canary_rendered(overlay: str) -> None:
    shifted = resources.load().replaced(canary_route(10))
    with_canary = resources.Topology.of(rendered(overlay, ("canary", "mesh")))
    without = resources.Topology.of(rendered(overlay, ("mesh",)))
    assert resources.problems(shifted, with_canary) == []
    assert resources.problems(resources.load(), without) == []      # the committed mesh: all to v1
    (problem,) = resources.problems(shifted, without)
    assert problem.startswith("virtualservice/catalog: spec.http.0.route.1.destination.subset: the subset 'v2' of "
                              "'catalog' selects no pod")
    objects = [o for o in rendered(overlay, ("canary", "mesh")) if schema.is_istio(o)]
    assert {o["metadata"]["name"] for o in objects} == {o["metadata"]["name"] for o in resources.load().objects}
