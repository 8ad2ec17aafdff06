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
Existing files are kept unless --force is given, so running it twice never replaces a key a
node already uses.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
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


def _write(path: Path, data: bytes, private: bool = False) -> None:
    path.write_bytes(data)
    if private:
        os.chmod(path, 0o600)


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
    _write(out / "ca.crt", cert.public_bytes(serialization.Encoding.PEM))
    _write(out / "ca.key", _pem_key(key), private=True)
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
    _write(out / "server.pem", cert.public_bytes(serialization.Encoding.PEM))
    _write(out / "server.key", _pem_key(key), private=True)


def make_node_key(out: Path, name: str) -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH)
    _write(out / name, private, private=True)
    _write(out / f"{name}.pub", public + f" {name}\n".encode())


def generate(out: Path, sans: list[str], nodes: int, days: int = DEFAULT_DAYS,
             force: bool = False, extra_keys: tuple[str, ...] = ()) -> list[Path]:
    """Create what is missing (everything with force); return the files written."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    if force or not (out / "ca.crt").exists():
        ca_cert, ca_key = make_ca(out, days)
        written += [out / "ca.crt", out / "ca.key"]
        force = True  # a new CA invalidates the old server certificate
    else:
        ca_cert = x509.load_pem_x509_certificate((out / "ca.crt").read_bytes())
        ca_key = serialization.load_pem_private_key((out / "ca.key").read_bytes(), None)
    if force or not (out / "server.pem").exists():
        make_server_cert(out, ca_cert, ca_key, sans, days)
        written += [out / "server.pem", out / "server.key"]
    for name in [f"node-{i}" for i in range(nodes)] + list(extra_keys):
        if force or not (out / name).exists():
            make_node_key(out, name)
            written += [out / name, out / f"{name}.pub"]
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.certs", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="certs", help="output folder (default ./certs)")
    parser.add_argument("--san", action="append", default=[], metavar="NAME_OR_IP",
                        help="a DNS name or IP the SuperLink is reached at; repeatable")
    parser.add_argument("--nodes", type=int, default=0, help="SuperNode key pairs to create")
    parser.add_argument("--days", type=int, default=DEFAULT_DAYS)
    parser.add_argument("--force", action="store_true", help="replace existing files")
    args = parser.parse_args(argv)
    if args.nodes < 0 or args.days < 1:
        print("error: --nodes must be >= 0 and --days >= 1", file=sys.stderr)
        return 2
    written = generate(Path(args.out), args.san, args.nodes, args.days, args.force)
    for path in written:
        print(path)
    if not written:
        print(f"nothing to do: everything already exists in {args.out} (--force replaces it)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
