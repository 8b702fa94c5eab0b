"""Distributed search with keras-tuner's own chief/worker mode, and multi-GPU trials.

keras-tuner reads ``KERASTUNER_TUNER_ID``, ``KERASTUNER_ORACLE_IP`` and
``KERASTUNER_ORACLE_PORT``: the process whose id contains ``chief`` serves the oracle
over gRPC, every other process asks it for trials and runs them. This module turns
``--chief`` / ``--worker`` into those variables and checks what keras-tuner would
otherwise only report after an hour-long gRPC time-out.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from lvseg_search.errors import UserError

ENV_ID, ENV_IP, ENV_PORT = "KERASTUNER_TUNER_ID", "KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT"
LOOPBACK = "127.0.0.1"


def parse_address(value: str, option: str, default_host: str | None = None) -> tuple[str, int]:
    """Parses ``HOST:PORT`` (or ``:PORT``/``PORT`` when ``default_host`` is given).

    Raises:
        UserError: The value is not an address with a port in 1..65535.
    """
    host, sep, port = value.rpartition(":")
    if not sep:
        host, port = "", value
    host = host.strip("[]") or (default_host or "")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UserError(f"{option}: {value!r} is not HOST:PORT (e.g. "
                        f"{default_host or '10.0.0.5'}:8000)")
    return host, int(port)


def role_from_environment() -> str | None:
    """``"chief"``, ``"worker"`` or None, from keras-tuner's environment variables."""
    if ENV_IP not in os.environ:
        return None
    return "chief" if "chief" in os.environ.get(ENV_ID, "") else "worker"


def configure(role: str, host: str, port: int, tuner_id: str | None = None) -> str:
    """Sets keras-tuner's environment variables for this process; returns the tuner id."""
    tid = "chief" if role == "chief" else (
        tuner_id or f"worker-{socket.gethostname()}-{os.getpid()}")
    if role == "worker" and "chief" in tid:
        raise UserError(f"--tuner-id: {tid!r} contains 'chief', which keras-tuner reserves "
                        "for the oracle process")
    os.environ.update({ENV_ID: tid, ENV_IP: host, ENV_PORT: str(port)})
    return tid


def check_port_free(host: str, port: int) -> None:
    """Raises a clear error when the chief cannot listen on ``host:port``."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            raise UserError(f"--chief: cannot listen on {host}:{port} ({exc.strerror}); "
                            "choose another port or address") from None


def wait_for_chief(host: str, port: int, timeout: float) -> None:
    """Waits until the chief's gRPC server answers.

    Raises:
        UserError: The chief is not reachable within ``timeout`` seconds.
    """
    import grpc

    channel = grpc.insecure_channel(f"{host}:{port}")
    try:
        grpc.channel_ready_future(channel).result(timeout=timeout)
    except grpc.FutureTimeoutError:
        raise UserError(f"--worker: no chief answers at {host}:{port} after {timeout:g} s; "
                        "start 'lvseg-search search --chief' first, and check the address, "
                        "port and firewall") from None
    finally:
        channel.close()


def make_strategy(name: str | None) -> Any:
    """Returns a ``tf.distribute`` strategy for ``--strategy`` (None: no strategy).

    ``mirrored`` mirrors each fold model over the visible GPUs, or over the logical CPU
    devices when there is no GPU but several CPU devices are configured.

    Raises:
        UserError: Unknown strategy, or fewer than two devices to mirror over.
    """
    if name in (None, "none"):
        return None
    if name != "mirrored":
        raise UserError(f"--strategy: unknown {name!r}; choose 'mirrored' or 'none'")
    from lvseg_search._tf import tf

    t = tf()
    devices = [d.name for d in t.config.list_logical_devices("GPU")]
    if not devices:
        cpus = [d.name for d in t.config.list_logical_devices("CPU")]
        devices = cpus if len(cpus) > 1 else []
    if not devices:
        raise UserError("--strategy mirrored: no GPU is visible (and only one CPU device); "
                        "drop the option or make GPUs visible")
    return t.distribute.MirroredStrategy(devices)
