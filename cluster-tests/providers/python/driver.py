"""Drives the real flagd provider for Python (openfeature-provider-flagd) against a Grapevine
node, for cluster-tests/tests/providers.rs: one JSON command per stdin line, one JSON answer per
stdout line. Mode `ofrep` drives the Python OFREP provider against the node's API port instead
(for the benchmarks' comparison).

Started as: driver.py --mode rpc|in-process|ofrep --port PORT [--selector S] [--token T] [--tls-ca PEM]
    [--authority NAME] [--cache lru|disabled] [--grace SECONDS]

Commands:
  {"op": "eval", "type": "boolean|string|integer|float|object", "key": K, "default": D, "context": {...}}
      -> {"value", "variant", "reason", "error_code", "metadata"}
  {"op": "wait", ...eval fields..., "value": V, "timeout_ms": N}
      evaluates in a tight loop until the value is V -> {"ok", "seen_at_ms" (Unix ms), "evaluations"}
  {"op": "rate", ...eval fields..., "seconds": S} -> {"per_second"}
  {"op": "events"} -> {"events": [[name, Unix ms, flags changed], ...]} (provider events since start)
  {"op": "versions"} -> the provider's and its core's package versions
  {"op": "quit"}
"""

import argparse
import json
import sys
import threading
import time
from importlib import metadata as package_metadata

import grpc
from openfeature import api
from openfeature.contrib.provider.flagd import FlagdProvider
from openfeature.contrib.provider.flagd.config import CacheType, ResolverType
from openfeature.evaluation_context import EvaluationContext
from openfeature.event import ProviderEvent

EVENTS = []
EVENTS_LOCK = threading.Lock()


def record(name):
    def handler(details):
        flags = list(getattr(details, "flags_changed", None) or [])
        with EVENTS_LOCK:
            EVENTS.append([name, int(time.time() * 1000), flags])

    return handler


def provider(args):
    if args.mode == "ofrep":
        from openfeature.contrib.provider.ofrep import OFREPProvider

        headers = (lambda: {"Authorization": f"Bearer {args.token}"}) if args.token else None
        return OFREPProvider(f"http://127.0.0.1:{args.port}", headers_factory=headers)
    options = {
        "resolver_type": ResolverType.RPC if args.mode == "rpc" else ResolverType.IN_PROCESS,
        "host": "127.0.0.1",
        "port": args.port,
        "deadline_ms": 5000,
        "retry_backoff_ms": 100,
        "retry_backoff_max_ms": 500,
    }
    if args.cache:
        options["cache"] = CacheType(args.cache)
    if args.grace is not None:
        options["retry_grace_period"] = args.grace
    if args.selector:
        options["selector"] = args.selector
    if args.tls_ca:
        options["tls"] = True
        options["cert_path"] = args.tls_ca
        options["default_authority"] = args.authority
    if args.token:
        # A token rides in the `authorization` metadata: call credentials, which gRPC sends only
        # over TLS or a local (loopback) connection.
        call = grpc.access_token_call_credentials(args.token)
        if args.tls_ca:
            with open(args.tls_ca, "rb") as ca:
                channel = grpc.ssl_channel_credentials(ca.read())
        else:
            channel = grpc.local_channel_credentials(grpc.LocalConnectionType.LOCAL_TCP)
        options["channel_credentials"] = grpc.composite_channel_credentials(channel, call)
    return FlagdProvider(**options)


def evaluate(client, command):
    context = command.get("context") or {}
    context = EvaluationContext(context.get("targetingKey"), {k: v for k, v in context.items() if k != "targetingKey"})
    getter = {
        "boolean": client.get_boolean_details,
        "string": client.get_string_details,
        "integer": client.get_integer_details,
        "float": client.get_float_details,
        "object": client.get_object_details,
    }[command["type"]]
    details = getter(command["key"], command.get("default"), context)
    code = details.error_code
    return {
        "value": details.value,
        "variant": details.variant,
        "reason": str(details.reason.value if hasattr(details.reason, "value") else details.reason),
        "error_code": code.value if code is not None else None,
        "metadata": dict(details.flag_metadata or {}),
    }


def run(client, command):
    op = command["op"]
    if op == "eval":
        return evaluate(client, command)
    if op == "wait":
        deadline = time.monotonic() + command["timeout_ms"] / 1000
        count = 0
        while time.monotonic() < deadline:
            count += 1
            if evaluate(client, command)["value"] == command["value"]:
                return {"ok": True, "seen_at_ms": time.time() * 1000, "evaluations": count}
        return {"ok": False, "evaluations": count}
    if op == "rate":
        count, started = 0, time.perf_counter()
        while time.perf_counter() - started < command["seconds"]:
            evaluate(client, command)
            count += 1
        return {"per_second": count / (time.perf_counter() - started)}
    if op == "events":
        with EVENTS_LOCK:
            return {"events": list(EVENTS)}
    if op == "versions":
        names = ["openfeature-provider-flagd", "openfeature-flagd-core", "openfeature-sdk", "grpcio"]
        return {name: package_metadata.version(name) for name in names}
    raise ValueError(f"unknown op {op!r}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=["rpc", "in-process", "ofrep"], required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--selector")
    parser.add_argument("--token")
    parser.add_argument("--tls-ca")
    parser.add_argument("--authority")
    parser.add_argument("--cache", choices=["lru", "disabled"])
    parser.add_argument("--grace", type=int)
    args = parser.parse_args()
    for event in ProviderEvent:
        api.add_handler(event, record(event.value))
    api.set_provider_and_wait(provider(args))
    client = api.get_client()
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        command = json.loads(line)
        if command["op"] == "quit":
            break
        try:
            answer = run(client, command)
        except Exception as error:  # noqa: BLE001 - the test reads the failure
            answer = {"failed": repr(error)}
        print(json.dumps(answer), flush=True)
    api.shutdown()


if __name__ == "__main__":
    main()
