"""Network faults: a Toxiproxy-compatible fault proxy, its client and process."""

from harness.netfault._process import EmbeddedProxyServer, connect, start_server
from harness.netfault.client import Proxy, Toxic, ToxiproxyClient
from harness.netfault.errors import (
    ProxyExists,
    ProxyNotFound,
    ProxyRequestFailed,
    ProxyRequestRejected,
    ProxyUnreachable,
    ToxicExists,
    ToxicNotFound,
)

__all__ = [
    "EmbeddedProxyServer",
    "Proxy",
    "ProxyExists",
    "ProxyNotFound",
    "ProxyRequestFailed",
    "ProxyRequestRejected",
    "ProxyUnreachable",
    "Toxic",
    "ToxicExists",
    "ToxicNotFound",
    "ToxiproxyClient",
    "connect",
    "start_server",
]
