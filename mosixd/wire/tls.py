"""Node identity by mutual TLS: the cluster's certificate authority, node certificates, and
the gRPC credentials made of them.

``mosixd ca init`` makes a CA (an EC P-256 key and a self-signed certificate); ``mosixd ca
issue NODE`` a node's key and certificate, signed by it. A node certificate names its node
id as its common name and as a DNS name, so that a peer dialling a known node checks that
the certificate is that node's (``grpc.ssl_target_name_override``). It also carries
``GENERIC_NAME``, which a node dialling an address it cannot yet put a name on (a seed)
expects: any node of the cluster may answer there. Between nodes, both sides present a
certificate, and the serving side reads the caller's node id from it (``peer_node``).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

GENERIC_NAME = "mosix-node"
CA_CERT, CA_KEY = "ca.crt", "ca.key"
CA_YEARS, NODE_YEARS = 10, 2


class TlsError(Exception):
    """A certificate or key file is missing, unreadable or wrong (one-line message)."""


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """Where a node's TLS material lives."""

    ca: Path
    cert: Path
    key: Path


@dataclass(frozen=True, slots=True)
class TlsCredentials:
    """A node's TLS material, read: PEM bytes."""

    ca: bytes
    cert: bytes
    key: bytes

    def channel(self) -> grpc.ChannelCredentials:
        """Credentials to dial a peer: its certificate checked against the CA, ours shown."""
        return grpc.ssl_channel_credentials(root_certificates=self.ca, private_key=self.key,
                                            certificate_chain=self.cert)

    def server(self) -> grpc.ServerCredentials:
        """Credentials to serve peers: callers must show a certificate of the same CA."""
        return grpc.ssl_server_credentials([(self.key, self.cert)], root_certificates=self.ca,
                                           require_client_auth=True)


def read_file(path: Path, what: str, error: type[Exception] = TlsError) -> bytes:
    """The bytes of a key or certificate file; ``error`` with a one-line reason if it cannot be read."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise error(f"{what} {path} does not exist") from None
    except PermissionError:
        raise error(f"{what} {path} is not readable by this user") from None
    except IsADirectoryError:
        raise error(f"{what} {path} is a directory") from None


def load(files: TlsFiles) -> TlsCredentials:
    """Read and check a node's TLS files: the key must be private, the certificate the CA's."""
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

    ca = read_file(files.ca, "CA certificate")
    cert, key = read_file(files.cert, "certificate"), read_file(files.key, "key")
    mode = stat.S_IMODE(files.key.stat().st_mode)
    if mode & 0o077:
        raise TlsError(f"key {files.key} is readable by others (mode {mode:o}); chmod 600 it")
    try:
        ca_cert, node_cert = x509.load_pem_x509_certificate(ca), x509.load_pem_x509_certificate(cert)
        ca_public = ca_cert.public_key()
        assert isinstance(ca_public, ec.EllipticCurvePublicKey)
        node_cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, AssertionError) as exc:
        raise TlsError(f"certificate {files.cert} is not one of the CA in {files.ca} ({exc or 'not EC'})") from None
    except Exception as exc:  # cryptography's InvalidSignature and friends
        raise TlsError(f"certificate {files.cert} is not signed by the CA in {files.ca} ({type(exc).__name__})") from None
    return TlsCredentials(ca, cert, key)


def node_of(cert_pem: bytes) -> str:
    """The node id a certificate names (its common name)."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    names = x509.load_pem_x509_certificate(cert_pem).subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else ""


def peer_node(context: Any) -> str | None:
    """The node id in the certificate the caller of this RPC showed, or None without TLS."""
    auth = context.auth_context() or {}
    if auth.get("transport_security_type") != [b"ssl"]:
        return None
    names = auth.get("x509_common_name") or [b""]
    return names[0].decode(errors="replace")


# ---- making them (mosixd ca) -------------------------------------------------------------


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` (its directories made, owner-only), readable by its owner
    only. Atomic: a crash leaves the old file or the new one, never a part."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def _new_key() -> Any:
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def init_ca(directory: Path, name: str = "mosix cluster CA") -> Path:
    """Make a cluster CA in ``directory`` (refuses to overwrite one); returns its certificate."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID

    cert_path, key_path = directory / CA_CERT, directory / CA_KEY
    if cert_path.exists() or key_path.exists():
        raise TlsError(f"a CA already exists in {directory}; remove it first to make another")
    key = _new_key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=365 * CA_YEARS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    write_private(key_path, _pem_key(key))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path


def issue(ca_dir: Path, node_id: str, out_dir: Path, names: list[str] = ()) -> TlsFiles:  # type: ignore[assignment]
    """A key and certificate for ``node_id``, signed by the CA in ``ca_dir``, written to
    ``out_dir`` as ``<node_id>.crt`` and ``<node_id>.key`` (0600). ``names``: more host names
    or addresses the node is reached by (informative; peers check the node id)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca_cert = x509.load_pem_x509_certificate(read_file(ca_dir / CA_CERT, "CA certificate"))
    ca_key = serialization.load_pem_private_key(read_file(ca_dir / CA_KEY, "CA key"), password=None)
    alt: list[x509.GeneralName] = [x509.DNSName(node_id), x509.DNSName(GENERIC_NAME)]
    for name in names:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alt.append(x509.DNSName(name))
    key = _new_key()
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node_id)]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=365 * NODE_YEARS))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(alt), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))  # type: ignore[arg-type]
    files = TlsFiles(ca=ca_dir / CA_CERT, cert=out_dir / f"{node_id}.crt", key=out_dir / f"{node_id}.key")
    write_private(files.key, _pem_key(key))
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return files
