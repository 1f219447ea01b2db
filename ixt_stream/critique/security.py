"""Who may call the reward service: loopback by default, a bearer token and TLS beyond it.

A server that binds a non-loopback address without a token refuses to start: the critic is a
GPU-priced resource and its critiques become training data, so an open port is a bug, not a
default. Health checks stay open (load balancers and `ixt up` probe them without credentials).
The token is compared in constant time. Left out: mTLS, per-token quotas, token rotation.
"""

from __future__ import annotations

import hmac
from pathlib import Path

import grpc

from ixt_stream.config import ConfigError
from ixt_stream.net import is_loopback

OPEN_METHOD_PREFIX = "/grpc.health.v1.Health/"


class ExposureError(ConfigError):
    """A non-loopback bind without authentication (a ConfigError: `ixt` prints it as one line)."""


def read_secret(path: str, setting: str = "") -> str:
    """The stripped contents of a secret file; "" when no file is configured.

    Raises ConfigError naming `setting` when the file cannot be read or is empty."""
    if not path:
        return ""
    token = read_file(path, setting).decode(errors="replace").strip()
    if not token:
        raise ConfigError(f"{setting or path}: {path} is empty: an empty token would let anyone in")
    return token


def read_file(path: str, setting: str = "") -> bytes:
    """A key, certificate or token file's bytes; ConfigError naming `setting` when it cannot be read."""
    try:
        return Path(path).expanduser().read_bytes()
    except OSError as e:
        raise ConfigError(f"{setting or path}: cannot read {path} ({e.strerror or e})") from None


def check_exposure(host: str, auth_token: str) -> None:
    if not is_loopback(host) and not auth_token:
        raise ExposureError(
            f"refusing to serve on non-loopback host {host!r} without authentication: set "
            "reward.auth_token_file (and reward.tls_cert_file / reward.tls_key_file), or bind 127.0.0.1"
        )


def server_credentials(cert: bytes | None, key: bytes | None) -> grpc.ServerCredentials | None:
    if bool(cert) != bool(key):
        raise ValueError("TLS needs both a certificate and a key file")
    return grpc.ssl_server_credentials([(key, cert)]) if cert else None


def call_metadata(token: str) -> tuple[tuple[str, str], ...]:
    """The metadata a client sends to authenticate."""
    return (("authorization", f"Bearer {token}"),) if token else ()


class BearerAuth(grpc.aio.ServerInterceptor):
    """Answers UNAUTHENTICATED unless the call carries `authorization: Bearer <token>`."""

    def __init__(self, token: str):
        self._expected = f"Bearer {token}".encode()

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None or details.method.startswith(OPEN_METHOD_PREFIX):
            return handler
        given = dict(details.invocation_metadata or ()).get("authorization", "")
        if isinstance(given, str) and hmac.compare_digest(given.encode(), self._expected):
            return handler
        return _denied(handler)


async def _deny(request_or_iterator, context) -> None:
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")


def _denied(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """A handler of the same shape as `handler` that only refuses."""
    make = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }[(handler.request_streaming, handler.response_streaming)]
    return make(_deny, request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)
