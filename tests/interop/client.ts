// A Connect client for the interop tests, written with connect-es (@connectrpc/connect-node)
// against TypeScript that protoc-gen-es generates from the greeter's .proto into ./gen.
//
// Usage: tsx client.ts '<plan as JSON>'
//   plan: {
//     baseUrl: "http://127.0.0.1:PORT",
//     protocol: "connect" | "grpc-web" | "grpc",
//     binary: true | false,        // protobuf binary, or JSON
//     gzip?: true,                 // compress requests (and accept compressed responses)
//     calls: [{ id, method: "sayHello", request: {...proto3 JSON...}, timeoutMs?, headers? }]
//   }
// Prints one JSON object, by call id: { ok: <response JSON> } or { error: { code:
// "InvalidArgument", message } } for a unary call; for a server stream, { ok: [{ message,
// ms }] } or { messages: [{ message, ms }], error } (ms: arrival after the call started).
import { fromJson, toJson, type DescMethod } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient, type Transport } from "@connectrpc/connect";
import {
  compressionGzip,
  createConnectTransport,
  createGrpcTransport,
  createGrpcWebTransport,
} from "@connectrpc/connect-node";

import { Greeter } from "./gen/greeter/v1/greeter_pb.js";

type Call = {
  id: string;
  method: string;
  request: Record<string, unknown>;
  timeoutMs?: number;
  headers?: Record<string, string>;
};

type Plan = {
  baseUrl: string;
  protocol: "connect" | "grpc-web" | "grpc";
  binary: boolean;
  gzip?: boolean;
  calls: Call[];
};

function transportFor(plan: Plan): Transport {
  const compression = plan.gzip
    ? { sendCompression: compressionGzip, compressMinBytes: 0 }
    : { acceptCompression: [] };
  switch (plan.protocol) {
    case "connect":
      return createConnectTransport({
        baseUrl: plan.baseUrl,
        httpVersion: "1.1",
        useBinaryFormat: plan.binary,
        ...compression,
      });
    case "grpc-web":
      return createGrpcWebTransport({
        baseUrl: plan.baseUrl,
        httpVersion: "1.1",
        useBinaryFormat: plan.binary,
        ...compression,
      });
    case "grpc":
      return createGrpcTransport({ baseUrl: plan.baseUrl, ...compression });
  }
}

// A unary call's result is its response; a stream's is every message with the
// milliseconds from the call's start to its arrival, and the error that ended it if any.
async function run(client: any, method: DescMethod, call: Call): Promise<unknown> {
  const request = fromJson(method.input, call.request as any);
  const options = { timeoutMs: call.timeoutMs, headers: call.headers };
  if (method.methodKind === "server_streaming") {
    const started = Date.now();
    const messages: unknown[] = [];
    try {
      for await (const message of client[method.localName](request, options)) {
        messages.push({ message: toJson(method.output, message), ms: Date.now() - started });
      }
    } catch (err) {
      return { messages, error: describe(err) };
    }
    return { ok: messages };
  }
  try {
    return { ok: toJson(method.output, await client[method.localName](request, options)) };
  } catch (err) {
    return { error: describe(err) };
  }
}

function describe(err: unknown): { code: string; message: string } {
  const error = ConnectError.from(err);
  return { code: Code[error.code], message: error.rawMessage };
}

async function main(): Promise<void> {
  const plan: Plan = JSON.parse(process.argv[2]);
  const client = createClient(Greeter, transportFor(plan));
  const results: Record<string, unknown> = {};
  for (const call of plan.calls) {
    const method = Greeter.method[call.method as keyof typeof Greeter.method] as DescMethod;
    if (method === undefined) {
      throw new Error(`the greeter has no method ${call.method}`);
    }
    results[call.id] = await run(client, method, call);
  }
  process.stdout.write(JSON.stringify(results) + "\n");
}

main().catch((err) => {
  process.stderr.write(`${err?.stack ?? err}\n`);
  process.exit(1);
});
