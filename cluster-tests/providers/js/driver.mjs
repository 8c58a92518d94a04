// Drives the real flagd provider for JavaScript (@openfeature/flagd-provider) against a
// Grapevine node, for cluster-tests/tests/providers.rs: the same line protocol as
// ../python/driver.py (one JSON command per stdin line, one JSON answer per stdout line).
//
// Mode `ofrep` drives the JavaScript OFREP provider against the node's API port instead (for
// the benchmarks' comparison).
//
// Started as: node driver.mjs --mode rpc|in-process|ofrep --port PORT [--selector S] [--tls-ca PEM]
//   [--authority NAME] [--cache lru|disabled] [--grace SECONDS]
// (the JavaScript provider has no option for call credentials: it reads with the node's
// anonymous role, on loopback).

import { readFileSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { parseArgs } from 'node:util';

import { FlagdProvider } from '@openfeature/flagd-provider';
import { OFREPProvider } from '@openfeature/ofrep-provider';
import { OpenFeature, ProviderEvents } from '@openfeature/server-sdk';

const { values: args } = parseArgs({
  options: {
    mode: { type: 'string' },
    port: { type: 'string' },
    selector: { type: 'string' },
    'tls-ca': { type: 'string' },
    authority: { type: 'string' },
    cache: { type: 'string' },
    grace: { type: 'string' },
  },
});

const events = [];
for (const event of Object.values(ProviderEvents)) {
  OpenFeature.addHandler(event, (details) => events.push([event, Date.now(), details?.flagsChanged ?? []]));
}

const options = {
  host: '127.0.0.1',
  port: Number(args.port),
  resolverType: args.mode,
  deadlineMs: 5000,
  retryBackoffMs: 100,
  retryBackoffMaxMs: 500,
};
if (args.selector) options.selector = args.selector;
if (args.cache) options.cache = args.cache;
if (args.grace) options.retryGracePeriod = Number(args.grace);
if (args['tls-ca']) {
  options.tls = true;
  options.certPath = args['tls-ca'];
  if (args.authority) options.defaultAuthority = args.authority;
}
const provider =
  args.mode === 'ofrep' ? new OFREPProvider({ baseUrl: `http://127.0.0.1:${args.port}` }) : new FlagdProvider(options);
await OpenFeature.setProviderAndWait(provider);
const client = OpenFeature.getClient();

async function evaluate(command) {
  const context = command.context ?? {};
  const getter = {
    boolean: client.getBooleanDetails,
    string: client.getStringDetails,
    integer: client.getNumberDetails,
    float: client.getNumberDetails,
    object: client.getObjectDetails,
  }[command.type].bind(client);
  const details = await getter(command.key, command.default, context);
  return {
    value: details.value,
    variant: details.variant ?? null,
    reason: details.reason,
    error_code: details.errorCode ?? null,
    metadata: details.flagMetadata ?? {},
  };
}

function versions() {
  const names = ['@openfeature/flagd-provider', '@openfeature/flagd-core', '@openfeature/ofrep-provider', '@openfeature/server-sdk', '@grpc/grpc-js'];
  const version = (name) => {
    const file = new URL(`./node_modules/${name}/package.json`, import.meta.url);
    return JSON.parse(readFileSync(file, 'utf8')).version;
  };
  return Object.fromEntries(names.map((name) => [name, version(name)]));
}

const equal = (a, b) => JSON.stringify(a) === JSON.stringify(b);

async function run(command) {
  switch (command.op) {
    case 'eval':
      return evaluate(command);
    case 'wait': {
      const deadline = performance.now() + command.timeout_ms;
      let count = 0;
      while (performance.now() < deadline) {
        count += 1;
        if (equal((await evaluate(command)).value, command.value)) {
          return { ok: true, seen_at_ms: performance.timeOrigin + performance.now(), evaluations: count };
        }
        // Let the provider's stream deliver: in-process evaluations never yield to the event loop.
        if (count % 50 === 0) await new Promise((resolve) => setImmediate(resolve));
      }
      return { ok: false, evaluations: count };
    }
    case 'rate': {
      const started = performance.now();
      let count = 0;
      while (performance.now() - started < command.seconds * 1000) {
        await evaluate(command);
        count += 1;
      }
      return { per_second: count / ((performance.now() - started) / 1000) };
    }
    case 'events':
      return { events: [...events] };
    case 'versions':
      return versions();
    default:
      throw new Error(`unknown op ${command.op}`);
  }
}

console.log(JSON.stringify({ ready: true }));
for await (const line of createInterface({ input: process.stdin })) {
  const command = JSON.parse(line);
  if (command.op === 'quit') break;
  let answer;
  try {
    answer = await run(command);
  } catch (error) {
    answer = { failed: String(error) };
  }
  console.log(JSON.stringify(answer));
}
await OpenFeature.close();
process.exit(0);
