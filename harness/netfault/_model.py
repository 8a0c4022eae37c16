"""Toxic and proxy specifications of the fault proxy, validated from API JSON."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

STREAMS = ("upstream", "downstream")

# Attribute names per toxic type, as Toxiproxy spells them. Units: latency,
# jitter, delay (slow_close), timeout in milliseconds; rate in KB/s (1000
# bytes); slicer delay in microseconds; sizes and bytes in bytes.
TOXIC_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "bandwidth": ("rate",),
    "latency": ("latency", "jitter"),
    "limit_data": ("bytes",),
    "noop": (),
    "reset_peer": ("timeout",),
    "slicer": ("average_size", "size_variation", "delay"),
    "slow_close": ("delay",),
    "timeout": ("timeout",),
}


class ApiError(Exception):
    """A request the API refuses, with Toxiproxy's message and HTTP status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.message = message
        self.status = status

    def to_json(self) -> dict[str, Any]:
        return {"error": self.message, "status": self.status}


def bad_request(detail: str) -> ApiError:
    return ApiError(f"bad request body: {detail}", 400)


def missing_field(name: str) -> ApiError:
    return ApiError(f"missing required field: {name}", 400)


def proxy_not_found() -> ApiError:
    return ApiError("proxy not found", 404)


def proxy_exists() -> ApiError:
    return ApiError("proxy already exists", 409)


def toxic_not_found() -> ApiError:
    return ApiError("toxic not found", 404)


def toxic_exists() -> ApiError:
    return ApiError("toxic already exists", 409)


def invalid_stream() -> ApiError:
    return ApiError("stream was invalid, can be either upstream or downstream", 400)


def invalid_toxic_type() -> ApiError:
    return ApiError("invalid toxic type", 400)


@dataclass
class ToxicSpec:
    """One toxic as the API shows it; attributes hold every field of its type."""

    name: str
    type: str
    stream: str
    toxicity: float
    attributes: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "attributes": dict(self.attributes),
            "name": self.name,
            "type": self.type,
            "stream": self.stream,
            "toxicity": self.toxicity,
        }


def _require_object(body: object) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise bad_request(f"expected a JSON object, got {type(body).__name__}")
    return body


def _optional_str(body: dict[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is None or isinstance(value, str):
        return value
    raise bad_request(f"field {key!r} must be a string, got {_json_type(value)}")


def _json_type(value: object) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return "null"


def _toxicity(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise bad_request(
            f"field 'toxicity' must be a number from 0 to 1, got {_json_type(value)}"
        )
    if not 0.0 <= value <= 1.0:
        raise bad_request(f"field 'toxicity' must be from 0 to 1, got {value}")
    return float(value)


def _attributes(
    toxic_type: str, given: object, current: dict[str, int]
) -> dict[str, int]:
    if given is None:
        return dict(current)
    if not isinstance(given, dict):
        raise bad_request(f"field 'attributes' must be an object, got {given!r}")

    merged = dict(current)
    for name in TOXIC_ATTRIBUTES[toxic_type]:
        if name not in given:
            continue
        value = given[name]
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad_request(
                f"attribute {name!r} of a {toxic_type} toxic must be an integer, "
                f"got {_json_type(value)} {value!r}"
            )
        if value < 0:
            raise bad_request(
                f"attribute {name!r} of a {toxic_type} toxic must not be "
                f"negative, got {value}"
            )
        merged[name] = value
    return merged


def parse_new_toxic(body: object) -> ToxicSpec:
    """Validate the body of POST /proxies/{proxy}/toxics."""
    body = _require_object(body)
    toxic_type = _optional_str(body, "type") or ""
    stream = (_optional_str(body, "stream") or "downstream").lower()
    name = _optional_str(body, "name")

    if stream not in STREAMS:
        raise invalid_stream()
    if toxic_type not in TOXIC_ATTRIBUTES:
        raise invalid_toxic_type()

    toxicity = _toxicity(body["toxicity"]) if "toxicity" in body else 1.0
    defaults = dict.fromkeys(TOXIC_ATTRIBUTES[toxic_type], 0)
    return ToxicSpec(
        name=name or f"{toxic_type}_{stream}",
        type=toxic_type,
        stream=stream,
        toxicity=toxicity,
        attributes=_attributes(toxic_type, body.get("attributes"), defaults),
    )


def parse_toxic_update(spec: ToxicSpec, body: object) -> ToxicSpec:
    """Validate the body of POST /proxies/{proxy}/toxics/{toxic}.

    Only attributes and toxicity change; attributes not given keep their value.
    """
    body = _require_object(body)
    toxicity = _toxicity(body["toxicity"]) if "toxicity" in body else spec.toxicity
    return ToxicSpec(
        name=spec.name,
        type=spec.type,
        stream=spec.stream,
        toxicity=toxicity,
        attributes=_attributes(spec.type, body.get("attributes"), spec.attributes),
    )


@dataclass
class ProxyInput:
    """The fields of a proxy given to create, populate or update."""

    name: str
    listen: str
    upstream: str
    enabled: bool


def parse_proxy_input(
    body: object, *, current: ProxyInput | None = None, where: str = ""
) -> ProxyInput:
    """Validate a proxy object; with current, absent fields keep their value."""
    body = _require_object(body)
    name = _optional_str(body, "name")
    listen = _optional_str(body, "listen")
    upstream = _optional_str(body, "upstream")
    enabled = body.get("enabled")
    if enabled is not None and not isinstance(enabled, bool):
        raise bad_request(
            f"field 'enabled' must be a boolean, got {_json_type(enabled)}"
        )

    if current is not None:
        return ProxyInput(
            name=current.name,
            listen=listen or current.listen,
            upstream=upstream or current.upstream,
            enabled=current.enabled if enabled is None else enabled,
        )
    if not name:
        raise missing_field(f"name{where}")
    if not upstream:
        raise missing_field(f"upstream{where}")
    return ProxyInput(
        name=name,
        listen=listen or "127.0.0.1:0",
        upstream=upstream,
        enabled=True if enabled is None else enabled,
    )


def split_host_port(address: str) -> tuple[str, int]:
    """Split "host:port" or "[v6]:port"; raise ValueError naming the address."""
    host, sep, port_text = address.rpartition(":")
    if not sep or not port_text.isdigit() or int(port_text) > 65535:
        raise ValueError(f"address {address!r} is not host:port")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port_text)


def join_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_listen(address: str, *, allow_non_loopback: bool) -> tuple[str, int]:
    """Parse a listen address and refuse non-loopback ones unless allowed."""
    try:
        host, port = split_host_port(address)
    except ValueError as exc:
        raise ApiError(f"invalid listen address: {exc}", 400) from None
    if not allow_non_loopback and not is_loopback(host):
        raise ApiError(
            f"listen address {address!r} is not a loopback address; use "
            "127.0.0.1:PORT, or start the server with --allow-non-loopback",
            400,
        )
    return host, port


def check_upstream(address: str) -> tuple[str, int]:
    try:
        return split_host_port(address)
    except ValueError as exc:
        raise ApiError(f"invalid upstream address: {exc}", 400) from None
