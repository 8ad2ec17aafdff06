"""deploy.certs: private keys are never readable by others, existing keys are never replaced,
nodes are added without the CA, and the command runs from an installed package."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from deploy import certs

KEYS = ("ca.key", "server.key", "node-0", "node-1", "node-2")

# Runs deploy.certs under umask 0 (any file not created 0600 would be world-readable) and, at
# every audit event of the process (each open, chmod, rename...), records the mode and size of
# every file opened so far in the output folder: a key written first and chmod-ed after shows
# up with its key bytes and mode 0666 at the chmod event.
WATCH = r"""
import json, os, sys
out = sys.argv[1]
opened, seen, renames, busy = set(), [], [], False

def hook(event, args):
    global busy
    if busy:
        return
    busy = True
    try:
        if event == "open" and isinstance(args[0], (str, os.PathLike)) \
                and os.fspath(args[0]).startswith(out + "/"):
            opened.add(os.fspath(args[0]))
        if event == "os.rename" and os.fspath(args[0]).startswith(out + "/"):
            renames.append([os.fspath(args[0]), os.fspath(args[1])])
        for path in opened:
            try:
                st = os.stat(path)
            except OSError:
                continue
            seen.append([path, st.st_mode & 0o777, st.st_size])
    finally:
        busy = False

os.umask(0)
from deploy import certs
sys.addaudithook(hook)
code = certs.main(["--out", out, "--san", "superlink", "--nodes", "3"])
print(json.dumps({"code": code, "seen": seen, "renames": renames}))
"""


def test_private_keys_are_0600_from_their_first_byte(tmp_path):
    out = tmp_path / "certs"
    proc = subprocess.run([sys.executable, "-c", WATCH, str(out)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["code"] == 0
    became = {src: dst for src, dst in report["renames"]}  # temporary name -> key file
    for key in KEYS:
        path = str(out / key)
        names = {path} | {src for src, dst in became.items() if dst == path}
        modes = [(mode, size) for p, mode, size in report["seen"] if p in names]
        assert any(size > 0 for _, size in modes), f"{key}: never observed with content"
        wider = sorted({oct(mode) for mode, _ in modes if mode != 0o600})
        assert not wider, f"{key} had modes {wider} while it existed: readable by others"
        assert stat.S_IMODE((out / key).stat().st_mode) == 0o600
    # Public files keep the (here permissive) umask: they are meant to be copied around.
    assert stat.S_IMODE((out / "ca.crt").stat().st_mode) == 0o666


def _contents(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_rerun_never_replaces_keys_and_adds_nodes_without_the_ca(tmp_path, capsys):
    out = tmp_path / "certs"
    assert certs.main(["--out", str(out), "--san", "superlink", "--nodes", "3"]) == 0
    first = _contents(out)

    # The CA files go offline (the docs say so); a rerun must not make a new CA and with it
    # new node keys or a server certificate the clients' ca.crt does not verify.
    (out / "ca.key").unlink()
    (out / "ca.crt").unlink()
    (out / "node-1.pub").unlink()
    assert certs.main(["--out", str(out), "--san", "superlink", "--nodes", "3"]) == 0
    after = _contents(out)
    assert after == {k: v for k, v in first.items() if not k.startswith("ca.")}  # .pub restored

    # More nodes with ca.crt back but ca.key still offline.
    (out / "ca.crt").write_bytes(first["ca.crt"])
    assert certs.main(["--out", str(out), "--nodes", "5"]) == 0
    grown = _contents(out)
    assert {k: grown[k] for k in after} == after
    for i in (3, 4):
        key = serialization.load_ssh_private_key(grown[f"node-{i}"], None)
        public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                               serialization.PublicFormat.OpenSSH)
        assert grown[f"node-{i}.pub"] == public + f" node-{i}\n".encode()
        assert stat.S_IMODE((out / f"node-{i}").stat().st_mode) == 0o600
    capsys.readouterr()

    # Only the server certificate needs ca.key: its absence is named, with the fix.
    (out / "server.pem").unlink()
    assert certs.main(["--out", str(out), "--nodes", "5"]) == 2
    err = capsys.readouterr().err
    assert "ca.key missing" in err and "--new-ca" in err and "copy ca.crt and ca.key back" in err
    assert not (out / "server.pem").exists()

    # --new-ca: a new CA and server certificate that it signed; node keys stay.
    assert certs.main(["--out", str(out), "--san", "superlink", "--new-ca", "--nodes", "5"]) == 0
    final = _contents(out)
    assert final["ca.crt"] != first["ca.crt"]
    assert {k: final[k] for k in final if k.startswith("node-")} == \
        {k: grown[k] for k in grown if k.startswith("node-")}
    ca = x509.load_pem_x509_certificate(final["ca.crt"])
    x509.load_pem_x509_certificate(final["server.pem"]).verify_directly_issued_by(ca)


def test_module_runs_from_any_folder_with_the_installed_package(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-m", "deploy.certs", "--help"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "--new-ca" in proc.stdout
