#!/usr/bin/env python3
"""A small Valet client in Python (grpcio).

It reads two pages from a vendor, makes one keyed WRITE, then sends that WRITE
again with the same idempotency key, as a retry after a lost answer would, and
gets the stored answer back (`replayed`) instead of a second vendor call.
Every call goes through `call()`, which handles the two refusals a caller is
expected to retry:

- RESOURCE_EXHAUSTED `QUOTA_EXCEEDED`: wait as long as the error's
  `google.rpc.RetryInfo` says, then send the same request again.
- ABORTED `IDEMPOTENCY_IN_FLIGHT`: the same key is still running (another
  worker, or our own earlier attempt); wait the short hint, then send the same
  request with the same key: once the first call ends, the retry gets its
  answer replayed.

Any other error is final. Valet's stable reason is `google.rpc.ErrorInfo.reason`
in the status details (`grpc-status-details-bin`); match on it, not on the
message text.

Stubs are generated at start from the repository's own proto/valet/v1/*.proto
with grpcio-tools (into a temporary directory), so they cannot drift from the
contract. Outside this repository, point --proto-dir at a copy of proto/.

Settings (flags, or the environment variables in brackets):
  --endpoint        host:port of the Gateway           [VALET_ENDPOINT]
  --api-key-file    file holding the API key           [VALET_API_KEY_FILE]
                    (or the key itself in VALET_API_KEY; never printed)
  --tenant          tenant                             [VALET_TENANT]
  --vendor          vendor                             [VALET_VENDOR]
  --idempotency-key key for the WRITE (default: a new random one)

Output: one JSON line per attempt on stdout, for people and tests alike:
  {"call": "read-page-1", "attempt": 1, "ok": true, "status": 200, ...}
  {"call": "read-page-2", "attempt": 1, "ok": false, "code": "RESOURCE_EXHAUSTED",
   "reason": "QUOTA_EXCEEDED", "retry_after_ms": 1873, "policy": "acme/mock/read", ...}
It prints the vendor's status and the body's size, never the body: it may hold
personal data (Valet removes the credential from it, nothing else). Exit
status: 0 when every call ended with an answer, 1 when one failed, 2 on a
usage error.

Needs: pip install grpcio grpcio-tools grpcio-status googleapis-common-protos
"""

import argparse
import importlib
import json
import os
import pathlib
import shutil
import sys
import tempfile
import time
import uuid

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

# Refusals worth retrying as they are: the same request (and key) succeeds
# later. Each comes with a RetryInfo saying when.
RETRYABLE = {"QUOTA_EXCEEDED", "IDEMPOTENCY_IN_FLIGHT"}
# When a refusal has no RetryInfo (it should), wait this long.
DEFAULT_RETRY_S = 0.2
# Give up retrying one call after this long in all.
MAX_RETRY_WINDOW_S = 60.0
# Deadline of each attempt (sent as grpc-timeout; Valet honours it).
ATTEMPT_TIMEOUT_S = 10.0

REPO_PROTO_DIR = pathlib.Path(__file__).resolve().parents[2] / "proto"


def load_stubs(proto_dir):
    """Compiles proto_dir/valet/v1/*.proto into a temporary directory and
    imports the Gateway's messages and stub."""
    from grpc_tools import protoc

    files = sorted(str(p) for p in (proto_dir / "valet" / "v1").glob("*.proto"))
    if not files:
        raise SystemExit(f"no .proto files under {proto_dir}/valet/v1 (use --proto-dir)")
    out = tempfile.mkdtemp(prefix="valet-stubs-")
    well_known = pathlib.Path(protoc.__file__).parent / "_proto"  # google/protobuf/*.proto
    args = [
        "grpc_tools.protoc",
        f"-I{proto_dir}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        *files,
    ]
    if protoc.main(args) != 0:
        raise SystemExit(f"protoc failed on {proto_dir}")
    sys.path.insert(0, out)
    try:
        pb2 = importlib.import_module("valet.v1.gateway_pb2")
        pb2_grpc = importlib.import_module("valet.v1.gateway_pb2_grpc")
    finally:
        # Imported modules stay loaded; the files are no longer needed.
        sys.path.remove(out)
        shutil.rmtree(out, ignore_errors=True)
    return pb2, pb2_grpc


def read_api_key(args):
    if args.api_key_file:
        key = pathlib.Path(args.api_key_file).read_text().strip()
    else:
        key = os.environ.get("VALET_API_KEY", "").strip()
    if not key:
        raise SystemExit("no API key: pass --api-key-file (or VALET_API_KEY_FILE), or set VALET_API_KEY")
    return key


def refusal(err):
    """Reads a Valet error: (code name, reason, retry delay in seconds or
    None, ErrorInfo metadata) from the status and its rich details."""
    reason, retry_s, info = None, None, {}
    status = rpc_status.from_call(err)  # decodes grpc-status-details-bin
    for detail in status.details if status else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            error_info = error_details_pb2.ErrorInfo()
            detail.Unpack(error_info)
            if error_info.domain == "valet":
                reason, info = error_info.reason, dict(error_info.metadata)
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry_info = error_details_pb2.RetryInfo()
            detail.Unpack(retry_info)
            retry_s = retry_info.retry_delay.ToTimedelta().total_seconds()
    return err.code().name, reason, retry_s, info


def request_id_of(err):
    for key, value in err.trailing_metadata() or ():
        if key == "x-request-id":
            return value
    return None


def emit(**fields):
    print(json.dumps(fields, sort_keys=True), flush=True)


def call(stub, metadata, name, request):
    """Makes one Gateway call, retrying QUOTA_EXCEEDED and
    IDEMPOTENCY_IN_FLIGHT as their RetryInfo says. Returns the CallResponse,
    or None when the call failed."""
    started = time.monotonic()
    attempt, refused_at, wait_s = 0, None, None
    while True:
        attempt += 1
        line = {"call": name, "attempt": attempt}
        if refused_at is not None:
            line["waited_ms"] = round((time.monotonic() - refused_at) * 1000)
        try:
            resp = stub.Call(request, metadata=metadata, timeout=ATTEMPT_TIMEOUT_S)
        except grpc.RpcError as err:
            code, reason, retry_s, info = refusal(err)
            line.update(ok=False, code=code, reason=reason, request_id=request_id_of(err))
            if "policy" in info:
                line["policy"] = info["policy"]
            retryable = reason in RETRYABLE
            if retryable:
                wait_s = retry_s if retry_s is not None else DEFAULT_RETRY_S
                line["retry_after_ms"] = round(wait_s * 1000)
                if time.monotonic() + wait_s - started > MAX_RETRY_WINDOW_S:
                    retryable = False
                    line["gave_up"] = True
            else:
                line["message"] = err.details()
            emit(**line)
            if not retryable:
                return None
            refused_at = time.monotonic()
            time.sleep(wait_s)
            continue
        emit(
            **line,
            ok=True,
            status=resp.status,
            replayed=resp.replayed,
            attempts=resp.attempts,
            request_id=resp.request_id,
            body_bytes=len(resp.body),
        )
        return resp


def main(argv=None):
    parser = argparse.ArgumentParser(description="One READ and one keyed WRITE through Valet.")
    env = os.environ.get
    parser.add_argument("--endpoint", default=env("VALET_ENDPOINT", "127.0.0.1:50051"))
    parser.add_argument("--api-key-file", default=env("VALET_API_KEY_FILE"))
    parser.add_argument("--tenant", default=env("VALET_TENANT", "acme"))
    parser.add_argument("--vendor", default=env("VALET_VENDOR", "mock"))
    parser.add_argument("--read-path", default="/v1/users", help="read as ?page=1, then ?page=2")
    parser.add_argument("--write-path", default="/v1/charges")
    parser.add_argument("--write-body", default='{"amount":100,"currency":"eur"}')
    parser.add_argument("--idempotency-key", default=None, help="default: a new random key")
    parser.add_argument("--reason", default="python_example", help="the audited reason")
    parser.add_argument("--proto-dir", type=pathlib.Path, default=REPO_PROTO_DIR)
    args = parser.parse_args(argv)

    pb2, pb2_grpc = load_stubs(args.proto_dir)
    metadata = (("authorization", f"Bearer {read_api_key(args)}"),)
    key = args.idempotency_key or f"py-{uuid.uuid4()}"

    def read(page):
        return pb2.CallRequest(
            tenant=args.tenant,
            vendor=args.vendor,
            operation=pb2.OPERATION_READ,
            method="GET",
            path=f"{args.read_path}?page={page}",
            reason=args.reason,
        )

    write = pb2.CallRequest(
        tenant=args.tenant,
        vendor=args.vendor,
        operation=pb2.OPERATION_WRITE,
        method="POST",
        path=args.write_path,
        headers=[pb2.Header(name="content-type", value="application/json")],
        body=args.write_body.encode(),
        idempotency_key=key,
        reason=args.reason,
    )

    with grpc.insecure_channel(args.endpoint) as channel:
        stub = pb2_grpc.GatewayStub(channel)
        results = [
            call(stub, metadata, "read-page-1", read(1)),
            call(stub, metadata, "read-page-2", read(2)),
            call(stub, metadata, "write", write),
            # The same request and key again: Valet replays the stored answer.
            call(stub, metadata, "write-again", write),
        ]
    return 0 if all(r is not None for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
