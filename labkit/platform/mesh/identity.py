"""The lab's certificate authority and the workloads' identities, in the SPIFFE form Istio uses.

Each lab makes its own CA the first time it is asked for one (an EC P-256 key and a self-signed
certificate in ``<directory>/ca.pem``, the key readable by its owner only); it is never committed
and never shared between labs. It issues each workload a short-lived certificate (24 h by default,
Istio's own default) whose only name is the URI SAN ``spiffe://cluster.local/ns/<ns>/sa/<account>``:
the identity Envoy presents in mutual TLS and an AuthorizationPolicy names (without ``spiffe://``).

Example::

    ca = identity.LabCA.ensure(lab_dir / "mesh" / "ca")
    cert = ca.issue("license")                 # files under .../ca/workloads/license/
    ca.verify(cert.chain.read_bytes())         # "spiffe://cluster.local/ns/ottlab/sa/license"
"""

from __future__ import annotations

import datetime as dt
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from labkit.platform.mesh.errors import CertificateError
from labkit.platform.mesh.resources import NAMESPACE, TRUST_DOMAIN

WORKLOAD_TTL = dt.timedelta(hours=24)
CA_TTL = dt.timedelta(days=365)
# Issued a little in the past: a peer whose clock is a few seconds behind still accepts it.
BACKDATE = dt.timedelta(minutes=1)

Clock = Callable[[], dt.datetime]


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def spiffe_id(account: str, namespace: str = NAMESPACE, trust_domain: str = TRUST_DOMAIN) -> str:
    """``spiffe://cluster.local/ns/ottlab/sa/<account>``: a workload's identity."""
    return f"spiffe://{trust_domain}/ns/{namespace}/sa/{account}"


@dataclass(frozen=True)
class WorkloadCertificate:
    """A workload's files: its certificate, its private key, and the CA certificate its peers must chain to."""

    identity: str
    chain: Path
    key: Path
    ca: Path
    not_after: dt.datetime


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


class LabCA:
    """One lab's CA: ``directory/ca.pem`` and ``directory/ca-key.pem``; it issues and verifies identities."""

    def __init__(self, directory: Path, certificate: x509.Certificate, key: ec.EllipticCurvePrivateKey,
                 *, clock: Clock = utc_now) -> None:
        self.directory = directory
        self.certificate = certificate
        self._key = key
        self.clock = clock

    @property
    def cert_file(self) -> Path:
        return self.directory / "ca.pem"

    @classmethod
    def ensure(cls, directory: Path, *, clock: Clock = utc_now) -> LabCA:
        """The CA in ``directory``, made there first if it has none."""
        cert_file, key_file = directory / "ca.pem", directory / "ca-key.pem"
        if cert_file.is_file() and key_file.is_file():
            certificate = x509.load_pem_x509_certificate(cert_file.read_bytes())
            key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
            if not isinstance(key, ec.EllipticCurvePrivateKey):
                raise CertificateError(f"{key_file} is not an EC private key",
                                       hint=f"remove {directory} to make a new lab CA (and re-issue every workload)")
            return cls(directory, certificate, key, clock=clock)
        key = ec.generate_private_key(ec.SECP256R1())
        now = clock()
        # A random name: a certificate of another lab's CA never chains here, even by name.
        name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ottlab"),
                          x509.NameAttribute(NameOID.COMMON_NAME, f"ottlab mesh CA {secrets.token_hex(4)}")])
        certificate = (
            x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE).not_valid_after(now + CA_TTL)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        _write_private(key_file, _key_pem(key))
        cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        return cls(directory, certificate, key, clock=clock)

    def issue(self, account: str, *, namespace: str = NAMESPACE, ttl: dt.timedelta = WORKLOAD_TTL,
              directory: Path | None = None) -> WorkloadCertificate:
        """A fresh certificate for ``account``, valid ``ttl`` from now, in ``directory`` (``workloads/<account>``)."""
        if ttl <= dt.timedelta(0):
            raise CertificateError(f"a certificate for {account!r} cannot live {ttl}", hint="give a positive ttl")
        identity = spiffe_id(account, namespace)
        key = ec.generate_private_key(ec.SECP256R1())
        now = self.clock()
        not_after = now + ttl
        certificate = (
            x509.CertificateBuilder().subject_name(x509.Name([]))
            .issuer_name(self.certificate.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE).not_valid_after(not_after)
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity)]), critical=True)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=True,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        where = directory or self.directory / "workloads" / account
        where.mkdir(parents=True, exist_ok=True)
        chain, key_file = where / "cert-chain.pem", where / "key.pem"
        _write_private(key_file, _key_pem(key))
        chain.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        return WorkloadCertificate(identity, chain, key_file, self.cert_file, not_after)

    def verify(self, pem: bytes) -> str:
        """The SPIFFE identity of a certificate this CA issued and that is valid now; else :class:`CertificateError`."""
        certificate = x509.load_pem_x509_certificate(pem)
        try:
            certificate.verify_directly_issued_by(self.certificate)
        except (ValueError, TypeError, InvalidSignature):
            raise CertificateError(
                f"the certificate of {certificate.issuer.rfc4514_string() or 'an unnamed issuer'} was not issued by "
                f"this lab's CA ({self.certificate.subject.rfc4514_string()})",
                hint="a workload of another lab or CA has no identity here: issue it one from this lab's CA",
            ) from None
        now = self.clock()
        if now > certificate.not_valid_after_utc:
            raise CertificateError(f"the certificate expired at {certificate.not_valid_after_utc:%Y-%m-%d %H:%M:%S} "
                                   f"UTC (now {now:%Y-%m-%d %H:%M:%S} UTC)", hint="issue the workload a fresh one")
        if now < certificate.not_valid_before_utc:
            raise CertificateError(f"the certificate is not valid before {certificate.not_valid_before_utc} "
                                   f"(now {now})", hint="check the machine's clock")
        try:
            names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            names = x509.SubjectAlternativeName([])
        uris = [u for u in names.get_values_for_type(x509.UniformResourceIdentifier) if u.startswith("spiffe://")]
        if len(uris) != 1:
            raise CertificateError(f"the certificate carries {len(uris)} SPIFFE identities, not one",
                                   hint="issue it with LabCA.issue")
        return uris[0]
