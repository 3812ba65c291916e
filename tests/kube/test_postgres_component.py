"""The PostgreSQL option (k8s/components/postgres), offline: what it renders, and the kube target with it.

- added to every overlay, it renders with the pinned kubectl and every object validates
  strictly against the Kubernetes schemas, like the overlays themselves (test_manifests.py);
- it changes only what it must: the five services read ``OTT_DATABASE_URL`` from the Secret
  ``ott-postgres`` and no longer mount the SQLite claim, which is gone; it adds the server's
  Deployment, Service and claim, in the apis layer; every other object is the overlay's own;
- the server runs locked down, from a pinned official image, with the password of that Secret;
- the kube target generates the Secret (a URL the services' engine accepts) only with this
  option, and lets it through on a cluster of several nodes, where SQLite is refused.

Nothing here starts PostgreSQL: that is the kube tier's, on a real cluster.
"""

from __future__ import annotations

import base64
import functools
from typing import Any

import kubernetes_validate
import pytest
from test_kube_target import (
    APIS_SECRETS,
    FakeCluster,
    apis_target,
    serve_istio,
    settle_deployments,
)
from test_manifests import K8S_VERSION, NAMESPACE

from labkit.core.config import LabConfig
from labkit.core.errors import ConfigError
from labkit.platform.layers import apis
from labkit.targets.kube import manifest, secrets
from labkit.targets.kube.target import KubeTarget
from ott import db

SERVICES = [c.name for c in apis.SERVICES]
DB_CLAIM = "ott-db"
POSTGRES = secrets.POSTGRES
ADDED = {("Deployment", POSTGRES), ("Service", POSTGRES), ("PersistentVolumeClaim", POSTGRES)}


@functools.cache
def rendered(overlay: str, with_postgres: bool) -> tuple[dict[str, Any], ...]:
    components = manifest.DATABASES["postgres"] if with_postgres else ()
    return tuple(manifest.render(manifest.overlay_dir(overlay), components=components))


def by_ref(objects: tuple[dict[str, Any], ...]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(o["kind"], o["metadata"]["name"]): o for o in objects}


def container(deployment: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == name]
    return found


@pytest.mark.parametrize("overlay", manifest.overlays())
def test_with_every_overlay_it_renders_and_validates_strictly(overlay: str) -> None:
    problems = []
    for obj in rendered(overlay, True):
        try:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        except (kubernetes_validate.ValidationError, kubernetes_validate.SchemaNotFoundError) as exc:
            problems.append(f"{manifest.ref(obj)}: {exc.message}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("overlay", manifest.overlays())
def test_it_changes_the_services_database_and_nothing_else(overlay: str) -> None:
    plain, with_postgres = by_ref(rendered(overlay, False)), by_ref(rendered(overlay, True))
    assert set(with_postgres) == (set(plain) - {("PersistentVolumeClaim", DB_CLAIM)}) | ADDED
    for ref, obj in plain.items():
        if (ref[0] == "Deployment" and ref[1] in SERVICES) or ref == ("PersistentVolumeClaim", DB_CLAIM):
            continue
        assert with_postgres[ref] == obj, f"the component changed {ref}"
    for name in SERVICES:
        deployment = with_postgres[("Deployment", name)]
        env = {e["name"]: e for e in container(deployment, name)["env"]}
        assert env["OTT_DATABASE_URL"] == {
            "name": "OTT_DATABASE_URL", "valueFrom": {"secretKeyRef": {"name": POSTGRES, "key": "url"}}
        }
        volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
        assert "persistentVolumeClaim" not in volumes["db"] and "emptyDir" in volumes["db"], name
        # Apart from those two, the Deployment is the overlay's.
        before = plain[("Deployment", name)]
        assert {k: v for k, v in container(deployment, name).items() if k != "env"} == {
            k: v for k, v in container(before, name).items() if k != "env"
        }


def test_the_server_is_in_the_apis_layer_and_found_by_down() -> None:
    objects = by_ref(rendered("kind", True))
    for ref in ADDED:
        obj = objects[ref]
        assert obj["metadata"]["namespace"] == NAMESPACE
        labels = manifest.labels(obj)
        assert labels[manifest.PART_OF_LABEL] == manifest.PART_OF and labels[manifest.LAYER_LABEL] == "apis", ref
    pod_labels = objects[("Deployment", POSTGRES)]["spec"]["template"]["metadata"]["labels"]
    assert pod_labels[manifest.PART_OF_LABEL] == manifest.PART_OF, "`down` waits for the pods by this label"
    assert objects[("PersistentVolumeClaim", POSTGRES)]["spec"]["accessModes"] == ["ReadWriteOnce"]


def test_the_server_runs_locked_down_from_a_pinned_official_image_with_the_secrets_password() -> None:
    objects = by_ref(rendered("kind", True))
    deployment = objects[("Deployment", POSTGRES)]
    assert deployment["spec"]["strategy"]["type"] == "Recreate", "one server per data directory"
    pod = deployment["spec"]["template"]["spec"]
    server = container(deployment, "postgres")
    repository, _, tag = server["image"].partition(":")
    assert repository == "docker.io/library/postgres" and tag and tag != "latest"
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    context = server["securityContext"]
    assert context["readOnlyRootFilesystem"] is True and context["allowPrivilegeEscalation"] is False
    assert context["capabilities"]["drop"] == ["ALL"]
    assert server["resources"]["limits"]["memory"] and server["resources"]["requests"]["cpu"]
    env = {e["name"]: e for e in server["env"]}
    assert env["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": POSTGRES, "key": "password"}
    assert (env["POSTGRES_USER"]["value"], env["POSTGRES_DB"]["value"]) == (secrets.POSTGRES_USER, secrets.POSTGRES_DB)
    (port,) = server["ports"]
    service = objects[("Service", POSTGRES)]
    (service_port,) = service["spec"]["ports"]
    assert (service_port["port"], service_port["targetPort"]) == (secrets.POSTGRES_PORT, port["name"])
    assert port["containerPort"] == secrets.POSTGRES_PORT
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]


def test_the_generated_url_is_one_the_services_engine_accepts() -> None:
    data = secrets.postgres()
    password, url = data["password"].decode(), data["url"].decode()
    assert len(password) >= 32 and password.isalnum()
    engine = db.connect(url)
    try:
        assert (engine.dialect.name, engine.dialect.driver) == ("postgresql", "psycopg")
        assert (engine.url.host, engine.url.port) == (POSTGRES, secrets.POSTGRES_PORT)
        assert (engine.url.username, engine.url.password, engine.url.database) == (
            secrets.POSTGRES_USER, password, secrets.POSTGRES_DB
        )
    finally:
        engine.dispose()
    assert secrets.postgres()["password"] != data["password"], "a new password per lab"


def test_an_unknown_database_option_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(manifest.DATABASE_ENV, "mysql")
    with pytest.raises(ConfigError, match="sqlite, postgres"):
        manifest.database()
    monkeypatch.delenv(manifest.DATABASE_ENV)
    assert manifest.database() == "sqlite"


# -- the kube target with the option, against the fake API server -----------------------------


def test_up_with_postgres_creates_its_secret_and_goes_ahead_on_several_nodes(
    fake: FakeCluster, lab_cfg: LabConfig
) -> None:
    settle_deployments(serve_istio(fake))   # Istio installed: the lab's mesh (on by default) needs it
    for name in ("worker", "worker2", "worker3"):
        fake.put("v1/nodes", name, {"apiVersion": "v1", "kind": "Node", "spec": {}}, namespace=None)
    target = KubeTarget(lab_cfg.with_(ready_timeout=5.0), apis_target(fake, lab_cfg).components,
                        api_client=fake.api_client, overlay="kind", database="postgres")

    statuses = target.up(["apis"])

    assert statuses and all(s.healthy for s in statuses)
    applied = {(r.data["kind"], r.name) for r in fake.requests("PATCH")}
    assert applied >= ADDED and ("PersistentVolumeClaim", DB_CLAIM) not in applied
    created = {r.data["metadata"]["name"] for r in fake.requests("POST")}
    assert created == {*APIS_SECRETS, POSTGRES}
    stored = fake.stored("v1/secrets", POSTGRES)
    assert stored is not None
    url = base64.b64decode(stored["data"]["url"]).decode()
    password = base64.b64decode(stored["data"]["password"]).decode()
    assert url == f"postgresql+psycopg://ott:{password}@{POSTGRES}:5432/ott"


def test_up_with_sqlite_makes_no_postgres_secret(fake: FakeCluster, lab_cfg: LabConfig) -> None:
    settle_deployments(serve_istio(fake))   # Istio installed: the lab's mesh (on by default) needs it
    apis_target(fake, lab_cfg).up(["apis"])
    assert POSTGRES not in {r.data["metadata"]["name"] for r in fake.requests("POST")}
    assert ("Deployment", POSTGRES) not in {(r.data["kind"], r.name) for r in fake.requests("PATCH")}
