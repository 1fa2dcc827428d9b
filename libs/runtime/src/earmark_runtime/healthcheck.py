"""`python -m earmark_runtime.healthcheck`: exit 0 when this container's gRPC
server reports SERVING, 1 otherwise.

For Kubernetes exec probes once the services speak TLS: kubelet's own gRPC probe
connects in plaintext and cannot present a client certificate, which mutual TLS
requires. This reads the same EARMARK_GRPC_PORT and EARMARK_TLS_* files as the
service and checks grpc.health.v1 over loopback. The server's certificate must
name `--server-name` (default "localhost") among its subject alternative names.
Health needs no API key (auth.OPEN_PREFIXES).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from .tls import TlsConfigError, channel_credentials, load_tls


def check(port: int, *, server_name: str, service: str = "", timeout_s: float = 3.0) -> str:
    """The serving status name of the server on 127.0.0.1:`port` ("UNREACHABLE: ..." when
    no answer)."""
    tls = load_tls(
        os.environ.get("EARMARK_TLS_CERT", ""),
        os.environ.get("EARMARK_TLS_KEY", ""),
        os.environ.get("EARMARK_TLS_CA", ""),
    )
    target = f"127.0.0.1:{port}"
    if tls is not None and tls.serves_tls:
        channel = grpc.secure_channel(
            target,
            channel_credentials(tls),
            options=[("grpc.ssl_target_name_override", server_name)],
        )
    else:
        channel = grpc.insecure_channel(target)
    with channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout_s
            )
        except grpc.RpcError as err:
            return f"UNREACHABLE: {err.code().name}"  # type: ignore[attr-defined]
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m earmark_runtime.healthcheck")
    parser.add_argument("--port", type=int, default=int(os.environ.get("EARMARK_GRPC_PORT", "0")))
    parser.add_argument("--server-name", default="localhost", help="a name in the certificate")
    parser.add_argument("--service", default="", help="service name to check; '' for the server")
    parser.add_argument("--timeout", type=float, default=3.0)
    args = parser.parse_args(argv)
    if not args.port:
        print("no port: set EARMARK_GRPC_PORT or --port", file=sys.stderr)
        return 2
    try:
        status = check(
            args.port, server_name=args.server_name, service=args.service, timeout_s=args.timeout
        )
    except TlsConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    print(status)
    return 0 if status == "SERVING" else 1


if __name__ == "__main__":
    raise SystemExit(main())
