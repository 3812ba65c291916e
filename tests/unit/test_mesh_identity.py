"""The lab CA: one per lab directory, workload certificates with SPIFFE identities, refusals that say why."""

from __future__ import annotations

import datetime as dt
import stat
from pathlib import Path

import pytest
from cryptography import x509

from labkit.platform.mesh import identity
from labkit.platform.mesh.errors import CertificateError

NOW = dt.datetime(2026, 12, 4, 12, 0, tzinfo=dt.UTC)


def test_the_ca_is_made_once_per_directory_with_a_private_key(tmp_path: Path) -> None:
    ca = identity.LabCA.ensure(tmp_path / "ca")
    again = identity.LabCA.ensure(tmp_path / "ca")
    assert again.certificate == ca.certificate
    assert stat.S_IMODE((tmp_path / "ca" / "ca-key.pem").stat().st_mode) == 0o600
    other = identity.LabCA.ensure(tmp_path / "other")
    assert other.certificate.subject != ca.certificate.subject, "two labs never share a CA name"
    assert ca.certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_a_workload_certificate_carries_only_its_spiffe_identity_and_is_short_lived(tmp_path: Path) -> None:
    ca = identity.LabCA.ensure(tmp_path / "ca", clock=lambda: NOW)
    issued = ca.issue("license")
    assert issued.identity == "spiffe://cluster.local/ns/ottlab/sa/license"
    certificate = x509.load_pem_x509_certificate(issued.chain.read_bytes())
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.UniformResourceIdentifier) == [issued.identity]
    assert certificate.not_valid_after_utc - NOW == identity.WORKLOAD_TTL
    assert stat.S_IMODE(issued.key.stat().st_mode) == 0o600
    assert ca.verify(issued.chain.read_bytes()) == issued.identity


def test_an_expired_certificate_is_refused_with_when_it_expired(tmp_path: Path) -> None:
    clock = [NOW]
    ca = identity.LabCA.ensure(tmp_path / "ca", clock=lambda: clock[0])
    issued = ca.issue("cas", ttl=dt.timedelta(minutes=5))
    clock[0] = NOW + dt.timedelta(minutes=6)
    with pytest.raises(CertificateError, match=r"the certificate expired at 2026-12-04 12:05:00 UTC"):
        ca.verify(issued.chain.read_bytes())


def test_a_certificate_of_another_lab_is_refused_as_foreign(tmp_path: Path) -> None:
    ca = identity.LabCA.ensure(tmp_path / "ca")
    foreign = identity.LabCA.ensure(tmp_path / "foreign").issue("license")
    with pytest.raises(CertificateError, match=r"was not issued by this lab's CA"):
        ca.verify(foreign.chain.read_bytes())


def test_a_certificate_must_live_some_time(tmp_path: Path) -> None:
    with pytest.raises(CertificateError, match="cannot live"):
        identity.LabCA.ensure(tmp_path / "ca").issue("cas", ttl=dt.timedelta(0))
