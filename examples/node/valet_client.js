#!/usr/bin/env node
// A small Valet client in Node (@grpc/grpc-js), the twin of
// examples/python/valet_client.py: same flags, same output.
//
// It reads two pages from a vendor, makes one keyed WRITE, then sends that
// WRITE again with the same idempotency key, as a retry after a lost answer
// would, and gets the stored answer back (`replayed`) instead of a second
// vendor call. Every call goes through `call()`, which handles the two
// refusals a caller is expected to retry:
//
// - RESOURCE_EXHAUSTED QUOTA_EXCEEDED: wait as long as the error's
//   google.rpc.RetryInfo says, then send the same request again.
// - ABORTED IDEMPOTENCY_IN_FLIGHT: the same key is still running; wait the
//   short hint, then send the same request with the same key: once the first
//   call ends, the retry gets its answer replayed.
//
// Any other error is final. Valet's stable reason is google.rpc.ErrorInfo's
// `reason` in the status details (grpc-status-details-bin); match on it, not
// on the message text.
//
// The Gateway's types are loaded at start from the repository's own
// proto/valet/v1/gateway.proto (@grpc/proto-loader), so they cannot drift
// from the contract. Outside this repository, point --proto-dir at a copy.
//
// Settings (flags, or the environment variables in brackets):
//   --endpoint        host:port of the Gateway     [VALET_ENDPOINT]
//   --api-key-file    file holding the API key     [VALET_API_KEY_FILE]
//                     (or the key itself in VALET_API_KEY; never printed)
//   --tenant          tenant                       [VALET_TENANT]
//   --vendor          vendor                       [VALET_VENDOR]
//   --idempotency-key key for the WRITE (default: a new random one)
//
// Output: one JSON line per attempt on stdout (see the Python example). It
// prints the vendor's status and the body's size, never the body. Exit
// status: 0 when every call ended with an answer, 1 when one failed, 2 on a
// usage error.
//
// Needs: npm ci (in this directory).
'use strict';

const crypto = require('node:crypto');
const fs = require('node:fs');
const path = require('node:path');
const { parseArgs } = require('node:util');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const protobuf = require('protobufjs');

// Refusals worth retrying as they are; each comes with a RetryInfo.
const RETRYABLE = new Set(['QUOTA_EXCEEDED', 'IDEMPOTENCY_IN_FLIGHT']);
const DEFAULT_RETRY_MS = 200; // when a refusal has no RetryInfo (it should)
const MAX_RETRY_WINDOW_MS = 60_000; // give up retrying one call after this
const ATTEMPT_TIMEOUT_MS = 10_000; // each attempt's deadline (grpc-timeout)

const REPO_PROTO_DIR = path.resolve(__dirname, '..', '..', 'proto');

// The rich error model's messages (googleapis google/rpc/status.proto and
// error_details.proto), only the parts read here; Any and Duration are
// google.protobuf's, declared here with the same fields to keep this
// self-contained.
const RPC_PROTO = `
syntax = "proto3";
package google.rpc;
message Any { string type_url = 1; bytes value = 2; }
message Duration { int64 seconds = 1; int32 nanos = 2; }
message Status { int32 code = 1; string message = 2; repeated Any details = 3; }
message ErrorInfo { string reason = 1; string domain = 2; map<string, string> metadata = 3; }
message RetryInfo { Duration retry_delay = 1; }
`;
const rpcTypes = protobuf.parse(RPC_PROTO, { keepCase: true }).root;
const StatusProto = rpcTypes.lookupType('google.rpc.Status');
const ErrorInfo = rpcTypes.lookupType('google.rpc.ErrorInfo');
const RetryInfo = rpcTypes.lookupType('google.rpc.RetryInfo');

const CODE_NAMES = Object.fromEntries(Object.entries(grpc.status).map(([name, n]) => [n, name]));

function usage(message) {
  process.stderr.write(`${message}\n`);
  process.exit(2);
}

function loadGateway(protoDir) {
  const file = path.join(protoDir, 'valet', 'v1', 'gateway.proto');
  if (!fs.existsSync(file)) usage(`no ${file} (use --proto-dir)`);
  const definition = protoLoader.loadSync(file, {
    includeDirs: [protoDir],
    keepCase: true, // field names as in the .proto: idempotency_key
    enums: String,
    longs: Number,
    defaults: true,
  });
  return grpc.loadPackageDefinition(definition).valet.v1;
}

function readApiKey(file) {
  const key = (file ? fs.readFileSync(file, 'utf8') : process.env.VALET_API_KEY || '').trim();
  if (!key) usage('no API key: pass --api-key-file (or VALET_API_KEY_FILE), or set VALET_API_KEY');
  return key;
}

// Reads a Valet error: code name, reason, retry delay (ms or null), ErrorInfo
// metadata, request id.
function refusal(err) {
  let reason = null;
  let retryMs = null;
  let info = {};
  const [bin] = err.metadata ? err.metadata.get('grpc-status-details-bin') : [];
  if (bin) {
    for (const any of StatusProto.decode(bin).details) {
      if (any.type_url.endsWith('/google.rpc.ErrorInfo')) {
        const e = ErrorInfo.decode(any.value);
        if (e.domain === 'valet') ({ reason, metadata: info } = e);
      } else if (any.type_url.endsWith('/google.rpc.RetryInfo')) {
        const r = RetryInfo.toObject(RetryInfo.decode(any.value), { longs: Number, defaults: true });
        const d = r.retry_delay || { seconds: 0, nanos: 0 };
        retryMs = d.seconds * 1000 + d.nanos / 1e6;
      }
    }
  }
  const [requestId] = err.metadata ? err.metadata.get('x-request-id') : [];
  return { code: CODE_NAMES[err.code] || String(err.code), reason, retryMs, info, requestId: requestId || null };
}

function emit(fields) {
  const sorted = Object.fromEntries(Object.entries(fields).sort(([a], [b]) => (a < b ? -1 : 1)));
  process.stdout.write(`${JSON.stringify(sorted)}\n`);
}

// Waits at least `ms`: a timer alone may fire a millisecond early (libuv
// counts from the loop's cached time), and a retry sent before the RetryInfo
// delay is refused again.
async function sleep(ms) {
  const until = performance.now() + ms;
  for (let left = ms; left > 0; left = until - performance.now()) {
    await new Promise((resolve) => setTimeout(resolve, Math.ceil(left)));
  }
}

function callOnce(stub, metadata, request) {
  return new Promise((resolve, reject) => {
    stub.Call(request, metadata, { deadline: Date.now() + ATTEMPT_TIMEOUT_MS }, (err, resp) =>
      err ? reject(err) : resolve(resp),
    );
  });
}

// Makes one Gateway call, retrying QUOTA_EXCEEDED and IDEMPOTENCY_IN_FLIGHT
// as their RetryInfo says. Returns the CallResponse, or null on failure.
async function call(stub, metadata, name, request) {
  const started = performance.now();
  let refusedAt = null;
  for (let attempt = 1; ; attempt++) {
    const line = { call: name, attempt };
    if (refusedAt !== null) line.waited_ms = Math.round(performance.now() - refusedAt);
    let resp;
    try {
      resp = await callOnce(stub, metadata, request);
    } catch (err) {
      if (err.code === undefined) throw err; // not a gRPC status
      const { code, reason, retryMs, info, requestId } = refusal(err);
      Object.assign(line, { ok: false, code, reason, request_id: requestId });
      if (info.policy) line.policy = info.policy;
      let retryable = RETRYABLE.has(reason);
      const waitMs = retryMs ?? DEFAULT_RETRY_MS;
      if (retryable) {
        line.retry_after_ms = Math.round(waitMs);
        if (performance.now() + waitMs - started > MAX_RETRY_WINDOW_MS) {
          retryable = false;
          line.gave_up = true;
        }
      } else {
        line.message = err.details;
      }
      emit(line);
      if (!retryable) return null;
      refusedAt = performance.now();
      await sleep(waitMs);
      continue;
    }
    emit({
      ...line,
      ok: true,
      status: resp.status,
      replayed: resp.replayed,
      attempts: resp.attempts,
      request_id: resp.request_id,
      body_bytes: resp.body.length,
    });
    return resp;
  }
}

async function main() {
  const env = process.env;
  let values;
  try {
    ({ values } = parseArgs({
      options: {
        endpoint: { type: 'string', default: env.VALET_ENDPOINT || '127.0.0.1:50051' },
        'api-key-file': { type: 'string', default: env.VALET_API_KEY_FILE },
        tenant: { type: 'string', default: env.VALET_TENANT || 'acme' },
        vendor: { type: 'string', default: env.VALET_VENDOR || 'mock' },
        'read-path': { type: 'string', default: '/v1/users' },
        'write-path': { type: 'string', default: '/v1/charges' },
        'write-body': { type: 'string', default: '{"amount":100,"currency":"eur"}' },
        'idempotency-key': { type: 'string' },
        reason: { type: 'string', default: 'node_example' },
        'proto-dir': { type: 'string', default: REPO_PROTO_DIR },
      },
    }));
  } catch (e) {
    usage(e.message);
  }
  const v1 = loadGateway(values['proto-dir']);
  const metadata = new grpc.Metadata();
  metadata.set('authorization', `Bearer ${readApiKey(values['api-key-file'])}`);
  const key = values['idempotency-key'] || `node-${crypto.randomUUID()}`;

  const common = { tenant: values.tenant, vendor: values.vendor, reason: values.reason };
  const read = (page) => ({
    ...common,
    operation: 'OPERATION_READ',
    method: 'GET',
    path: `${values['read-path']}?page=${page}`,
  });
  const write = {
    ...common,
    operation: 'OPERATION_WRITE',
    method: 'POST',
    path: values['write-path'],
    headers: [{ name: 'content-type', value: 'application/json' }],
    body: Buffer.from(values['write-body']),
    idempotency_key: key,
  };

  const stub = new v1.Gateway(values.endpoint, grpc.credentials.createInsecure());
  try {
    const results = [
      await call(stub, metadata, 'read-page-1', read(1)),
      await call(stub, metadata, 'read-page-2', read(2)),
      await call(stub, metadata, 'write', write),
      // The same request and key again: Valet replays the stored answer.
      await call(stub, metadata, 'write-again', write),
    ];
    return results.every((r) => r !== null) ? 0 : 1;
  } finally {
    stub.close();
  }
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  (err) => {
    process.stderr.write(`${err.stack || err}\n`);
    process.exitCode = 1;
  },
);
