"""The fault proxy as seen by toxiproxy-python, a client written for Toxiproxy."""

import urllib.parse

import pytest
import toxiproxy
from toxiproxy.api import APIConsumer
from toxiproxy.exceptions import InvalidToxic, NotFound, ProxyExists

from harness.netfault import start_server
from harness.netfault.testing import EchoServer, dial, round_trip_s


@pytest.fixture(scope="module")
def server():
    with start_server(seed=2) as running:
        yield running


@pytest.fixture(scope="module")
def echo():
    with EchoServer() as running:
        yield running


@pytest.fixture
def upstream_client(server):
    """toxiproxy-python pointed at the embedded server, then set back."""
    saved = APIConsumer.host, APIConsumer.port
    address = urllib.parse.urlsplit(server.url)
    APIConsumer.host, APIConsumer.port = address.hostname, address.port
    client = toxiproxy.Toxiproxy()
    yield client
    client.destroy_all()
    APIConsumer.host, APIConsumer.port = saved


def test_a_proxy_and_toxic_made_by_toxiproxy_python_act_on_sockets(
    upstream_client, echo
):
    proxy = upstream_client.create(upstream=echo.address, name="compat")
    assert upstream_client.running()
    assert upstream_client.version()

    proxy.add_toxic(type="latency", attributes={"latency": 100})

    toxics = proxy.toxics()
    assert list(toxics) == ["latency_downstream"]
    assert toxics["latency_downstream"].attributes == {"latency": 100, "jitter": 0}
    with dial(proxy.listen) as sock:
        assert round_trip_s(sock) >= 0.1

        proxy.destroy_toxic("latency_downstream")
        assert round_trip_s(sock) < 0.1


def test_toxiproxy_python_takes_a_proxy_down_and_up(upstream_client, echo):
    proxy = upstream_client.create(upstream=echo.address, name="compat")

    with proxy.down():
        assert upstream_client.get_proxy("compat").enabled is False
        with pytest.raises(ConnectionRefusedError):
            dial(proxy.listen).close()

    with dial(proxy.listen) as sock:
        assert round_trip_s(sock) < 1.0


def test_toxiproxy_python_sees_the_errors_it_expects(upstream_client, echo):
    upstream_client.create(upstream=echo.address, name="compat")

    with pytest.raises(ProxyExists):
        APIConsumer.post("/proxies", json={"name": "compat", "upstream": echo.address})
    with pytest.raises(NotFound):
        APIConsumer.get("/proxies/absent")
    with pytest.raises(InvalidToxic):
        upstream_client.get_proxy("compat").add_toxic(type="lightning")


def test_toxiproxy_python_populates_and_resets(upstream_client, echo):
    created = upstream_client.populate(
        [
            {"name": "one", "upstream": echo.address, "listen": "127.0.0.1:0"},
            {"name": "two", "upstream": echo.address, "listen": "127.0.0.1:0"},
        ]
    )
    assert sorted(proxy.name for proxy in created) == ["one", "two"]
    upstream_client.get_proxy("one").add_toxic(type="timeout", stream="upstream")
    upstream_client.get_proxy("two").disable()

    assert upstream_client.reset()

    proxies = upstream_client.proxies()
    assert all(proxy.enabled for proxy in proxies.values())
    assert proxies["one"].toxics() == {}
