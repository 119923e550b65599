"""A 3-node RabbitMQ cluster on this machine, behind HAProxy, for the tests and the benchmark.

The nodes are RabbitMQ servers of their own: own node names (`<label>-<n>@localhost`), AMQP
and distribution ports, data, log and cookie directory, no plugins. The machine's own broker
(rabbit@localhost:5672) is never touched: every command here names one of our nodes, and
`rabbitmqctl` runs with our cookie. Unlike tests/rabbit_node.py (one node that shares the
machine broker's cookie, joined node by node), the nodes run with a cookie of their own and
form the cluster at boot (classic-config peer discovery), which is quicker for three nodes. HAProxy runs `deploy/haproxy/haproxy.cfg` (the file the
README tells operators to copy) with its ports filled in through the environment.

    with RabbitCluster.started() as cluster:      # ~10 s on an idle machine
        cluster.url                               # amqp://guest:guest@127.0.0.1:<proxy port>/
        cluster.stop_node(1); cluster.start_node(1)
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.rabbit_node import free_port

ROOT = Path(__file__).resolve().parent.parent
HAPROXY_CFG = ROOT / "deploy" / "haproxy" / "haproxy.cfg"
RABBIT_BIN = Path("/usr/lib/rabbitmq/bin")


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def ensure_installed() -> None:
    """Install Debian's rabbitmq-server and haproxy when missing (as root with apt-get)."""
    missing = [
        package
        for package, binary in (
            ("rabbitmq-server", RABBIT_BIN / "rabbitmq-server"),
            ("haproxy", Path("/usr/sbin/haproxy")),
        )
        if not binary.exists() and shutil.which(binary.name) is None
    ]
    if not missing:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise RuntimeError(f"missing {', '.join(missing)} and cannot install (need root + apt)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, env=env)


@dataclass
class RabbitNode:
    name: str
    amqp_port: int
    dist_port: int
    directory: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def node(self) -> str:
        return f"{self.name}@localhost"


@dataclass
class RabbitCluster:
    """Three (or `size`) clustered RabbitMQ nodes and an HAProxy in front of them."""

    base: Path
    label: str
    size: int = 3
    nodes: list[RabbitNode] = field(default_factory=list)
    proxy_port: int = 0
    stats_port: int = 0
    haproxy: subprocess.Popen[bytes] | None = None

    @classmethod
    @contextlib.contextmanager
    def started(cls, size: int = 3, timeout: float = 120) -> Iterator[RabbitCluster]:
        ensure_installed()
        base = Path(tempfile.mkdtemp(prefix="rmq-cluster-"))
        cluster = cls(base, f"svc{uuid.uuid4().hex[:6]}", size)
        try:
            cluster.start(timeout)
            yield cluster
        finally:
            cluster.destroy()

    # -- environment ---------------------------------------------------------------------

    @property
    def home(self) -> Path:
        return self.base / "home"

    def _env(self, node: RabbitNode | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        env |= {
            "HOME": str(self.home),  # the cookie of this cluster, not the machine broker's
            "RABBITMQ_CONF_ENV_FILE": str(self.base / "rabbitmq-env.conf"),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
        }
        if node is not None:
            d = node.directory
            env |= {
                "RABBITMQ_NODENAME": node.node,
                "RABBITMQ_DIST_PORT": str(node.dist_port),
                "RABBITMQ_CONFIG_FILE": str(d / "rabbitmq.conf"),
                "RABBITMQ_ENABLED_PLUGINS_FILE": str(d / "enabled_plugins"),
                "RABBITMQ_MNESIA_BASE": str(d / "mnesia"),
                "RABBITMQ_LOG_BASE": str(d / "log"),
                "RABBITMQ_FEATURE_FLAGS_FILE": str(d / "feature_flags"),
                "RABBITMQ_PID_FILE": str(d / "rabbit.pid"),
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            }
        return env

    @property
    def url(self) -> str:
        """RABBITMQ_URL of the service: through HAProxy."""
        return f"amqp://guest:guest@127.0.0.1:{self.proxy_port}/"

    def node_url(self, index: int) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.nodes[index].amqp_port}/"

    def rabbitmqctl(self, index: int = 0) -> list[str]:
        """The command prefix of `rabbitmqctl` against node `index` (for close_connections)."""
        return [
            "env",
            *(f"{k}={v}" for k, v in self._ctl_env().items()),
            str(RABBIT_BIN / "rabbitmqctl"),
            "-n",
            self.nodes[index].node,
        ]

    def _ctl_env(self) -> dict[str, str]:
        return {
            "HOME": str(self.home),
            "RABBITMQ_CONF_ENV_FILE": str(self.base / "rabbitmq-env.conf"),
        }

    def ctl(self, index: int, *command: str, timeout: float = 120) -> str:
        result = subprocess.run(
            [str(RABBIT_BIN / "rabbitmqctl"), "-n", self.nodes[index].node, "-q", *command],
            env=self._env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if result.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {' '.join(command)}: {result.stderr or result.stdout}")
        return result.stdout

    # -- lifecycle -----------------------------------------------------------------------

    def start(self, timeout: float = 120) -> None:
        self.home.mkdir(parents=True)
        cookie = self.home / ".erlang.cookie"
        cookie.write_text(uuid.uuid4().hex.upper())
        cookie.chmod(0o400)
        (self.base / "rabbitmq-env.conf").write_text("")
        for n in range(1, self.size + 1):
            directory = self.base / f"node{n}"
            for sub in ("mnesia", "log"):
                (directory / sub).mkdir(parents=True)
            self.nodes.append(RabbitNode(f"{self.label}-{n}", free_port(), free_port(), directory))
        first = self.nodes[0].node
        for node in self.nodes:
            lines = [
                f"listeners.tcp.local = 127.0.0.1:{node.amqp_port}",
                "loopback_users = none",
                "cluster_formation.peer_discovery_backend = classic_config",
                f"cluster_formation.classic_config.nodes.1 = {first}",
                # Small and quick: this is a test cluster on a shared machine.
                "vm_memory_high_watermark.relative = 0.2",
                "disk_free_limit.absolute = 50MB",
            ]
            (node.directory / "rabbitmq.conf").write_text("\n".join(lines) + "\n")
            (node.directory / "enabled_plugins").write_text("[].\n")
        # The first node first, then the others join it (classic config peer discovery).
        self._launch(self.nodes[0])
        self._wait_port(self.nodes[0], timeout)
        for node in self.nodes[1:]:
            self._launch(node)
        for node in self.nodes[1:]:
            self._wait_port(node, timeout)
        self.ctl(0, "await_online_nodes", str(self.size), "--timeout", str(int(timeout)))
        self._start_haproxy(timeout)

    def _launch(self, node: RabbitNode) -> None:
        log = (node.directory / "console.log").open("ab")
        node.process = subprocess.Popen(
            [str(RABBIT_BIN / "rabbitmq-server")],
            env=self._env(node),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

    def _wait_port(self, node: RabbitNode, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if port_open(node.amqp_port):
                return
            if node.process is not None and node.process.poll() is not None:
                raise RuntimeError(f"{node.node} exited:\n{self.console(node)}")
            time.sleep(0.2)
        raise TimeoutError(f"{node.node} did not listen within {timeout} s:\n{self.console(node)}")

    def console(self, node: RabbitNode) -> str:
        path = node.directory / "console.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def _start_haproxy(self, timeout: float) -> None:
        self.proxy_port, self.stats_port = free_port(), free_port()
        env = {
            **os.environ,
            "RABBITMQ_PROXY_BIND": f"127.0.0.1:{self.proxy_port}",
            "HAPROXY_STATS_BIND": f"127.0.0.1:{self.stats_port}",
        }
        for n, node in enumerate(self.nodes[:3], start=1):
            env[f"RABBITMQ_NODE_{n}"] = f"127.0.0.1:{node.amqp_port}"
        log = (self.base / "haproxy.log").open("ab")
        self.haproxy = subprocess.Popen(
            ["haproxy", "-db", "-f", str(HAPROXY_CFG)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while not port_open(self.proxy_port):
            if self.haproxy.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((self.base / "haproxy.log").read_text(errors="replace"))
            time.sleep(0.1)

    def stop_node(self, index: int) -> None:
        """Stop node `index` the way an operator (or a host failure) would: the node goes away."""
        node = self.nodes[index]
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            self.ctl(index, "stop", timeout=60)
        if node.process is not None:
            try:
                node.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(node.process.pid, signal.SIGKILL)
                node.process.wait(10)

    def start_node(self, index: int, timeout: float = 120) -> None:
        node = self.nodes[index]
        self._launch(node)
        self._wait_port(node, timeout)
        self.ctl(index, "await_startup", "--timeout", str(int(timeout)))

    def node_of_connection(self, name_part: str) -> list[str]:
        """Nodes holding the connections whose client properties contain `name_part`."""
        for index, node in enumerate(self.nodes):
            if node.process is None or node.process.poll() is not None:
                continue
            listing = self.ctl(
                index, "--no-table-headers", "list_connections", "pid", "client_properties"
            )
            # A connection's pid names its node: <name@host.1234.0>.
            return [
                match.group(1)
                for line in listing.splitlines()
                if name_part in line and (match := re.match(r"<([^@\s]+@[^.\s]+)\.", line))
            ]
        return []

    def index_of(self, node_name: str) -> int:
        return next(i for i, n in enumerate(self.nodes) if n.node == node_name)

    def destroy(self) -> None:
        if self.haproxy is not None and self.haproxy.poll() is None:
            self.haproxy.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.haproxy.wait(10)
        for node in self.nodes:
            if node.process is not None and node.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(node.process.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    node.process.wait(10)
        # epmd forgets a node when its distribution connection closes; nothing else remains.
        shutil.rmtree(self.base, ignore_errors=True)


def running(processes: Sequence[subprocess.Popen[bytes] | None]) -> bool:
    return all(p is not None and p.poll() is None for p in processes)
