"""The embedded Kafka-protocol broker (demo, tests) and topic administration.

Production runs any Apache Kafka >= 3 cluster (see deploy/); nothing outside this module
knows which embedded broker we use. It is noida-db (design.md, "Broker": it passed the
recovery, failover and no-gap tests that Tansu failed here). Switching means changing
:func:`broker_command` and :data:`BROKER_NAME`.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType

from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from .config import client_config, consumer_config
from .topology import TopicSpec, Topology

BROKER_NAME = "noida-db 0.2.3"
_ADDRESS_RE = re.compile(r"kafka\s+(\S+:\d+)")


class BrokerError(RuntimeError):
    """The embedded broker did not start, or an admin call failed."""


def _noida_binary() -> str:
    """The broker binary inside the noida-db wheel (its ``noida-db`` console script is a
    Python launcher around it; running the binary itself lets it die with its owner)."""
    try:
        from importlib.resources import files

        binary = Path(str(files("noida_db").joinpath("noida-db")))
    except ModuleNotFoundError:
        raise BrokerError("noida-db is not installed: pip install noida-db==0.2.3") from None
    if not binary.is_file():
        raise BrokerError(f"noida-db's broker binary is missing at {binary}")
    if not os.access(binary, os.X_OK):
        binary.chmod(0o755)
    return str(binary)


def _die_with_parent() -> None:
    """In the child: SIGINT it (the broker saves its data and exits) when the process
    that started it dies, even by SIGKILL, so no orphaned broker keeps spinning. Linux
    ties this to the starting thread, so start brokers from a long-lived thread."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGINT)


def broker_command(port: int, data_dir: Path) -> list[str]:
    return [
        _noida_binary(),
        "start",
        "--only",
        "kafka",
        "--host",
        "127.0.0.1",
        "--kafka-port",
        str(port),
        "--data-dir",
        str(data_dir),
    ]


class EmbeddedBroker:
    """Start/stop the embedded broker as a child process; ``bootstrap`` once ready.

    ``port=0`` picks a free port. ``data_dir=None`` uses a temporary directory that is
    removed on stop; pass a directory to keep data and offsets across restarts.
    """

    def __init__(
        self, port: int = 0, data_dir: str | Path | None = None, log: Path | None = None
    ) -> None:
        self.port = port
        self._tmp = None if data_dir else tempfile.mkdtemp(prefix="streamrec-broker-")
        self.data_dir = Path(data_dir or self._tmp)  # type: ignore[arg-type]
        self.log_path = log
        self.bootstrap: str | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self._lines: list[str] = []

    def start(self, timeout: float = 60.0) -> str:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            broker_command(self.port, self.data_dir),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C in a terminal reaches us, we stop it in order
            preexec_fn=_die_with_parent,
        )
        found = threading.Event()
        threading.Thread(target=self._pump, args=(found,), daemon=True).start()
        deadline = time.monotonic() + timeout
        while not found.wait(0.05):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                output = "".join(self._lines[-20:])
                self.stop()
                raise BrokerError(f"{BROKER_NAME} did not start:\n{output}")
        wait_ready(self.bootstrap, timeout=max(1.0, deadline - time.monotonic()))
        return self.bootstrap  # type: ignore[return-value]

    def _pump(self, found: threading.Event) -> None:
        """Read the broker's output: find its address, then keep the pipe drained."""
        assert self.proc and self.proc.stdout
        sink = self.log_path.open("a") if self.log_path else None
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace")
            if sink:
                sink.write(line)
                sink.flush()
            if len(self._lines) < 200:
                self._lines.append(line)
            m = _ADDRESS_RE.search(line)
            if m and not found.is_set():
                self.bootstrap = m.group(1)
                found.set()
        if sink:
            sink.close()

    def stop(self, timeout: float = 15.0) -> None:
        """SIGINT lets the broker save its data; SIGKILL if it does not exit in time."""
        proc, self.proc = self.proc, None
        if proc and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(
        self,
        et: type[BaseException] | None,
        ev: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def admin(bootstrap: str | None = None) -> AdminClient:
    return AdminClient(client_config(bootstrap))


def wait_ready(bootstrap: str | None, timeout: float = 30.0) -> None:
    """Block until the cluster answers a metadata request."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    client = admin(bootstrap)
    while time.monotonic() < deadline:
        try:
            md = client.list_topics(timeout=2)
            if md.brokers:
                return
        except KafkaException as exc:
            last = exc
        time.sleep(0.1)
    raise BrokerError(f"no Kafka broker answered at {bootstrap} within {timeout:.0f}s: {last}")


def list_topics(bootstrap: str | None = None) -> dict[str, int]:
    """Topic name -> partition count (internal topics excluded)."""
    md = admin(bootstrap).list_topics(timeout=10)
    return {name: len(t.partitions) for name, t in md.topics.items() if not name.startswith("__")}


def create_topics(
    specs: Iterable[TopicSpec], bootstrap: str | None = None, replication: int = 1
) -> dict[str, str]:
    """Create topics idempotently. Returns name -> "created" | "exists".

    An existing topic with a different partition count is an error: keys would map to
    other partitions and session state would no longer follow its users.
    """
    specs = list(specs)
    client = admin(bootstrap)
    existing = list_topics(bootstrap)
    result: dict[str, str] = {}
    todo = []
    for spec in specs:
        if spec.name in existing:
            if existing[spec.name] != spec.partitions:
                raise BrokerError(
                    f"topic {spec.name} exists with {existing[spec.name]} partitions, "
                    f"topology wants {spec.partitions}"
                )
            result[spec.name] = "exists"
        else:
            todo.append(
                NewTopic(
                    spec.name,
                    num_partitions=spec.partitions,
                    replication_factor=replication,
                    config=dict(spec.config),
                )
            )
    if todo:
        for name, fut in client.create_topics(todo, request_timeout=30).items():
            try:
                fut.result()
                result[name] = "created"
            except KafkaException as exc:
                if "TOPIC_ALREADY_EXISTS" in str(exc):
                    result[name] = "exists"
                else:
                    raise BrokerError(f"could not create topic {name}: {exc}") from exc
    _wait_for_metadata([s.name for s in specs], bootstrap)
    return result


def _wait_for_metadata(names: list[str], bootstrap: str | None, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if set(names) <= set(list_topics(bootstrap)):
            return
        time.sleep(0.1)
    raise BrokerError(f"topics {names} not visible after {timeout}s")


def delete_records(names: Iterable[str], bootstrap: str | None = None) -> int:
    """Delete every record now in the topics ``names`` (Kafka's DeleteRecords up to each
    partition's end; the offsets go on from there). Returns how many were deleted."""
    client = admin(bootstrap)
    md = client.list_topics(timeout=10)
    probe = Consumer(consumer_config(bootstrap, **{"group.id": "streamrec-admin"}))
    try:
        todo = []
        for name in names:
            for p in md.topics[name].partitions if name in md.topics else ():
                low, high = probe.get_watermark_offsets(TopicPartition(name, p), timeout=10)
                if high > low:
                    todo.append((TopicPartition(name, p, high), high - low))
    finally:
        probe.close()
    if not todo:
        return 0
    futures = client.delete_records([tp for tp, _ in todo], request_timeout=30)
    for tp, fut in futures.items():
        try:
            fut.result()
        except KafkaException as exc:
            where = f"{tp.topic}[{tp.partition}]"
            raise BrokerError(f"could not delete the records of {where}: {exc}") from exc
    return sum(n for _, n in todo)


def delete_topics(names: Iterable[str], bootstrap: str | None = None) -> None:
    """Delete the topics ``names`` (the bench's own, once a system is measured)."""
    names, client = list(names), admin(bootstrap)
    if names:
        for name, fut in client.delete_topics(names, request_timeout=30).items():
            try:
                fut.result()
            except KafkaException as exc:
                raise BrokerError(f"could not delete topic {name}: {exc}") from exc


def create_topology_topics(
    topology: Topology, bootstrap: str | None = None, replication: int = 1
) -> dict[str, str]:
    return create_topics(topology.all_topics(), bootstrap, replication)


def group_members(group: str, bootstrap: str | None = None) -> dict[str, str]:
    """A consumer group's members: group instance id (static id) -> member id."""
    client = admin(bootstrap)  # keep it alive until the answer is in
    desc = client.describe_consumer_groups([group])[group].result(15)
    return {m.group_instance_id or m.member_id: m.member_id for m in desc.members}


def remove_group_member(group: str, instance_id: str, bootstrap: str | None = None) -> str:
    """Remove a static member that died from its group, so the group rebalances and the
    surviving workers take over its partitions now (what Kafka's AdminClient
    ``removeMembersFromConsumerGroup`` does). A broker expires a dead member by itself
    after ``session.timeout.ms``; noida-db 0.2.3 never does, and a worker under a
    static id that is not restarted holds its partitions until this is run.
    Returns the removed member id; raises :class:`BrokerError` if there is none."""
    import asyncio

    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.protocol.group import LeaveGroupRequest

    from .config import aiokafka_security, bootstrap_servers

    member = group_members(group, bootstrap).get(instance_id)
    if member is None:
        raise BrokerError(f"group {group!r} has no member with instance id {instance_id!r}")

    async def leave() -> int:
        client = AIOKafkaAdminClient(
            bootstrap_servers=bootstrap_servers(bootstrap), **aiokafka_security()
        )
        await client.start()
        try:
            node = await client.find_coordinator(group)
            # Neither Python client exposes member removal; LeaveGroup on the member's
            # behalf is the request it consists of.
            response = await client._client.send(node, LeaveGroupRequest(group, member))
            return response.error_code
        finally:
            await client.close()

    error = asyncio.run(leave())
    if error:
        raise BrokerError(f"LeaveGroup for {instance_id!r} in {group!r} failed: error {error}")
    return member
