"""Keys, signatures and certificates (python3-cryptography).

- Ed25519 signing of remote config (contract §5): the signature covers exactly the document
  bytes carried, base64 (RFC 4648 §4, standard alphabet, with padding) in the envelope.
- A test PKI for mutual TLS (quality.md S2): CA, server, per-store clients, and the bad
  certificates tests need.
"""

import base64
import datetime
import ipaddress
import json
import os
from typing import Dict, List

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


class PkiError(Exception):
    pass


def _write(path: str, data: bytes, private: bool = False) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


# --- Ed25519 config signing -------------------------------------------------------------------

def keygen(out_dir: str, name: str = "signing") -> Dict[str, str]:
    """Writes NAME.key (PKCS#8 PEM, mode 0600) and NAME.pub (SubjectPublicKeyInfo PEM, what
    the agent's config.verify_key_file takes)."""
    os.makedirs(out_dir, exist_ok=True)
    key = ed25519.Ed25519PrivateKey.generate()
    priv = os.path.join(out_dir, f"{name}.key")
    pub = os.path.join(out_dir, f"{name}.pub")
    _write(priv, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption()), private=True)
    _write(pub, key.public_key().public_bytes(serialization.Encoding.PEM,
                                              serialization.PublicFormat.SubjectPublicKeyInfo))
    return {"private_key": priv, "public_key": pub}


def load_signing_key(path: str) -> ed25519.Ed25519PrivateKey:
    try:
        with open(path, "rb") as f:
            key = serialization.load_pem_private_key(f.read(), password=None)
    except (OSError, ValueError, TypeError) as e:
        raise PkiError(f"--key {path}: {e}") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise PkiError(f"--key {path}: not an Ed25519 private key")
    return key


def envelope(document: bytes, key: ed25519.Ed25519PrivateKey) -> Dict[str, str]:
    """{"document": base64(document), "signature": base64(Ed25519(document))}."""
    return {"document": base64.b64encode(document).decode("ascii"),
            "signature": base64.b64encode(key.sign(document)).decode("ascii")}


def config_document(version: int, settings: dict, expires_at: str = None) -> bytes:
    doc = {"version": version, "settings": settings}
    if expires_at:
        doc["expires_at"] = expires_at
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


# --- test PKI ---------------------------------------------------------------------------------

def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "omniedge central-sim"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _key():
    return ec.generate_private_key(ec.SECP256R1())


def _save(out: str, name: str, key, cert) -> None:
    _write(os.path.join(out, f"{name}.key"),
           key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()), private=True)
    _write(os.path.join(out, f"{name}.crt"), cert.public_bytes(serialization.Encoding.PEM))


def _ca(out: str, name: str, cn: str, days: int):
    key = _key()
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256()))
    _save(out, name, key, cert)
    return key, cert


def _leaf(out: str, name: str, cn: str, issuer, server: bool, not_before, not_after):
    """A server (SAN 127.0.0.1, ::1, localhost) or client certificate; issuer None = self-signed."""
    key = _key()
    issuer_key, issuer_cert = issuer if issuer else (key, None)
    builder = (x509.CertificateBuilder().subject_name(_name(cn))
               .issuer_name(issuer_cert.subject if issuer_cert else _name(cn))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(not_before).not_valid_after(not_after)
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage([
                   ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]),
                   critical=False))
    if issuer_cert:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_cert.public_key()),
            critical=False)
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName([
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("::1")), x509.DNSName("localhost")]),
            critical=False)
    cert = builder.sign(issuer_key, hashes.SHA256())
    _save(out, name, key, cert)
    return key, cert


def make_certs(out: str, stores: List[str], days: int = 30) -> Dict[str, str]:
    """Writes the whole test PKI into `out` (see README.md for the list); returns name → path
    and writes the same as manifest.json."""
    os.makedirs(out, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    valid = (now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=days))
    ca = _ca(out, "ca", "omniedge central-sim CA", days)
    _leaf(out, "server", "127.0.0.1", ca, True, *valid)
    for s in stores:
        _leaf(out, f"client-{s}", s, ca, False, *valid)
    _leaf(out, "client-selfsigned", stores[0] if stores else "store-1", None, False, *valid)
    _leaf(out, "client-expired", stores[0] if stores else "store-1", ca, False,
          now - datetime.timedelta(days=10), now - datetime.timedelta(days=1))
    other = _ca(out, "other-ca", "another CA", days)
    _leaf(out, "client-other-ca", stores[0] if stores else "store-1", other, False, *valid)
    rogue = _ca(out, "rogue-ca", "rogue CA", days)
    _leaf(out, "rogue-server", "127.0.0.1", rogue, True, *valid)
    _, revoked = _leaf(out, "client-revoked", stores[0] if stores else "store-1", ca, False, *valid)
    ca_key, ca_cert = ca
    crl = (x509.CertificateRevocationListBuilder().issuer_name(ca_cert.subject)
           .last_update(now - datetime.timedelta(minutes=5))
           .next_update(now + datetime.timedelta(days=days))
           .add_revoked_certificate(x509.RevokedCertificateBuilder()
                                    .serial_number(revoked.serial_number)
                                    .revocation_date(now - datetime.timedelta(minutes=5)).build())
           .add_extension(x509.CRLNumber(1), critical=False)
           .sign(ca_key, hashes.SHA256()))
    crl_pem = crl.public_bytes(serialization.Encoding.PEM)
    _write(os.path.join(out, "crl.pem"), crl_pem)
    with open(os.path.join(out, "ca.crt"), "rb") as f:
        _write(os.path.join(out, "ca+crl.pem"), f.read() + crl_pem)
    names = ["ca", "server"] + [f"client-{s}" for s in stores] + [
        "client-selfsigned", "client-expired", "other-ca", "client-other-ca", "rogue-ca",
        "rogue-server", "client-revoked"]
    manifest = {}
    for n in names:
        manifest[f"{n}.crt"] = os.path.join(out, f"{n}.crt")
        manifest[f"{n}.key"] = os.path.join(out, f"{n}.key")
    manifest["crl.pem"] = os.path.join(out, "crl.pem")
    manifest["ca+crl.pem"] = os.path.join(out, "ca+crl.pem")
    _write(os.path.join(out, "manifest.json"), json.dumps(manifest, indent=2).encode() + b"\n")
    return manifest
