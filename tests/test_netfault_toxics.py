"""Each toxic against Toxiproxy's documented behaviour, through real sockets."""

import itertools
import os
import socket
import time

import pytest

from harness.netfault import start_server
from harness.netfault.testing import (
    EchoServer,
    dial,
    recv_exactly,
    recv_until_closed,
    round_trip_s,
)

# Slack allowed on top of a requested delay: the machine is small and shared.
TOLERANCE_S = 0.08

_names = itertools.count()


@pytest.fixture(scope="module")
def server():
    with start_server(seed=11) as running:
        yield running


@pytest.fixture(scope="module")
def client(server):
    return server.client()


@pytest.fixture(scope="module")
def echo():
    with EchoServer() as running:
        yield running


@pytest.fixture
def proxy(client, echo):
    proxy = client.create_proxy(f"t{next(_names)}", echo.address)
    yield proxy
    client.delete_proxy(proxy.name)


def test_latency_delays_each_reply_by_the_latency(client, proxy):
    client.add_toxic(proxy.name, "latency", {"latency": 100})

    with dial(proxy.listen) as sock:
        round_trips_s = [round_trip_s(sock) for _ in range(5)]

    assert all(0.1 <= rtt < 0.1 + TOLERANCE_S for rtt in round_trips_s), round_trips_s


def test_upstream_latency_delays_each_request(client, proxy):
    client.add_toxic(proxy.name, "latency", {"latency": 100}, stream="upstream")

    with dial(proxy.listen) as sock:
        rtt = round_trip_s(sock)

    assert 0.1 <= rtt < 0.1 + TOLERANCE_S


def test_jitter_spreads_the_latency_within_its_bounds(client, proxy):
    client.add_toxic(proxy.name, "latency", {"latency": 60, "jitter": 30})

    with dial(proxy.listen) as sock:
        round_trips_s = [round_trip_s(sock) for _ in range(15)]

    assert all(0.03 <= rtt < 0.09 + TOLERANCE_S for rtt in round_trips_s)
    assert max(round_trips_s) - min(round_trips_s) > 0.015, round_trips_s


def test_latency_is_pipelined_not_added_per_chunk(client, proxy):
    client.add_toxic(proxy.name, "latency", {"latency": 100})

    with dial(proxy.listen) as sock:
        start = time.monotonic()
        for _ in range(10):
            sock.sendall(b"x" * 100)
        recv_exactly(sock, 1000)
        elapsed_s = time.monotonic() - start

    assert 0.1 <= elapsed_s < 0.1 + TOLERANCE_S * 2


def test_toxics_apply_to_connections_already_open(client, proxy):
    with dial(proxy.listen) as sock:
        assert round_trip_s(sock) < TOLERANCE_S

        client.add_toxic(proxy.name, "latency", {"latency": 150})
        assert round_trip_s(sock) >= 0.15

        client.update_toxic(proxy.name, "latency_downstream", {"latency": 0})
        assert round_trip_s(sock) < TOLERANCE_S

        client.update_toxic(proxy.name, "latency_downstream", {"latency": 5000})
        sock.sendall(b"held")
        client.remove_toxic(proxy.name, "latency_downstream")
        start = time.monotonic()
        assert recv_exactly(sock, 4) == b"held"
        assert time.monotonic() - start < 1.0
        assert round_trip_s(sock) < TOLERANCE_S


def test_reset_peer_is_seen_as_connection_reset(client, proxy):
    client.add_toxic(proxy.name, "reset_peer", {"timeout": 0})

    with dial(proxy.listen) as sock:
        sock.sendall(b"hello")
        with pytest.raises(ConnectionResetError):
            recv_until_closed(sock)


def test_reset_peer_waits_for_its_timeout(client, proxy):
    client.add_toxic(proxy.name, "reset_peer", {"timeout": 200}, stream="upstream")

    with dial(proxy.listen) as sock:
        start = time.monotonic()
        sock.sendall(b"hello")
        with pytest.raises(ConnectionResetError):
            recv_until_closed(sock)
        elapsed_s = time.monotonic() - start

    assert 0.2 <= elapsed_s < 0.2 + TOLERANCE_S


def test_limit_data_closes_after_exactly_that_many_bytes(client, proxy):
    client.add_toxic(proxy.name, "limit_data", {"bytes": 1000})
    payload = os.urandom(5000)

    with dial(proxy.listen) as sock:
        sock.sendall(payload)
        data, _ = recv_until_closed(sock)

    assert data == payload[:1000]


def test_limit_data_counts_across_writes(client, proxy):
    client.add_toxic(proxy.name, "limit_data", {"bytes": 10})

    with dial(proxy.listen) as sock:
        assert round_trip_s(sock, b"123456") < 1.0
        sock.sendall(b"7890abc")
        data, _ = recv_until_closed(sock)

    assert data == b"7890"


def test_timeout_zero_holds_the_connection_and_drops_data(client, proxy):
    client.add_toxic(proxy.name, "timeout", {"timeout": 0})

    with dial(proxy.listen, timeout_s=0.3) as sock:
        sock.sendall(b"into the void")
        # Nothing comes back, not even the end of the stream, while it lasts.
        with pytest.raises(TimeoutError):
            sock.recv(100)

        # As upstream: removing the toxic closes what it held.
        client.remove_toxic(proxy.name, "timeout_downstream")
        sock.settimeout(5)
        assert recv_until_closed(sock)[0] == b""


def test_timeout_closes_the_connection_after_the_timeout(client, proxy):
    client.add_toxic(proxy.name, "timeout", {"timeout": 200})

    with dial(proxy.listen) as sock:
        start = time.monotonic()
        sock.sendall(b"dropped")
        data, _ = recv_until_closed(sock)
        elapsed_s = time.monotonic() - start

    assert data == b""
    assert 0.2 <= elapsed_s < 0.2 + TOLERANCE_S


def test_a_disabled_proxy_closes_its_connections_and_refuses_new_ones(client, proxy):
    sock = dial(proxy.listen)
    round_trip_s(sock)

    client.disable(proxy.name)

    assert recv_until_closed(sock)[0] == b""
    sock.close()
    with pytest.raises(ConnectionRefusedError):
        dial(proxy.listen).close()

    client.enable(proxy.name)
    with dial(proxy.listen) as again:
        assert round_trip_s(again) < TOLERANCE_S


def test_slicer_delivers_every_byte_in_several_reads(client, proxy):
    client.add_toxic(
        proxy.name,
        "slicer",
        {"average_size": 100, "size_variation": 40, "delay": 2000},
    )
    payload = os.urandom(3000)

    with dial(proxy.listen) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        data, reads = recv_until_closed(sock)

    assert data == payload
    assert reads >= 10


def test_bandwidth_limits_the_rate(client, proxy):
    client.add_toxic(proxy.name, "bandwidth", {"rate": 100})
    payload = os.urandom(50_000)

    with dial(proxy.listen) as sock:
        start = time.monotonic()
        sock.sendall(payload)
        received = recv_exactly(sock, len(payload))
        elapsed_s = time.monotonic() - start

    assert received == payload
    # 50 kB at 100 KB/s is 0.5 s.
    assert 0.4 <= elapsed_s < 0.5 + TOLERANCE_S * 3


def test_slow_close_delays_the_end_of_the_stream(client, proxy):
    client.add_toxic(proxy.name, "slow_close", {"delay": 300})

    with dial(proxy.listen) as sock:
        sock.sendall(b"bye")
        sock.shutdown(socket.SHUT_WR)
        start = time.monotonic()
        data, _ = recv_until_closed(sock)
        elapsed_s = time.monotonic() - start

    assert data == b"bye"
    assert 0.3 <= elapsed_s < 0.3 + TOLERANCE_S


def test_plain_pumping_carries_every_byte(client, proxy):
    payload = os.urandom(4 << 20)

    with dial(proxy.listen) as sock:
        start = time.monotonic()
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        data, _ = recv_until_closed(sock)
        elapsed_s = time.monotonic() - start

    assert data == payload
    assert elapsed_s < 5.0


def affected_ordinals(client, proxy_name, connections):
    """Which of connections successive connections a 1-byte limit cut short."""
    affected = []
    listen = client.get_proxy(proxy_name).listen
    for ordinal in range(1, connections + 1):
        with dial(listen) as sock:
            sock.sendall(b"abcd")
            data = b""
            while len(data) < 4 and (piece := sock.recv(4)):
                data += piece
        if data == b"a":
            affected.append(ordinal)
        else:
            assert data == b"abcd"
    return affected


@pytest.fixture(scope="module")
def seeded_servers():
    """Three servers: two with seed 5, one with seed 6."""
    servers = [start_server(seed=seed) for seed in (5, 5, 6)]
    try:
        yield servers
    finally:
        for server in servers:
            server.stop()


@pytest.fixture
def seeded_clients(seeded_servers, echo):
    """A fresh proxy "db" on each seeded server, so ordinals start at 1."""
    clients = [server.client() for server in seeded_servers]
    for client in clients:
        client.create_proxy("db", echo.address)
        client.add_toxic("db", "limit_data", {"bytes": 1}, toxicity=0.5)
    yield clients
    for client in clients:
        client.delete_proxy("db")


def test_toxicity_picks_about_half_of_the_connections(seeded_clients):
    affected = affected_ordinals(seeded_clients[0], "db", 200)

    assert 70 <= len(affected) <= 130, len(affected)


def test_the_same_seed_picks_the_same_connections(seeded_clients):
    first = affected_ordinals(seeded_clients[0], "db", 100)
    second = affected_ordinals(seeded_clients[1], "db", 100)

    assert first == second


def test_another_seed_picks_other_connections(seeded_clients):
    five = affected_ordinals(seeded_clients[0], "db", 100)
    six = affected_ordinals(seeded_clients[2], "db", 100)

    assert five != six
