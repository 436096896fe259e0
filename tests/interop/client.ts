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
// Prints one JSON object: { id: { ok: <response JSON, or a list for a stream> }
//                              | { error: { code: "InvalidArgument", message } } }.
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

async function run(client: any, method: DescMethod, call: Call): Promise<unknown> {
  const request = fromJson(method.input, call.request as any);
  const options = { timeoutMs: call.timeoutMs, headers: call.headers };
  if (method.methodKind === "server_streaming") {
    const messages = [];
    for await (const message of client[method.localName](request, options)) {
      messages.push(toJson(method.output, message));
    }
    return messages;
  }
  return toJson(method.output, await client[method.localName](request, options));
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
    try {
      results[call.id] = { ok: await run(client, method, call) };
    } catch (err) {
      const error = ConnectError.from(err);
      results[call.id] = { error: { code: Code[error.code], message: error.rawMessage } };
    }
  }
  process.stdout.write(JSON.stringify(results) + "\n");
}

main().catch((err) => {
  process.stderr.write(`${err?.stack ?? err}\n`);
  process.exit(1);
});
