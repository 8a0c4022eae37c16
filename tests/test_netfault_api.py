"""The fault proxy's HTTP API and its client, against the real server process."""

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request

import psutil
import pytest

from harness.errors import ProxyError
from harness.netfault import (
    Proxy,
    ProxyExists,
    ProxyNotFound,
    ProxyRequestRejected,
    ProxyUnreachable,
    ToxicExists,
    ToxicNotFound,
    connect,
    start_server,
)
from harness.netfault.testing import EchoServer, dial, round_trip_s, wait_until


@pytest.fixture(scope="module")
def server():
    with start_server(seed=1) as running:
        yield running


@pytest.fixture(scope="module")
def echo():
    with EchoServer() as running:
        yield running


@pytest.fixture
def client(server):
    client = server.client()
    yield client
    for name in client.proxies():
        client.delete_proxy(name)


def call(server, method, path, body=None, *, raw_body=None):
    """Send one request; the status and the decoded JSON answer (None if empty)."""
    data = raw_body if raw_body is not None else None
    if body is not None:
        data = json.dumps(body).encode()
    request = urllib.request.Request(server.url + path, data=data, method=method)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    return status, json.loads(raw) if raw.strip() else None


def free_port():
    with EchoServer() as placeholder:
        return placeholder.port


def test_version_names_the_embedded_proxy(client):
    assert client.version().startswith("queue-chaos-netfault/")
    assert client.is_seeded()


def test_a_created_proxy_answers_on_the_port_it_reports(server, client, echo):
    status, body = call(
        server,
        "POST",
        "/proxies",
        {"name": "pg", "upstream": echo.address, "listen": "127.0.0.1:0"},
    )

    assert status == 201
    assert set(body) == {"name", "listen", "upstream", "enabled", "toxics"}
    assert body["enabled"] is True and body["toxics"] == []
    port = int(body["listen"].rpartition(":")[2])
    assert port != 0
    with dial(body["listen"]) as sock:
        assert round_trip_s(sock) < 1.0


def test_the_proxy_list_maps_names_to_proxies_with_toxics(server, client, echo):
    client.create_proxy("a", echo.address)
    client.add_toxic("a", "latency", {"latency": 5})

    status, body = call(server, "GET", "/proxies")

    assert status == 200
    assert list(body) == ["a"]
    assert body["a"]["toxics"] == [
        {
            "attributes": {"latency": 5, "jitter": 0},
            "name": "latency_downstream",
            "type": "latency",
            "stream": "downstream",
            "toxicity": 1.0,
        }
    ]


def test_creating_a_proxy_twice_is_a_conflict(server, client, echo):
    client.create_proxy("twice", echo.address)

    status, body = call(
        server, "POST", "/proxies", {"name": "twice", "upstream": echo.address}
    )
    assert (status, body) == (409, {"error": "proxy already exists", "status": 409})

    with pytest.raises(ProxyExists, match="'twice' already exists.*delete it first"):
        client.create_proxy("twice", echo.address)


def test_an_unknown_proxy_is_not_found(server, client):
    status, body = call(server, "GET", "/proxies/nowhere")
    assert (status, body) == (404, {"error": "proxy not found", "status": 404})

    with pytest.raises(ProxyNotFound, match="no proxy 'nowhere'.*create it first"):
        client.get_proxy("nowhere")
    with pytest.raises(ProxyNotFound):
        client.add_toxic("nowhere", "latency")


def test_a_non_loopback_listen_address_is_refused(server, client, echo):
    status, body = call(
        server,
        "POST",
        "/proxies",
        {"name": "open", "upstream": echo.address, "listen": "0.0.0.0:0"},
    )
    assert status == 400 and body["status"] == 400
    assert "0.0.0.0:0" in body["error"] and "--allow-non-loopback" in body["error"]

    client.create_proxy("closed", echo.address)
    with pytest.raises(ProxyRequestRejected, match="not a loopback address"):
        client.update_proxy("closed", listen="192.0.2.1:5432")
    assert "open" not in client.proxies()


def test_a_proxy_without_upstream_is_refused(server):
    status, body = call(server, "POST", "/proxies", {"name": "lonely"})
    assert (status, body) == (
        400,
        {"error": "missing required field: upstream", "status": 400},
    )


def test_a_body_that_is_not_json_is_a_bad_request(server):
    status, body = call(server, "POST", "/proxies", raw_body=b"{not json")
    assert status == 400
    assert body["error"].startswith("bad request body: ")


def test_an_unknown_toxic_type_is_refused(server, client, echo):
    client.create_proxy("p", echo.address)

    status, body = call(server, "POST", "/proxies/p/toxics", {"type": "lightning"})
    assert (status, body) == (400, {"error": "invalid toxic type", "status": 400})

    with pytest.raises(ProxyRequestRejected, match="invalid toxic type"):
        client.add_toxic("p", "lightning")


def test_an_attribute_of_the_wrong_type_is_refused(server, client, echo):
    client.create_proxy("p", echo.address)

    status, body = call(
        server,
        "POST",
        "/proxies/p/toxics",
        {"type": "latency", "attributes": {"latency": "100"}},
    )

    assert status == 400 and body["status"] == 400
    assert body["error"].startswith("bad request body: ")
    assert "'latency'" in body["error"] and "integer" in body["error"]
    with pytest.raises(ProxyRequestRejected, match="must be a number from 0 to 1"):
        client.add_toxic("p", "latency", toxicity="half")
    assert client.toxics("p") == []


def test_an_unknown_stream_is_refused(server, client, echo):
    client.create_proxy("p", echo.address)

    status, body = call(
        server, "POST", "/proxies/p/toxics", {"type": "latency", "stream": "sideways"}
    )

    assert (status, body) == (
        400,
        {
            "error": "stream was invalid, can be either upstream or downstream",
            "status": 400,
        },
    )


def test_a_toxic_takes_upstream_defaults(server, client, echo):
    client.create_proxy("p", echo.address)

    status, body = call(server, "POST", "/proxies/p/toxics", {"type": "slicer"})

    assert status == 200
    assert body == {
        "attributes": {"average_size": 0, "size_variation": 0, "delay": 0},
        "name": "slicer_downstream",
        "type": "slicer",
        "stream": "downstream",
        "toxicity": 1.0,
    }
    assert call(server, "GET", "/proxies/p/toxics/slicer_downstream") == (200, body)


def test_a_toxic_name_is_unique_per_proxy(client, echo):
    client.create_proxy("p", echo.address)
    client.add_toxic("p", "latency", {"latency": 1})

    with pytest.raises(ToxicExists, match="'latency_downstream' already exists"):
        client.add_toxic("p", "latency", {"latency": 2})
    with pytest.raises(ToxicNotFound, match="has no toxic 'missing'"):
        client.remove_toxic("p", "missing")


def test_updating_a_toxic_changes_only_what_is_given(client, echo):
    client.create_proxy("p", echo.address)
    client.add_toxic("p", "latency", {"latency": 10, "jitter": 3}, stream="upstream")

    toxic = client.update_toxic("p", "latency_upstream", {"latency": 20})
    assert dict(toxic.attributes) == {"latency": 20, "jitter": 3}
    assert toxic.toxicity == 1.0

    toxic = client.update_toxic("p", "latency_upstream", toxicity=0.25)
    assert dict(toxic.attributes) == {"latency": 20, "jitter": 3}
    assert toxic.toxicity == 0.25


def test_toxics_list_upstream_first_then_in_order_of_creation(client, echo):
    client.create_proxy("p", echo.address)
    client.add_toxic("p", "latency", name="d1")
    client.add_toxic("p", "bandwidth", stream="upstream", name="u1")
    client.add_toxic("p", "slicer", name="d2")

    assert [toxic.name for toxic in client.toxics("p")] == ["u1", "d1", "d2"]


def test_moving_a_proxy_drops_its_connections(client, echo):
    old = client.create_proxy("p", echo.address)
    sock = dial(old.listen)
    round_trip_s(sock)
    new_port = free_port()

    moved = client.update_proxy("p", listen=f"127.0.0.1:{new_port}")

    assert moved.listen == f"127.0.0.1:{new_port}" and moved.enabled
    assert sock.recv(10) == b""
    sock.close()
    with pytest.raises(ConnectionRefusedError):
        dial(old.listen).close()
    with dial(moved.listen) as again:
        round_trip_s(again)


def test_a_deleted_proxy_stops_listening(server, client, echo):
    proxy = client.create_proxy("p", echo.address)

    assert call(server, "DELETE", "/proxies/p") == (204, None)
    with pytest.raises(ConnectionRefusedError):
        dial(proxy.listen).close()
    assert client.proxies() == {}


def test_populate_replaces_only_proxies_that_changed(server, client, echo):
    other = EchoServer()
    try:
        status, body = call(
            server,
            "POST",
            "/populate",
            [
                {"name": "a", "upstream": echo.address},
                {"name": "b", "upstream": echo.address},
            ],
        )
        assert status == 201
        assert [proxy["name"] for proxy in body["proxies"]] == ["a", "b"]
        a, b = (Proxy.from_json(proxy) for proxy in body["proxies"])
        client.add_toxic("a", "latency")
        client.add_toxic("b", "latency")

        populated = client.populate(
            [a, Proxy(name="b", upstream=other.address, listen=b.listen)]
        )

        assert [proxy.name for proxy in populated] == ["a", "b"]
        assert len(client.get_proxy("a").toxics) == 1
        assert client.get_proxy("b").toxics == ()
        assert client.get_proxy("b").upstream == other.address
    finally:
        other.close()


def test_populate_refuses_entries_without_a_name(server):
    status, body = call(server, "POST", "/populate", [{"upstream": "127.0.0.1:1"}])
    assert status == 400
    assert body["error"] == "missing required field: name at proxy 1"


def test_reset_enables_every_proxy_and_removes_every_toxic(server, client, echo):
    client.create_proxy("a", echo.address)
    client.create_proxy("b", echo.address, enabled=False)
    client.add_toxic("a", "latency", {"latency": 1000})
    client.add_toxic("b", "timeout", stream="upstream")

    assert call(server, "POST", "/reset") == (204, None)

    proxies = client.proxies()
    assert all(proxy.enabled and proxy.toxics == () for proxy in proxies.values())
    with dial(proxies["b"].listen) as sock:
        assert round_trip_s(sock) < 0.5


def test_unknown_paths_and_methods_answer_in_the_error_shape(server):
    assert call(server, "GET", "/nowhere") == (
        404,
        {"error": "not found", "status": 404},
    )
    assert call(server, "PUT", "/proxies") == (
        405,
        {"error": "method not allowed", "status": 405},
    )


def test_connect_uses_a_toxiproxy_url_that_answers(server, monkeypatch):
    monkeypatch.setenv("TOXIPROXY_URL", server.url)

    client = connect()

    assert client.url == server.url and client.server is None


def test_connect_names_a_toxiproxy_url_that_does_not_answer(monkeypatch):
    url = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("TOXIPROXY_URL", url)

    with pytest.raises(ProxyError) as raised:
        connect()

    assert isinstance(raised.value, ProxyUnreachable)
    assert f"TOXIPROXY_URL={url} does not answer" in str(raised.value)
    assert "start Toxiproxy there or unset it" in str(raised.value)


def test_connect_without_a_url_starts_an_embedded_server(monkeypatch):
    monkeypatch.delenv("TOXIPROXY_URL", raising=False)

    with connect(seed=3) as client:
        process = client.server.process
        assert client.is_seeded()

    assert process.returncode == 0


def test_the_server_dies_with_its_parent():
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import os, sys, time\n"
            "from harness.netfault import start_server\n"
            "server = start_server(seed=0)\n"
            "print(server.pid, flush=True)\n"
            "time.sleep(60)\n",
        ],
        stdout=subprocess.PIPE,
        cwd=os.path.dirname(os.path.dirname(__file__)),
    )
    try:
        child_pid = int(parent.stdout.readline())
        parent.kill()
        parent.wait()

        def child_gone():
            try:
                return psutil.Process(child_pid).status() == psutil.STATUS_ZOMBIE
            except psutil.NoSuchProcess:
                return True

        wait_until(child_gone, timeout_s=10, what="the orphaned server's death")
    finally:
        parent.kill()
        parent.wait()
        parent.stdout.close()
