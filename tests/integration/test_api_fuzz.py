"""Property-based fuzzing of every OTT service through its own OpenAPI document.

schemathesis generates valid and invalid requests for every operation; we send them to the
real service processes with working credentials (so the handlers run, not just the token
check) and with none, and require that no answer is a server error.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from _labs import running_lab
from hypothesis import HealthCheck, given, settings

from labkit.clients import seed
from labkit.platform.layers import apis
from labkit.targets.local.target import LocalTarget

pytestmark = pytest.mark.integration

# Fewer examples under CI keeps the suite inside its budget; the property checked is the same.
EXAMPLES = int(os.environ.get("OTTLAB_FUZZ_EXAMPLES", "25" if os.environ.get("CI") else "60"))


@pytest.fixture(scope="module")
def apis_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalTarget, dict[str, str]]]:
    # Without the mesh: this fuzzes each service's own handlers, internal routes included, straight at its
    # port; behind sidecars most cases would stop at the AuthorizationPolicies (403), testing Envoy instead.
    with running_lab(tmp_path_factory.mktemp("fuzz"), 28400, ["apis"], seeded=True, mesh="off") as target:
        user = seed.USERS[0]
        login = httpx.post(f"{target.endpoint('auth')}/login", json={"email": user.email, "password": user.password},
                           timeout=10)
        login.raise_for_status()
        headers = {"Authorization": f"Bearer {login.json()['access_token']}", "X-Service-Token": target.service_token()}
        yield target, headers


def _fuzz(base_url: str, headers: dict[str, str] | None) -> list[str]:
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()

        @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def check(case: schemathesis.Case) -> None:
            response = case.call(base_url=base_url, headers=headers, timeout=15)
            if response.status_code >= 500:
                failures.append(f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:300]}")

        check()
    return failures


@pytest.mark.parametrize("credentials", [True, False], ids=["with-credentials", "without-credentials"])
@pytest.mark.parametrize("service", [s.name for s in apis.SERVICES])
def test_no_server_errors(apis_lab: tuple[LocalTarget, dict[str, str]], service: str, credentials: bool) -> None:
    """With working credentials the handlers run; without, only the token and schema checks do."""
    target, headers = apis_lab
    failures = _fuzz(target.endpoint(service), headers if credentials else None)
    assert not failures, "\n".join(failures[:20])
