"""A RabbitMQ node of the tests' own, beside the machine's broker (which stays untouched).

    node = rabbit_node.start("test_rmq_x", port)   # own node name, AMQP port, data directory
    node.url                                        # amqp://guest:guest@127.0.0.1:<port>/
    node.stop(); node.start_again(); node.kill(); node.remove()

Each node has its own RABBITMQ_NODENAME, RABBITMQ_NODE_PORT, RABBITMQ_DIST_PORT,
RABBITMQ_MNESIA_BASE / RABBITMQ_LOG_BASE and enabled-plugins file (no management listener, so
nothing collides with the machine's broker), all under one temporary directory. It is started
with `rabbitmq-server -detached` as the user the Debian scripts run it as, so it shares the
Erlang cookie of the machine's broker and `rabbitmqctl -n <node>` reaches it. For a cluster,
start several and `join(other)`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

SERVER = "rabbitmq-server"
CTL = "rabbitmqctl"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _answers(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
        return True
    return False


@dataclass
class RabbitNode:
    """One RabbitMQ node with its own name, ports and directories."""

    name: str
    port: int
    base: Path
    dist_port: int = field(default_factory=free_port)
    plugins: Sequence[str] = ()

    @property
    def node(self) -> str:
        return f"{self.name}@localhost"

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    @property
    def pid_file(self) -> Path:
        return self.base / "node.pid"

    def env(self) -> dict[str, str]:
        plugins = self.base / "enabled_plugins"
        plugins.write_text("[" + ",".join(self.plugins) + "].\n")
        return {
            **os.environ,
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.base / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(plugins),
            "RABBITMQ_PID_FILE": str(self.pid_file),
            # No config file of the machine's broker applies to this node.
            "RABBITMQ_CONFIG_FILE": str(self.base / "rabbitmq"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.base / "advanced.config"),
            "RABBITMQ_CONF_ENV_FILE": str(self.base / "rabbitmq-env.conf"),
        }

    def start_again(self, timeout: float = 90) -> None:
        """Start (or restart) the node and wait until it accepts AMQP connections."""
        subprocess.run(
            [SERVER, "-detached"],
            env=self.env(),
            cwd=self.base,
            check=True,
            capture_output=True,
            timeout=60,
        )
        # Until the VM has registered its name, rabbitmqctl cannot reach it: ask again.
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.ctl("await_startup", timeout=max(deadline - time.monotonic(), 1))
                if _answers(self.port):
                    return
            except RuntimeError:
                pass
            if time.monotonic() > deadline:
                log = self.base / "log" / f"{self.node}.log"
                tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                raise TimeoutError(f"{self.node} did not start on port {self.port}\n{tail}")
            time.sleep(0.3)

    def ctl(self, *args: str, timeout: float = 60) -> str:
        """`rabbitmqctl -n <node> ...` against this node."""
        done = subprocess.run(
            [CTL, "-q", "-n", self.node, *args],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout + 30,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)}: {done.stderr or done.stdout}")
        return done.stdout

    def stop(self) -> None:
        """Stop the whole node (the Erlang VM), gracefully."""
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            self.ctl("stop", str(self.pid_file), timeout=60)

    def kill(self) -> None:
        """SIGKILL the node's VM, as a crash would."""
        with contextlib.suppress(FileNotFoundError, ValueError, ProcessLookupError):
            os.kill(int(self.pid_file.read_text().strip()), signal.SIGKILL)
        deadline = time.monotonic() + 30
        while _answers(self.port) and time.monotonic() < deadline:
            time.sleep(0.1)

    def join(self, other: RabbitNode) -> None:
        """Join `other`'s cluster (this node's data is reset)."""
        self.ctl("stop_app")
        self.ctl("reset")
        self.ctl("join_cluster", other.node)
        self.ctl("start_app")

    def remove(self) -> None:
        """Stop the node and delete its directory."""
        self.stop()
        if self.pid_file.exists():
            self.kill()
        shutil.rmtree(self.base, ignore_errors=True)


def start(
    name: str, port: int | None = None, *, plugins: Sequence[str] = (), timeout: float = 90
) -> RabbitNode:
    """A new node `name` on `port` (a free one if None), started and accepting connections."""
    base = Path(tempfile.mkdtemp(prefix=f"{name}-"))
    base.chmod(0o777)
    node = RabbitNode(name, port or free_port(), base, plugins=plugins)
    (base / "rabbitmq.conf").write_text("")
    (base / "advanced.config").write_text("[].\n")
    (base / "rabbitmq-env.conf").write_text("")
    if os.geteuid() == 0:
        # The Debian scripts run the server as `rabbitmq`: it must own its directory.
        shutil.chown(base, "rabbitmq", "rabbitmq")
        for child in base.iterdir():
            shutil.chown(child, "rabbitmq", "rabbitmq")
    try:
        node.start_again(timeout)
    except BaseException:
        node.remove()
        raise
    return node
