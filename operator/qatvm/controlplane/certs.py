"""The PKI a loopback control plane needs: one CA, a serving cert, client certs, an SA key pair."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALIDITY = datetime.timedelta(days=365)
SERVICE_CIDR = "10.0.0.0/24"
# The first address of the service range: the API server's own ClusterIP.
SERVICE_ADDRESS = "10.0.0.1"


@dataclass(frozen=True)
class KeyPair:
    cert: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    ca: KeyPair
    serving: KeyPair
    admin: KeyPair
    controller_manager: KeyPair
    service_account_key: Path
    service_account_pub: Path


def _write_key(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _name(common_name: str, organization: str | None = None) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    return x509.Name(attributes)


def _issue(
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
    extensions: list[tuple[x509.ExtensionType, bool]],
) -> x509.Certificate:
    issuer_name, issuer_key = issuer if issuer else (subject, key)
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
    )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(issuer_key, hashes.SHA256())


def _save(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey, directory: Path, stem: str) -> None:
    (directory / f"{stem}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(key, directory / f"{stem}.key")


def _layout(directory: Path) -> Pki:
    def pair(stem: str) -> KeyPair:
        return KeyPair(cert=directory / f"{stem}.crt", key=directory / f"{stem}.key")

    return Pki(
        ca=pair("ca"),
        serving=pair("apiserver"),
        admin=pair("admin"),
        controller_manager=pair("kube-controller-manager"),
        service_account_key=directory / "service-account.key",
        service_account_pub=directory / "service-account.pub",
    )


def ensure_pki(directory: Path) -> Pki:
    """The PKI in `directory`, created on first use and kept after, so a restarted control plane
    over the same etcd data still accepts the tokens and kubeconfigs it handed out before."""
    layout = _layout(directory)
    files = [layout.service_account_key, layout.service_account_pub]
    files += [p for kp in (layout.ca, layout.serving, layout.admin, layout.controller_manager) for p in (kp.cert, kp.key)]
    if all(path.exists() for path in files):
        return layout
    return _create_pki(directory)


def _create_pki(directory: Path) -> Pki:
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("qatvm-local-ca")
    ca_cert = _issue(
        ca_name,
        ca_key,
        None,
        [
            (x509.BasicConstraints(ca=True, path_length=None), True),
            (x509.KeyUsage(True, False, False, False, False, True, True, False, False), True),
        ],
    )
    _save(ca_cert, ca_key, directory, "ca")
    issuer = (ca_name, ca_key)

    def leaf(stem: str, subject: x509.Name, usage: x509.ObjectIdentifier, sans: list[x509.GeneralName]) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        extensions: list[tuple[x509.ExtensionType, bool]] = [
            (x509.BasicConstraints(ca=False, path_length=None), True),
            (x509.KeyUsage(True, False, True, False, False, False, False, False, False), True),
            (x509.ExtendedKeyUsage([usage]), False),
        ]
        if sans:
            extensions.append((x509.SubjectAlternativeName(sans), False))
        _save(_issue(subject, key, issuer, extensions), key, directory, stem)

    leaf(
        "apiserver",
        _name("kube-apiserver"),
        ExtendedKeyUsageOID.SERVER_AUTH,
        [
            x509.DNSName("localhost"),
            x509.DNSName("kubernetes.default.svc"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            # The `kubernetes` Service's address, which pods on real nodes are told to use.
            x509.IPAddress(ipaddress.ip_address(SERVICE_ADDRESS)),
        ],
    )
    # system:masters is the built-in group RBAC never restricts: the admin kubeconfig's identity.
    leaf("admin", _name("qatvm-admin", "system:masters"), ExtendedKeyUsageOID.CLIENT_AUTH, [])
    # The garbage collector must delete any kind, custom resources included, so the controller
    # manager gets unrestricted rights rather than the per-controller service accounts kubeadm uses.
    leaf(
        "kube-controller-manager",
        _name("system:kube-controller-manager", "system:masters"),
        ExtendedKeyUsageOID.CLIENT_AUTH,
        [],
    )

    # Service-account tokens are signed with RSA, which every token consumer accepts.
    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    sa_private, sa_public = directory / "service-account.key", directory / "service-account.pub"
    _write_key(sa_key, sa_private)
    sa_public.write_bytes(
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return _layout(directory)


def client_pair(directory: Path, stem: str, common_name: str, organization: str | None = None) -> KeyPair:
    """A client certificate signed by the PKI's CA in `directory`, issued once and kept."""
    pair = KeyPair(cert=directory / f"{stem}.crt", key=directory / f"{stem}.key")
    if pair.cert.exists() and pair.key.exists():
        return pair
    ca = _layout(directory).ca
    ca_cert = x509.load_pem_x509_certificate(ca.cert.read_bytes())
    ca_key = serialization.load_pem_private_key(ca.key.read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    extensions: list[tuple[x509.ExtensionType, bool]] = [
        (x509.BasicConstraints(ca=False, path_length=None), True),
        (x509.KeyUsage(True, False, True, False, False, False, False, False, False), True),
        (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False),
    ]
    _save(_issue(_name(common_name, organization), key, (ca_cert.subject, ca_key), extensions), key, directory, stem)
    return pair
