"""The second, remote engine: a dockerd in its own network and mount namespaces, reached over
TLS with client certificates as the docker context ``ml-env-lab-remote``, and the relay
(``remote-forward``) that answers for the lab's registries inside its namespace."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
from pathlib import Path

from lab_engine import DAEMON_CONFIG
from lab_images import BASE_TINY
from lab_proc import SCRIPT, STATE, _error_line, _pipe, log, ok, output, read_pid, run, start, stop, wait_for
from lab_registries import AUTH_PORT, PLAIN_PORT

# --- the second, remote engine -------------------------------------------------------------
#
# A dockerd that is "another machine" as far as the client can tell: it runs in its own network
# namespace (a veth pair, REMOTE_NS_IP on its side, REMOTE_HOST_IP on the host's) and its own
# mount namespace (tmpfs over /tmp, /root, /home, /work, /run/containerd and the lab's state, its
# data root bound back in), so no client path exists there. It listens only on
# tcp://REMOTE_NS_IP:2376 with TLS and client certificates (a CA, server and client certs made
# here with openssl) and is registered as the docker context REMOTE_CONTEXT.
#
# The registries stay as they are (127.0.0.1 on the host). Inside the namespace 127.0.0.1:5000
# and :5001 are answered by a small relay the lab runs (``remote-forward``: its listening
# sockets are made inside the namespace, its outgoing connections in the host's), so image names
# are the same on both engines and the same daemon config (mirror, containerd store) resolves
# the same base images. Other traffic leaves the namespace through NAT (a lab-owned iptables
# chain), so builds there reach PyPI and the Debian mirror as builds on the first engine do.

REMOTE = STATE / "remote"
REMOTE_TLS = REMOTE / "tls"
REMOTE_CERTS = REMOTE_TLS / "client"  # DOCKER_CERT_PATH layout: ca.pem, cert.pem, key.pem
REMOTE_NETNS = "ml-env-lab-remote"
REMOTE_CONTEXT = "ml-env-lab-remote"
REMOTE_HOST_IF, REMOTE_NS_IF = "mlenv-r0", "mlenv-r1"
REMOTE_SUBNET = "10.87.213.0/30"
REMOTE_HOST_IP, REMOTE_NS_IP = "10.87.213.1", "10.87.213.2"
REMOTE_PORT = 2376
REMOTE_URL = f"tcp://{REMOTE_NS_IP}:{REMOTE_PORT}"
REMOTE_EXEC_ROOT = "/run/ml-env-lab-remote"
REMOTE_CHAIN = "ML-ENV-LAB-REMOTE"
REMOTE_FORWARDED = (PLAIN_PORT, AUTH_PORT)
REMOTE_DAEMON_CONFIG = {**DAEMON_CONFIG, "cgroup-parent": "ml-env-lab-remote"}
# what the second engine must not see: client working trees and the lab's own secrets
REMOTE_HIDDEN = ("/tmp", "/root", "/home", "/work", "/run/containerd")
# system trees the engine needs; a checkout under one of them is hidden by itself, elsewhere by
# its top-level folder (a CI checkout in /check/work/x hides /check: its sibling clones too)
_SYSTEM_TOPS = {"bin", "boot", "dev", "etc", "lib", "lib32", "lib64", "libx32", "opt", "proc", "run", "sbin",
                "srv", "sys", "usr", "var", "mnt", "media"}  # fmt: skip


def remote_hidden() -> list[str]:
    checkout = SCRIPT.parents[2]
    top = Path("/", *checkout.parts[1:2])
    extra = str(checkout) if top.name in _SYSTEM_TOPS or top == Path("/") else str(top)
    return sorted({*REMOTE_HIDDEN, extra})


def remote_tls() -> None:
    """The CA, the server's certificate (for REMOTE_NS_IP) and the client's, kept while valid."""
    server, client = REMOTE_TLS / "server", REMOTE_CERTS
    wanted = [REMOTE_TLS / "ca-key.pem", *(d / f for d in (server, client) for f in ("ca.pem", "cert.pem", "key.pem"))]
    if all(f.exists() for f in wanted) and all(
        ok(["openssl", "x509", "-checkend", "86400", "-noout", "-in", str(d / "cert.pem")]) for d in (server, client)
    ):
        return
    log(f"making the remote engine's CA and certificates in {REMOTE_TLS}")
    shutil.rmtree(REMOTE_TLS, ignore_errors=True)
    for d in (REMOTE_TLS, server, client):
        d.mkdir(parents=True, exist_ok=True)
        d.chmod(0o700)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    ca_key, ca = REMOTE_TLS / "ca-key.pem", REMOTE_TLS / "ca.pem"
    run(["openssl", "req", "-x509", *ec, "-keyout", str(ca_key), "-out", str(ca), "-days", "3650",
         "-subj", "/CN=ml-env lab remote CA"], quiet=True, capture_output=True)  # fmt: skip
    for d, cn, ext in (
        (server, "ml-env-lab-remote", f"subjectAltName=IP:{REMOTE_NS_IP},IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"),
        (client, "ml-env-lab-client", "extendedKeyUsage=clientAuth\n"),
    ):
        (d / "ext.cnf").write_text(ext)
        run(["openssl", "req", *ec, "-keyout", str(d / "key.pem"), "-out", str(d / "req.csr"), "-subj", f"/CN={cn}"],
            quiet=True, capture_output=True)  # fmt: skip
        run(["openssl", "x509", "-req", "-in", str(d / "req.csr"), "-CA", str(ca), "-CAkey", str(ca_key),
             "-CAcreateserial", "-out", str(d / "cert.pem"), "-days", "825", "-extfile", str(d / "ext.cnf")],
            quiet=True, capture_output=True)  # fmt: skip
        shutil.copy(ca, d / "ca.pem")
        for f in ("req.csr", "ext.cnf"):
            (d / f).unlink()
        (d / "key.pem").chmod(0o600)
    ca_key.chmod(0o600)


def _netns_ip(*args: str) -> list[str]:
    return ["ip", "netns", "exec", REMOTE_NETNS, *args]


def remote_network() -> None:
    """The namespace, the veth pair and its addresses, a default route out, NAT; each step only
    when missing."""
    if REMOTE_NETNS not in output(["ip", "netns", "list"])[1].split():
        run(["ip", "netns", "add", REMOTE_NETNS])
    if not Path(f"/sys/class/net/{REMOTE_HOST_IF}").exists():
        # a route to the lab's subnet through anything else is someone else's network
        code, routes = output(["ip", "-4", "route", "show", "to", "match", REMOTE_HOST_IP])
        if any(REMOTE_SUBNET in line for line in routes.splitlines()):
            raise SystemExit(f"[lab] {REMOTE_SUBNET} is already routed on this machine: {routes}")
        ok(_netns_ip("ip", "link", "del", REMOTE_NS_IF))
        run(["ip", "link", "add", REMOTE_HOST_IF, "type", "veth", "peer", "name", REMOTE_NS_IF, "netns", REMOTE_NETNS])
    prefix = REMOTE_SUBNET.split("/")[1]
    if f"{REMOTE_HOST_IP}/" not in output(["ip", "-4", "-br", "addr", "show", REMOTE_HOST_IF])[1]:
        run(["ip", "addr", "add", f"{REMOTE_HOST_IP}/{prefix}", "dev", REMOTE_HOST_IF])
    run(["ip", "link", "set", REMOTE_HOST_IF, "up"], quiet=True)
    if f"{REMOTE_NS_IP}/" not in output(_netns_ip("ip", "-4", "-br", "addr", "show", REMOTE_NS_IF))[1]:
        run(_netns_ip("ip", "addr", "add", f"{REMOTE_NS_IP}/{prefix}", "dev", REMOTE_NS_IF))
    run(_netns_ip("ip", "link", "set", REMOTE_NS_IF, "up"), quiet=True)
    run(_netns_ip("ip", "link", "set", "lo", "up"), quiet=True)
    if "default" not in output(_netns_ip("ip", "-4", "route", "show", "default"))[1]:
        run(_netns_ip("ip", "route", "add", "default", "via", REMOTE_HOST_IP))
    # forwarding out of the namespace: the first engine leaves FORWARD's policy at DROP, so the
    # subnet gets its own chain (jumped to first) and a MASQUERADE rule; nothing else is touched
    if not ok(["iptables", "-w", "-n", "-L", REMOTE_CHAIN]):
        run(["iptables", "-w", "-N", REMOTE_CHAIN])
    for rule in (["-s", REMOTE_SUBNET, "-j", "ACCEPT"], ["-d", REMOTE_SUBNET, "-m", "conntrack", "--ctstate",
                                                         "RELATED,ESTABLISHED", "-j", "ACCEPT"]):  # fmt: skip
        if not ok(["iptables", "-w", "-C", REMOTE_CHAIN, *rule]):
            run(["iptables", "-w", "-A", REMOTE_CHAIN, *rule])
    if not ok(["iptables", "-w", "-C", "FORWARD", "-j", REMOTE_CHAIN]):
        run(["iptables", "-w", "-I", "FORWARD", "1", "-j", REMOTE_CHAIN])
    masq = ["POSTROUTING", "-s", REMOTE_SUBNET, "!", "-o", REMOTE_HOST_IF, "-j", "MASQUERADE"]
    if not ok(["iptables", "-w", "-t", "nat", "-C", *masq]):
        run(["iptables", "-w", "-t", "nat", "-A", *masq])


def remote_network_down() -> None:
    ok(["ip", "link", "del", REMOTE_HOST_IF])
    ok(["ip", "netns", "del", REMOTE_NETNS])
    ok(["iptables", "-w", "-t", "nat", "-D", "POSTROUTING", "-s", REMOTE_SUBNET, "!", "-o", REMOTE_HOST_IF,
        "-j", "MASQUERADE"])  # fmt: skip
    while ok(["iptables", "-w", "-D", "FORWARD", "-j", REMOTE_CHAIN]):
        pass
    ok(["iptables", "-w", "-F", REMOTE_CHAIN])
    ok(["iptables", "-w", "-X", REMOTE_CHAIN])


def forward_main() -> int:
    """``remote-forward``: the lab's registries inside the remote engine's namespace. Listening
    sockets are made there (setns), then this process goes back to the host's namespace, where
    each accepted connection is relayed to 127.0.0.1 on the same port."""
    import ctypes
    import threading

    clone_newnet = 0x40000000
    libc = ctypes.CDLL(None, use_errno=True)
    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    there = os.open(f"/var/run/netns/{REMOTE_NETNS}", os.O_RDONLY)
    if libc.setns(there, clone_newnet) != 0:
        raise SystemExit(f"[lab] setns into {REMOTE_NETNS}: {os.strerror(ctypes.get_errno())}")
    listeners = []
    for port in REMOTE_FORWARDED:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen(64)
        listeners.append((s, port))
    if libc.setns(home, clone_newnet) != 0:
        raise SystemExit(f"[lab] setns back: {os.strerror(ctypes.get_errno())}")

    def serve(listener: socket.socket, port: int) -> None:
        while True:
            conn, _ = listener.accept()
            try:
                up_ = socket.create_connection(("127.0.0.1", port), timeout=10)
                up_.settimeout(None)
            except OSError:
                conn.close()
                continue
            for a, b in ((conn, up_), (up_, conn)):
                threading.Thread(target=_pipe, args=(a, b), daemon=True).start()

    threads = [threading.Thread(target=serve, args=lp, daemon=True) for lp in listeners]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return 0


def remote_forward_answers() -> bool:
    probe = f"import urllib.request as u, urllib.error as e\ntry: u.urlopen('http://127.0.0.1:{PLAIN_PORT}/v2/', timeout=3)\nexcept e.HTTPError: pass"  # fmt: skip
    return ok(_netns_ip(sys.executable, "-c", probe), timeout=15)


def remote_docker(*args: str) -> list[str]:
    """A docker CLI command on the remote engine through its TLS material (no context needed)."""
    return ["docker", "-H", REMOTE_URL, "--tlsverify", "--tlscacert", str(REMOTE_CERTS / "ca.pem"),
            "--tlscert", str(REMOTE_CERTS / "cert.pem"), "--tlskey", str(REMOTE_CERTS / "key.pem"), *args]  # fmt: skip


def remote_engine_up() -> bool:
    return ok(remote_docker("info", "--format", "{{.ServerVersion}}"), timeout=20)


def remote_config_current() -> bool:
    try:
        return json.loads((REMOTE / "daemon.json").read_text()) == REMOTE_DAEMON_CONFIG
    except (OSError, ValueError):
        return False


def start_remote_engine() -> None:
    cfg = REMOTE / "daemon.json"
    cfg.write_text(json.dumps(REMOTE_DAEMON_CONFIG, indent=2))
    (REMOTE / "data").mkdir(parents=True, exist_ok=True)
    keep, cgroup = f"{REMOTE_EXEC_ROOT}.keep", f"{REMOTE_EXEC_ROOT}.cgroup"
    # in the new mount namespace (private: nothing mounted there reaches the host): a sysfs of
    # its network namespace with the host's cgroup tree kept; the engine's own folder kept
    # aside, what it must not see hidden, its folder put back in place
    hide = " ".join(shlex.quote(d) for d in remote_hidden())
    script = (
        "set -e\n"
        f"mkdir -p {cgroup} && mount --rbind /sys/fs/cgroup {cgroup}\n"
        f"mount -t sysfs sysfs /sys && mount --move {cgroup} /sys/fs/cgroup\n"
        f"mkdir -p {keep} && mount --bind {REMOTE} {keep}\n"
        f'for d in {hide} {STATE}; do if [ -d "$d" ]; then mount -t tmpfs -o mode=0755,size=1g tmpfs "$d"; fi; done\n'
        f"mkdir -p {REMOTE} && mount --move {keep} {REMOTE}\n"
        "chmod 1777 /tmp\n"
        'exec "$@"\n'
    )
    server = REMOTE_TLS / "server"
    dockerd = [
        "dockerd", "--config-file", str(cfg), "--data-root", str(REMOTE / "data"), "--exec-root", REMOTE_EXEC_ROOT,
        "--pidfile", f"{REMOTE_EXEC_ROOT}.pid", "-H", f"tcp://{REMOTE_NS_IP}:{REMOTE_PORT}", "--tlsverify",
        "--tlscacert", str(server / "ca.pem"), "--tlscert", str(server / "cert.pem"),
        "--tlskey", str(server / "key.pem"),
    ]  # fmt: skip
    # nsenter, not `ip netns exec`: that one mounts a fresh /sys over the cgroup tree
    cmd = ["nsenter", f"--net=/var/run/netns/{REMOTE_NETNS}", "unshare", "--mount", "--propagation", "private",
           "sh", "-c", script, "sh", *dockerd]  # fmt: skip
    start("remote-dockerd", cmd)
    wait_for("the remote dockerd", remote_engine_up, 90)


def remote_context() -> None:
    """The docker context REMOTE_CONTEXT, made again when it is missing or points elsewhere."""
    code, text = output(["docker", "context", "inspect", REMOTE_CONTEXT, "--format", "{{.Endpoints.docker.Host}}"])
    if code == 0 and text.strip() == REMOTE_URL:
        return
    if code == 0:
        run(["docker", "context", "rm", "-f", REMOTE_CONTEXT], stdout=subprocess.DEVNULL)
    tls = ",".join(f"{k}={REMOTE_CERTS / f}" for k, f in (("ca", "ca.pem"), ("cert", "cert.pem"), ("key", "key.pem")))
    run(["docker", "context", "create", REMOTE_CONTEXT, "--description", "the ml-env lab's second engine (TLS)",
         "--docker", f"host={REMOTE_URL},{tls}"], stdout=subprocess.DEVNULL)  # fmt: skip


def _sees_checkout(pid: int) -> bool:
    """Whether the engine (started from another checkout) sees this one: it must not."""
    return os.path.lexists(f"/proc/{pid}/root{SCRIPT}")


def ensure_remote() -> None:
    """The second engine and what it needs, each started or healed only when missing or wrong;
    the first engine and the registries are never touched."""
    REMOTE.mkdir(parents=True, exist_ok=True)
    REMOTE.chmod(0o700)
    remote_tls()
    remote_network()
    if read_pid("remote-forward") is None or not remote_forward_answers():
        stop("remote-forward")
        start("remote-forward", [sys.executable, str(SCRIPT), "remote-forward"])
        wait_for("the registry relay in the remote namespace", remote_forward_answers, 30)
    pid = read_pid("remote-dockerd")
    if pid is not None and not (remote_engine_up() and remote_config_current() and not _sees_checkout(pid)):
        log(
            "restarting the remote dockerd: it does not answer, its config is not the one this lab wants,"
            " or it sees this checkout"
        )
        stop("remote-dockerd")
    if read_pid("remote-dockerd") is None:
        if remote_engine_up():
            raise SystemExit(f"[lab] something the lab did not start answers on {REMOTE_URL}")
        start_remote_engine()
    remote_context()


def remote_health() -> list[tuple[str, bool, str]]:
    checks: list[tuple[str, bool, str]] = []
    pid = read_pid("remote-dockerd")
    code, text = output(remote_docker("info", "--format", "{{.ServerVersion}}"), timeout=20)
    up_ = code == 0 and pid is not None
    checks.append(("remote engine", up_, f"{text.split()[0] if code == 0 else ''} at {REMOTE_URL} (pid {pid})"
                   if up_ else (_error_line(text) if pid else "not started (lab.py remote-up)")))  # fmt: skip
    if not up_:
        return checks
    # without a client certificate the engine refuses the connection
    import ssl

    ctx = ssl.create_default_context(cafile=str(REMOTE_CERTS / "ca.pem"))
    try:
        with (
            socket.create_connection((REMOTE_NS_IP, REMOTE_PORT), timeout=5) as s,
            ctx.wrap_socket(s, server_hostname=REMOTE_NS_IP) as t,
        ):
            t.sendall(b"GET /_ping HTTP/1.0\r\n\r\n")
            refused = not t.recv(64)
    except (ssl.SSLError, OSError):
        refused = True
    checks.append(("remote tls", refused, "client certificate required" if refused
                   else "answers without a client certificate"))  # fmt: skip
    # a file made now in this machine's /tmp, this script and the lab's secrets: none is there
    import tempfile

    with tempfile.NamedTemporaryFile(prefix="ml-env-lab-probe-") as probe:
        seen = [p for p in (probe.name, str(SCRIPT), str(STATE / "auth.json"))
                if os.path.lexists(f"/proc/{pid}/root{p}")]  # fmt: skip
    checks.append(("remote isolation", not seen, "its own /tmp, /root, /work (no client paths)" if not seen
                   else f"it sees {', '.join(seen)}"))  # fmt: skip
    code, text = output(remote_docker("run", "--rm", "--pull", "always", BASE_TINY, "true"), timeout=60)
    checks.append(("remote container", code == 0, "pulled from :5000 through its namespace and ran"
                   if code == 0 else _error_line(text)))  # fmt: skip
    code, text = output(["docker", "context", "inspect", REMOTE_CONTEXT, "--format", "{{.Endpoints.docker.Host}}"])
    checks.append(("remote context", code == 0 and text.strip() == REMOTE_URL, f"{REMOTE_CONTEXT} -> {text.strip()}"))
    return checks


def remote_env() -> dict:
    return {
        "remote_context": REMOTE_CONTEXT,
        "remote_host": REMOTE_URL,
        "remote_cert_path": str(REMOTE_CERTS),
        "remote_address": REMOTE_NS_IP,
        "remote_dockerd_pid": read_pid("remote-dockerd"),
    }


def _remote_down() -> None:
    stop("remote-dockerd")
    stop("remote-forward")
    remote_network_down()
    ok(["docker", "context", "rm", "-f", REMOTE_CONTEXT])
