"""TLS and node-authentication credentials for a RobustFL deployment.

    python -m deploy.certs --out certs --san superlink --san 10.0.0.5 --nodes 10

writes, into --out:
  ca.crt, ca.key          a private certificate authority (keep ca.key offline)
  server.pem, server.key  the SuperLink's certificate, with a SAN for every name or IP
                          address that SuperNodes and the flwr CLI dial (127.0.0.1 and
                          localhost are always included)
  node-<i>, node-<i>.pub  one ECDSA P-384 key pair per SuperNode (OpenSSH format), for
                          `flwr supernode register node-<i>.pub` and
                          `flower-supernode --auth-supernode-private-key node-<i>`
Only what is missing is made, and each file only from what it needs: node keys are
independent of the CA (add nodes later with ca.key kept offline: `--nodes 12` makes node-10
and node-11), the CA is made only when none of ca.crt, ca.key, server.pem, server.key exists,
and ca.key is read only to issue server.pem (when it is missing, or with --renew-server).
An existing node key is never replaced (delete node-<i> to replace it); --new-ca replaces the
CA and the server certificate.
Private keys are created with mode 0600, never readable by others, not even briefly.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import ipaddress
import os
import secrets
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_DAYS = 365


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _san(entries: list[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for entry in dict.fromkeys(["127.0.0.1", "localhost", *entries]):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(entry)))
        except ValueError:
            names.append(x509.DNSName(entry))
    return x509.SubjectAlternativeName(names)


def _write_private(path: Path, data: bytes) -> None:
    """Write a private key that is 0600 from its first byte: created with that mode (O_EXCL,
    so never an existing file's wider mode) under a temporary name, then renamed over `path`."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _pem_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM,
                             serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption())


def make_ca(out: Path, days: int) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP384R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name("RobustFL CA"))
            .issuer_name(_name("RobustFL CA")).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(key, hashes.SHA384()))
    (out / "ca.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_private(out / "ca.key", _pem_key(key))
    return cert, key


def make_server_cert(out: Path, ca_cert, ca_key, sans: list[str], days: int) -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name(sans[0] if sans else "localhost"))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(_san(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA384()))
    (out / "server.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_private(out / "server.key", _pem_key(key))


def _node_public(key, name: str) -> bytes:
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH)
    return public + f" {name}\n".encode()


def make_node_key(out: Path, name: str) -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    _write_private(out / name, key.private_bytes(serialization.Encoding.PEM,
                                                 serialization.PrivateFormat.OpenSSH,
                                                 serialization.NoEncryption()))
    (out / f"{name}.pub").write_bytes(_node_public(key, name))


def restore_node_public(out: Path, name: str) -> None:
    """node-<i>.pub again from the node's existing private key (the key itself is kept)."""
    key = serialization.load_ssh_private_key((out / name).read_bytes(), None)
    (out / f"{name}.pub").write_bytes(_node_public(key, name))


class MissingCA(RuntimeError):
    """The server certificate must be issued, but the CA files are not in the folder."""


def load_ca(out: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    missing = [name for name in ("ca.crt", "ca.key") if not (out / name).is_file()]
    if missing:
        raise MissingCA(
            f"{' and '.join(missing)} missing in {out}, but the SuperLink's certificate "
            "(server.pem, server.key) must be issued, which needs the CA: copy ca.crt and ca.key "
            "back into this folder from where you keep them, or pass --new-ca for a new CA "
            "(every node and the flwr CLI then need the new ca.crt)")
    return (x509.load_pem_x509_certificate((out / "ca.crt").read_bytes()),
            serialization.load_pem_private_key((out / "ca.key").read_bytes(), None))


def generate(out: Path, sans: list[str], nodes: int, days: int = DEFAULT_DAYS,
             new_ca: bool = False, renew_server: bool = False,
             extra_keys: tuple[str, ...] = ()) -> list[Path]:
    """Create what is missing; return the files written.

    Each artefact needs only what it depends on: the CA is made for a fresh folder (or with
    new_ca), the server certificate when it is missing (or renewed, or the CA is new) and only
    then reads ca.key; node keys are independent of both, so nodes can be added while ca.key
    is offline. An existing node key is never replaced."""
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    tls_files = [out / n for n in ("ca.crt", "ca.key", "server.pem", "server.key")]
    if new_ca or not any(p.exists() for p in tls_files):
        make_ca(out, days)
        written += tls_files[:2]
    server = tls_files[2:]
    if new_ca or renew_server or not all(p.exists() for p in server):
        ca_cert, ca_key = load_ca(out)
        make_server_cert(out, ca_cert, ca_key, sans, days)
        written += server
    for name in [f"node-{i}" for i in range(nodes)] + list(extra_keys):
        if not (out / name).exists():
            make_node_key(out, name)
            written += [out / name, out / f"{name}.pub"]
        elif not (out / f"{name}.pub").exists():
            restore_node_public(out, name)
            written.append(out / f"{name}.pub")
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.certs", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="certs", help="output folder (default ./certs)")
    parser.add_argument("--san", action="append", default=[], metavar="NAME_OR_IP",
                        help="a DNS name or IP the SuperLink is reached at; repeatable")
    parser.add_argument("--nodes", type=int, default=0,
                        help="SuperNode key pairs node-0..node-<N-1> (missing ones are made)")
    parser.add_argument("--days", type=int, default=DEFAULT_DAYS)
    parser.add_argument("--renew-server", action="store_true",
                        help="issue a new server.pem/server.key (other SANs, expiry); needs ca.key")
    parser.add_argument("--new-ca", action="store_true",
                        help="replace the CA and the server certificate (node keys are kept)")
    args = parser.parse_args(argv)
    if args.nodes < 0 or args.days < 1:
        print("error: --nodes must be >= 0 and --days >= 1", file=sys.stderr)
        return 2
    out = Path(args.out)
    try:
        written = generate(out, args.san, args.nodes, args.days, args.new_ca, args.renew_server)
    except MissingCA as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    if not written:
        print(f"nothing to do: everything already exists in {out}")
    if not (out / "ca.crt").exists():
        print(f"note: {out / 'ca.crt'} is missing here; nodes and the flwr CLI keep using the "
              "copy they have", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
