"""The agent's output grouping: keyed messages go where Kafka's default partitioner puts them."""

from __future__ import annotations

import pytest

from streamrec.sink import by_key, partition_of

# Kafka's own murmur2 test vectors (UtilsTest.testMurmur2), as signed 32-bit values.
KAFKA_MURMUR2 = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}


@pytest.mark.parametrize("partitions", [1, 3, 8, 12])
def test_keys_go_to_the_java_clients_partition(partitions: int) -> None:
    for key, signed in KAFKA_MURMUR2.items():
        expected = (signed & 0x7FFFFFFF) % partitions  # Utils.toPositive(murmur2) % n
        assert partition_of(key, partitions) == expected
        # Asked again (from the cache), and for a key object made anew: the same.
        assert partition_of(bytes(bytearray(key)), partitions) == expected


def test_by_key_keeps_every_message_in_order_per_partition() -> None:
    messages = [(f"user-{i % 37}".encode(), f"v{i}".encode()) for i in range(500)]
    messages += [(None, b"keyless-1"), (None, b"keyless-2")]
    grouped = by_key(messages, 8)
    assert sum(len(m) for m in grouped.values()) == len(messages)
    for part, msgs in grouped.items():
        keyed = [m for m in msgs if m[0] is not None]
        assert all(partition_of(k, 8) == part for k, _ in keyed)
        # Each partition's messages in the order given (a user's answers stay in order).
        assert keyed == [m for m in messages if m[0] is not None and partition_of(m[0], 8) == part]
    keyless = [v for msgs in grouped.values() for k, v in msgs if k is None]
    assert sorted(keyless) == [b"keyless-1", b"keyless-2"]
