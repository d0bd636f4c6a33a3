// anogan-inspect sample client in TypeScript (Node.js, @grpc/grpc-js, protobuf-ts stubs):
// checks the server's health, streams frames over StreamInspect, prints one line per
// verdict and a summary. Exits 1 when a frame is unanswered, answered twice or out of
// order, or the stream ends with an error; 2 on bad arguments or input.
//
//   node dist/client.js --target localhost:50051 --csv ../../data/mnist_test.csv.gz \
//       --normal-labels 7,8 --anomaly-labels 2
//   node dist/client.js --target localhost:50051 --folder frames/   (PNG/JPEG files; in
//       an MVTec-style folder, good/ holds normal frames and any other subfolder anomalies)
//
// Conventions of the generated stubs: int64 fields (`sequence`) are bigint; oneofs are
// `{ oneofKind: "frame", frame: {...} }`; a per-frame error is `result.error`, a
// google.rpc.Status whose `code` is a gRPC status code number (3 = INVALID_ARGUMENT).
import * as fs from "node:fs";
import * as path from "node:path";
import * as zlib from "node:zlib";
import * as grpc from "@grpc/grpc-js";

import { InspectionServiceClient } from "./gen/ts/anogan/v1/inspection.grpc-client";
import {
  DataType,
  Frame,
  InspectionConfig,
  InspectionResult,
  Mode,
  Stage,
  StreamInspectRequest,
  StreamInspectResponse,
  Verdict,
} from "./gen/ts/anogan/v1/inspection";
import { HealthClient } from "./gen/ts/grpc/health/v1/health.grpc-client";
import { HealthCheckResponse_ServingStatus } from "./gen/ts/grpc/health/v1/health";

const USAGE = `usage: anogan-client-ts --target HOST:PORT (--csv FILE[.gz] | --folder DIR)
         [--normal-labels 7,8 --anomaly-labels 2] [--mode fast|search|cascade]
         [--model NAME] [--limit N] [--token TOKEN] [--quiet]`;

class UsageError extends Error {}
class InputError extends Error {}

interface Options {
  target: string;
  csv?: string;
  folder?: string;
  model: string;
  token?: string;
  normal: Set<number>;
  anomaly: Set<number>;
  mode: Mode;
  limit: number;
  quiet: boolean;
}

interface Input {
  id: string;
  raw?: { data: Uint8Array; side: number };
  encoded?: Uint8Array;
  anomaly?: boolean; // known when the source is labelled
}

const INTEGER = /^[0-9]+$/; // what CSV cells, labels and --limit must be

function labels(text: string): Set<number> {
  const items = text.split(",");
  if (!items.every((item) => INTEGER.test(item))) {
    throw new UsageError(`labels are comma-separated integers: ${text}`);
  }
  return new Set(items.map(Number));
}

function parseArgs(argv: string[]): Options {
  const options: Options = {
    target: "", model: "", normal: new Set(), anomaly: new Set(),
    mode: Mode.UNSPECIFIED, limit: -1, quiet: false,
  };
  const modes: Record<string, Mode> = { fast: Mode.FAST, search: Mode.SEARCH, cascade: Mode.CASCADE };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === "-h" || arg === "--help") {
      console.log(USAGE);
      process.exit(0);
    }
    if (arg === "--quiet") {
      options.quiet = true;
      continue;
    }
    const value = argv[++i];
    if (value === undefined) throw new UsageError(`${arg} needs a value`);
    switch (arg) {
      case "--target": options.target = value; break;
      case "--csv": options.csv = value; break;
      case "--folder": options.folder = value; break;
      case "--model": options.model = value; break;
      case "--token": options.token = value; break;
      case "--normal-labels": options.normal = labels(value); break;
      case "--anomaly-labels": options.anomaly = labels(value); break;
      case "--limit":
        if (!INTEGER.test(value)) throw new UsageError(`--limit is a count of frames: ${value}`);
        options.limit = Number(value);
        break;
      case "--mode":
        if (!(value in modes)) throw new UsageError("--mode is fast, search or cascade");
        options.mode = modes[value];
        break;
      default: throw new UsageError(`unknown option ${arg}`);
    }
  }
  if (!options.target) throw new UsageError("--target is required");
  if (!options.csv === !options.folder) throw new UsageError("give --csv or --folder");
  return options;
}

// MNIST-style CSV (label, then a square image's pixels 0..255), gzip or plain.
function readCsv(file: string, options: Options): Input[] {
  let data: Buffer;
  try {
    data = fs.readFileSync(file);
    if (data[0] === 0x1f && data[1] === 0x8b) data = zlib.gunzipSync(data);
  } catch (err) {
    throw new InputError(`${file}: ${(err as Error).message}`);
  }
  const labelled = options.normal.size + options.anomaly.size > 0;
  const inputs: Input[] = [];
  const lines = data.toString("utf8").replace(/^\uFEFF/, "").split(/\r?\n/); // BOM, CRLF
  for (let index = 0; index < lines.length; index++) {
    if (options.limit >= 0 && inputs.length >= options.limit) break;
    const row = index + 1;
    const line = lines[index];
    if (!line || (row === 1 && !/^[0-9]/.test(line))) continue; // blank, or the header
    const cells = line.split(",");
    const values = cells.map(Number);
    const bad = cells.findIndex((cell, k) => !INTEGER.test(cell) || (k > 0 && values[k] > 255));
    if (bad >= 0) {
      throw new InputError(`${file}, row ${row}: not an integer label or pixel 0..255: '${cells[bad]}'`);
    }
    const side = Math.round(Math.sqrt(values.length - 1));
    if (values.length < 2 || side * side !== values.length - 1) {
      throw new InputError(`${file}, row ${row}: ${values.length - 1} pixels, not a square image`);
    }
    const label = values[0];
    if (labelled && !options.normal.has(label) && !options.anomaly.has(label)) continue;
    inputs.push({
      id: `csv-row-${row}-label-${label}`,
      raw: { data: Uint8Array.from(values.slice(1)), side },
      anomaly: labelled ? options.anomaly.has(label) : undefined,
    });
  }
  return inputs;
}

// PNG/JPEG files, sorted by path; sent encoded (the server decodes them).
function readFolder(folder: string, options: Options): Input[] {
  if (!fs.existsSync(folder) || !fs.statSync(folder).isDirectory()) {
    throw new InputError(`${folder}: not a folder`);
  }
  const files = (fs.readdirSync(folder, { recursive: true }) as string[])
    .filter((name) => /\.(png|jpe?g)$/i.test(name) && fs.statSync(path.join(folder, name)).isFile())
    .map((name) => name.split(path.sep).join("/"))
    .sort();
  const limited = options.limit >= 0 ? files.slice(0, options.limit) : files;
  return limited.map((name) => {
    const parts = name.split("/");
    return {
      id: name,
      encoded: fs.readFileSync(path.join(folder, name)),
      anomaly: parts.length > 1 ? parts[0] !== "good" : undefined,
    };
  });
}

// Area under the ROC curve of scores against labels (Mann-Whitney, ties count half).
function auroc(scored: Array<[number, boolean]>): number | undefined {
  const sorted = [...scored].sort((a, b) => a[0] - b[0]);
  let rankSum = 0;
  let positives = 0;
  for (let i = 0; i < sorted.length;) {
    let j = i;
    while (j < sorted.length && sorted[j][0] === sorted[i][0]) j++;
    const rank = (i + 1 + j) / 2;
    for (let k = i; k < j; k++) if (sorted[k][1]) { rankSum += rank; positives++; }
    i = j;
  }
  const negatives = sorted.length - positives;
  if (positives === 0 || negatives === 0) return undefined;
  return (rankSum - (positives * (positives + 1)) / 2) / (positives * negatives);
}

function request(input: Input, sequence: number): StreamInspectRequest {
  const now = Date.now();
  return StreamInspectRequest.create({
    request: {
      oneofKind: "frame",
      frame: Frame.create({
        frameId: input.id,
        sequence: BigInt(sequence),
        captureTime: { seconds: BigInt(Math.floor(now / 1000)), nanos: (now % 1000) * 1e6 },
        image: input.raw
          ? {
            oneofKind: "raw",
            raw: {
              data: input.raw.data, dataType: DataType.UINT8,
              height: input.raw.side, width: input.raw.side, channels: 1,
            },
          }
          : { oneofKind: "encoded", encoded: { data: input.encoded! } },
      }),
    },
  });
}

function checkHealth(target: string, metadata: grpc.Metadata): Promise<void> {
  const health = new HealthClient(target, grpc.credentials.createInsecure());
  return new Promise((resolve, reject) => {
    health.check({ service: "anogan.v1.InspectionService" }, metadata,
      { deadline: Date.now() + 30_000, waitForReady: true } as grpc.CallOptions,
      (err, response) => {
        health.close();
        if (err) reject(new Error(`health check failed: ${err.details || err.message}`));
        else if (response?.status !== HealthCheckResponse_ServingStatus.SERVING) {
          reject(new Error(`server is not serving (health ${
            HealthCheckResponse_ServingStatus[response?.status ?? 0]})`));
        } else resolve();
      });
  });
}

async function main(): Promise<number> {
  let options: Options;
  let inputs: Input[];
  try {
    options = parseArgs(process.argv.slice(2));
    inputs = options.csv ? readCsv(options.csv, options) : readFolder(options.folder!, options);
  } catch (err) {
    if (err instanceof UsageError) console.error(`anogan-client-ts: ${err.message}\n${USAGE}`);
    else console.error(`anogan-client-ts: ${(err as Error).message}`);
    return 2;
  }
  if (inputs.length === 0) {
    console.error("anogan-client-ts: no frames to send");
    return 2;
  }
  const metadata = new grpc.Metadata();
  if (options.token) metadata.set("authorization", `Bearer ${options.token}`);
  try {
    await checkHealth(options.target, metadata);
  } catch (err) {
    console.error((err as Error).message);
    return 1;
  }

  const client = new InspectionServiceClient(options.target, grpc.credentials.createInsecure());
  const started = process.hrtime.bigint();
  const stream = client.streamInspect(metadata);
  let answered = 0, errors = 0, passed = 0, failed = 0, problems = 0;
  const scored: Array<[number, boolean]> = [];

  // Exactly one final result per frame, in the order sent.
  const onResult = (result: InspectionResult) => {
    if (result.provisional) return; // only when the config asks for them
    if (answered >= inputs.length || result.sequence !== BigInt(answered)) {
      console.error(`out of order: result for sequence ${result.sequence} where ${answered} was due`);
      problems++;
      return;
    }
    const input = inputs[answered++];
    if (result.frameId !== input.id) {
      console.error(`result ${result.sequence} names frame '${result.frameId}', not '${input.id}'`);
      problems++;
    }
    if (result.error) { // a per-frame error: google.rpc.Status, the stream goes on
      errors++;
      if (!options.quiet) {
        console.log(`${result.sequence} ${input.id} error code ${result.error.code} ${
          grpc.status[result.error.code] ?? "UNKNOWN_CODE"}: ${result.error.message}`);
      }
      return;
    }
    if (result.verdict === Verdict.FAIL) failed++; else passed++;
    if (input.anomaly !== undefined) scored.push([result.score, input.anomaly]);
    if (!options.quiet) {
      console.log(`${result.sequence} ${input.id} VERDICT_${Verdict[result.verdict]} score ${
        result.score.toPrecision(6)} threshold ${result.threshold.toPrecision(6)} STAGE_${Stage[result.stage]}`);
    }
  };
  const ended = new Promise<grpc.ServiceError | undefined>((resolve) => {
    stream.on("data", (response: StreamInspectResponse) => {
      if (response.result) onResult(response.result);
      response.results.forEach(onResult);
    });
    stream.on("error", (err: grpc.ServiceError) => resolve(err));
    stream.on("end", () => resolve(undefined));
  });

  // Writer: the config, then every frame, waiting for 'drain' when the stream's buffer is
  // full (HTTP/2 flow control carries the server's --stream-window window back to us).
  // A stream that ended (with a status, or the server closing it early) settles `ended`,
  // which also ends a wait for 'drain' that would otherwise never come.
  let finished = false;
  ended.then(() => { finished = true; });
  const write = (message: StreamInspectRequest): Promise<unknown> =>
    stream.write(message) ? Promise.resolve()
      : Promise.race([new Promise<void>((resolve) => stream.once("drain", resolve)), ended]);
  await write(StreamInspectRequest.create({
    request: { oneofKind: "config", config: InspectionConfig.create({ model: options.model, mode: options.mode }) },
  }));
  for (let i = 0; i < inputs.length && !finished; i++) {
    await write(request(inputs[i], i));
  }
  stream.end();
  const error = await ended;
  client.close();

  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  const missing = inputs.length - answered;
  const area = auroc(scored);
  console.log(`frames ${inputs.length} answered ${answered} missing ${missing} out_of_order ${problems} `
    + `errors ${errors} pass ${passed} fail ${failed}`
    + (area === undefined ? "" : ` auroc ${area.toFixed(4)}`) + ` seconds ${seconds.toFixed(2)}`);
  if (error) {
    console.error(`stream ended with ${error.code} ${grpc.status[error.code]}: ${error.details}`);
    return 1;
  }
  return missing === 0 && problems === 0 ? 0 : 1;
}

// Exit 1 on anything unexpected, including an event loop that empties before main() is
// done (a promise nothing can settle any more): never a silent 0.
let settled = false;
process.on("beforeExit", () => {
  if (!settled) {
    console.error("anogan-client-ts: stopped before every frame was answered");
    process.exitCode = 1;
  }
});
main().then((code) => { process.exitCode = code; }, (err) => {
  console.error(`anogan-client-ts: ${(err as Error).stack ?? err}`);
  process.exitCode = 1;
}).finally(() => { settled = true; });
