"""The lab's Secrets, generated per lab and never committed to ``k8s/``, each for the layers that mount it.

- ``ott-signing-key`` (apis): auth's EC P-256 private key, PKCS#8 PEM under the key
  ``signing-key.pem`` (the file ``ott.tokens.SigningKey.load_or_create`` reads and writes);
- ``ott-service-token`` (apis): the lab's service-to-service token under the key ``token``
  (``ott.internal`` reads it from ``OTT_SERVICE_TOKEN_FILE``);
- ``ott-url-signing`` (cdn): the lab's URL-signing secret (:mod:`ott.signing`), under the key
  ``secure-link.conf`` as the nginx line the edges include (``labkit.platform.layers.cdn.secure_link_directive``)
  and raw under the key ``secret``;
- ``ott-postgres`` (apis, only when an applied object refers to it: the PostgreSQL option,
  ``k8s/components/postgres``): the database password under ``password`` and the services'
  SQLAlchemy URL under ``url``.

The kube target creates those of the layers it applies before it applies their pods, and only
when they are missing: a plain create (POST), never an apply, so an existing key survives every
later ``up`` and what it signed stays valid. They carry the lab's labels, so ``down --purge``
deletes them with the rest (a plain ``down`` keeps them).

Example::

    created = ensure(cluster, "ottlab", ["apis"])  # ["ott-signing-key", "ott-service-token"] the first time
    ensure(cluster, "ottlab", ["apis"])            # [] from then on
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from labkit.core.errors import KubeError
from labkit.platform.layers import cdn
from labkit.targets.kube import manifest
from labkit.targets.kube.cluster import SECRETS, Cluster
from labkit.targets.kube.manifest import KubeObject

# The layer whose pods mount the signing key and the service token.
LAYER = "apis"
SIGNING_KEY = "ott-signing-key"
# ott.tokens.KEY_FILE (a test checks they agree; labkit does not import the services).
SIGNING_KEY_FILE = "signing-key.pem"
SERVICE_TOKEN = "ott-service-token"
SERVICE_TOKEN_KEY = "token"
# The CDN layer's: its pods include URL_SIGNING_DIRECTIVE_KEY (labkit.platform.layers.cdn.KUBE_SECRET_INCLUDE).
CDN_LAYER = cdn.LAYER.name
URL_SIGNING = "ott-url-signing"
URL_SIGNING_DIRECTIVE_KEY = "secure-link.conf"
URL_SIGNING_SECRET_KEY = "secret"
# The PostgreSQL option's: the server's user, database and Service (k8s/components/postgres/postgres.yaml).
POSTGRES = "ott-postgres"
POSTGRES_USER = "ott"
POSTGRES_DB = "ott"
POSTGRES_PORT = 5432


def signing_key_pem() -> bytes:
    """A new EC P-256 private key, unencrypted PKCS#8 PEM, as auth itself would write it."""
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def service_token() -> str:
    """A new service-to-service token: 32 random bytes, URL-safe base64."""
    return secrets.token_urlsafe(32)


def url_signing() -> dict[str, bytes]:
    """A new URL-signing secret (32 random bytes, URL-safe base64), as the edges and the signer read it.

    ``secure-link.conf`` is the nginx line the edges include; ``secret`` is the same secret raw,
    for the license service, which will sign the playback URLs with it (:func:`ott.signing.token`).
    """
    secret_value = secrets.token_urlsafe(32)
    return {
        URL_SIGNING_DIRECTIVE_KEY: cdn.secure_link_directive(secret_value).encode("ascii"),
        URL_SIGNING_SECRET_KEY: secret_value.encode("ascii"),
    }


def postgres() -> dict[str, bytes]:
    """A new database password (hex, so the URL needs no escaping) and the services' URL with it."""
    password = secrets.token_hex(24)
    url = f"postgresql+psycopg://{POSTGRES_USER}:{password}@{POSTGRES}:{POSTGRES_PORT}/{POSTGRES_DB}"
    return {"password": password.encode("ascii"), "url": url.encode("ascii")}


@dataclass(frozen=True)
class LabSecret:
    """A Secret labkit generates: its name, the layers whose pods need it, and what it holds."""

    name: str
    # The first one labels the Secret.
    layers: tuple[str, ...]
    make: Callable[[], dict[str, bytes]]
    # Made only when an applied object refers to it (an option of the manifests, not the default).
    optional: bool = False


# What each Secret holds, made only when the Secret has to be created.
LAB_SECRETS: tuple[LabSecret, ...] = (
    LabSecret(SIGNING_KEY, (LAYER,), lambda: {SIGNING_KEY_FILE: signing_key_pem()}),
    LabSecret(SERVICE_TOKEN, (LAYER,), lambda: {SERVICE_TOKEN_KEY: service_token().encode("ascii")}),
    # The edges check signed URLs with it, license (apis) signs them.
    LabSecret(URL_SIGNING, (CDN_LAYER, LAYER), url_signing),
    LabSecret(POSTGRES, (LAYER,), postgres, optional=True),
)
# The Secrets every lab gets; the optional ones come with the option that refers to them.
NAMES = tuple(s.name for s in LAB_SECRETS if not s.optional)


def secret(name: str, data: dict[str, bytes], layer: str = LAYER) -> KubeObject:
    """An Opaque Secret ``name`` holding ``data``, labelled as an object of ``layer``."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": name,
            "labels": {
                manifest.PART_OF_LABEL: manifest.PART_OF,
                manifest.LAYER_LABEL: layer,
                manifest.NAME_LABEL: name,
            },
            "annotations": {"ottlab.io/note": "generated by labkit for this lab; delete it to rotate"},
        },
        "type": "Opaque",
        "data": {key: base64.b64encode(value).decode("ascii") for key, value in data.items()},
    }


def layers_of(objects: Iterable[KubeObject]) -> set[str]:
    """The layers that ``objects`` belong to (by their layer label)."""
    return {str(layer) for obj in objects if (layer := manifest.labels(obj).get(manifest.LAYER_LABEL))}


def needed_by(objects: Iterable[KubeObject]) -> bool:
    """Whether ``objects`` include a layer whose pods mount one of these Secrets."""
    wanted = layers_of(objects)
    return any(wanted.intersection(s.layers) for s in LAB_SECRETS)


def referenced_by(objects: Iterable[KubeObject]) -> set[str]:
    """The Secrets the pods of ``objects`` refer to: secret volumes, ``secretKeyRef`` and ``secretRef``."""
    names: set[str] = set()

    def walk(node: object) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "secret" and isinstance(value, dict) and value.get("secretName"):
                    names.add(str(value["secretName"]))
                elif key in ("secretKeyRef", "secretRef") and isinstance(value, dict) and value.get("name"):
                    names.add(str(value["name"]))
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    for obj in objects:
        walk(obj.get("spec"))
    return names


def ensure(
    cluster: Cluster, namespace: str, layers: Iterable[str] | None = None, *, referenced: Iterable[str] = ()
) -> list[str]:
    """Create each Secret of ``layers`` (every one when None) that ``namespace`` lacks; the names of those created.

    An optional Secret is created only when it is in ``referenced`` (:func:`referenced_by`).
    An existing Secret is left as it is, whatever it holds. Two ``up`` racing are safe: the
    loser's create fails (409), finds the winner's Secret, and uses it.
    """
    wanted = None if layers is None else set(layers)
    refers = set(referenced)
    created = []
    for lab_secret in LAB_SECRETS:
        if wanted is not None and not wanted.intersection(lab_secret.layers):
            continue
        if lab_secret.optional and lab_secret.name not in refers:
            continue
        name = lab_secret.name
        if cluster.get(SECRETS, name, namespace) is not None:
            continue
        try:
            cluster.create(SECRETS, secret(name, lab_secret.make(), lab_secret.layers[0]), namespace)
        except KubeError:
            if cluster.get(SECRETS, name, namespace) is None:
                raise
            continue
        created.append(name)
    return created
