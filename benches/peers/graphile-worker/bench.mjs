// Throughput and pickup latency of graphile-worker 0.18, measured the
// same way as orch's storage bench `--only method` (see README.md).
//
//   node bench.mjs --database-url postgres://... [--tasks 20000] [--workers 10]
//                  [--samples 200] [--rounds 1]

import { EventEmitter } from "node:events";
import { performance } from "node:perf_hooks";
import { setTimeout as sleep } from "node:timers/promises";
import { parseArgs } from "node:util";

import {
  Logger,
  makeWorkerUtils,
  parseCronItems,
  run,
} from "graphile-worker";

// ---------------------------------------------------------------- options --

const { values: args } = parseArgs({
  options: {
    "database-url": { type: "string" },
    tasks: { type: "string", default: "20000" },
    workers: { type: "string", default: "10" },
    samples: { type: "string", default: "200" },
    rounds: { type: "string", default: "1" },
    help: { type: "boolean", short: "h", default: false },
  },
  strict: true,
});

const USAGE =
  "usage: node bench.mjs --database-url postgres://... [--tasks 20000] " +
  "[--workers 10] [--samples 200] [--rounds 1]";

if (args.help) {
  console.log(USAGE);
  process.exit(0);
}

const DATABASE_URL = args["database-url"] ?? process.env.DATABASE_URL;
if (!DATABASE_URL) {
  console.error(USAGE);
  process.exit(2);
}

function posInt(name) {
  const n = Number(args[name]);
  if (!Number.isInteger(n) || n < 1) {
    console.error(`--${name} must be a positive integer (got ${args[name]})`);
    process.exit(2);
  }
  return n;
}

const TASKS = posInt("tasks");
const WORKERS = posInt("workers");
const SAMPLES = posInt("samples");
const ROUNDS = posInt("rounds");
const BATCH = 1000; // jobs per addJobs call in the batch-enqueue phase
const PICKUP_GAP_MS = 50; // gap between pickup-latency samples
const TASK = "noop";
const SCHEMA = "graphile_worker";

// Only warnings and errors from graphile-worker, on stderr (keeps stdout to
// the figure lines).
const logger = new Logger(() => (level, message) => {
  if (level === "error" || level === "warning") {
    console.error(`[graphile-worker ${level}] ${message}`);
  }
});

// Worker settings (graphile-config preset, `preset.worker`), tuned for
// throughput as https://worker.graphile.org/docs/performance recommends.
const workerPresetOptions = {
  connectionString: DATABASE_URL,
  concurrentJobs: WORKERS,
  // docs: "10 or concurrentJobs + 2, whichever is larger"
  maxPoolSize: Math.max(10, WORKERS + 2),
  // docs: "a good starting point is often concurrentJobs + 1"
  localQueue: { size: WORKERS + 1 },
  completeJobBatchDelay: 0,
  pollInterval: 2000, // the default; new jobs are picked up via LISTEN/NOTIFY
  logger,
};

// ------------------------------------------------------------------ utils --

const fmtRate = (n) =>
  Math.round(n).toLocaleString("en-US", { maximumFractionDigits: 0 });
const fmtMs = (n) => n.toFixed(1);

// The value at quantile p (0-100) of a sorted array, as orch's bench takes it: the element
// at round((n - 1) * p / 100).
function percentile(sorted, p) {
  const index = Math.round(((sorted.length - 1) * p) / 100);
  return sorted[Math.min(sorted.length - 1, index)];
}

// Rejects after `ms` with `message`; the timer does not keep the process alive.
function deadline(ms, message) {
  return new Promise((_, reject) => {
    setTimeout(() => reject(new Error(message)), ms).unref();
  });
}

// ----------------------------------------------------------------- worker --

// Task-handler state, shared by the drain and pickup phases.
let completed = 0;
let drainTarget = Infinity;
let onDrained = null;
const pickupStart = new Map(); // sample index -> handler start time
let onPickup = null;

const taskList = {
  [TASK]: async (payload) => {
    if (payload && payload.sample !== undefined) {
      pickupStart.set(payload.sample, performance.now());
      if (onPickup) onPickup(payload.sample);
      return;
    }
    completed += 1;
    if (completed === drainTarget && onDrained) onDrained();
  },
};

async function startWorker() {
  // Our own emitter so listeners are attached before the pool starts.
  const events = new EventEmitter();
  const listening = new Promise((resolve, reject) => {
    events.once("pool:listen:success", resolve);
    events.once("pool:listen:error", ({ error }) => reject(error));
  });
  const runner = await run({
    noHandleSignals: true,
    taskList,
    parsedCronItems: parseCronItems([]),
    preset: { worker: { ...workerPresetOptions, events } },
  });
  return { runner, listening };
}

// ----------------------------------------------------------------- phases --

async function clearJobs(utils) {
  await utils.withPgClient((c) =>
    c.query(`truncate ${SCHEMA}._private_jobs, ${SCHEMA}._private_job_queues`),
  );
}

async function remainingJobs(utils) {
  const { rows } = await utils.withPgClient((c) =>
    c.query(`select count(*)::int as n from ${SCHEMA}._private_jobs`),
  );
  return rows[0].n;
}

async function singleEnqueue(utils) {
  const t0 = performance.now();
  for (let i = 0; i < TASKS; i++) {
    await utils.addJob(TASK, {});
  }
  return TASKS / ((performance.now() - t0) / 1000);
}

async function batchEnqueue(utils) {
  const t0 = performance.now();
  for (let done = 0; done < TASKS; done += BATCH) {
    const n = Math.min(BATCH, TASKS - done);
    const specs = new Array(n);
    for (let i = 0; i < n; i++) specs[i] = { identifier: TASK, payload: {} };
    await utils.addJobs(specs);
  }
  return TASKS / ((performance.now() - t0) / 1000);
}

async function drain(utils) {
  completed = 0;
  drainTarget = TASKS;
  const drained = new Promise((resolve) => {
    onDrained = resolve;
  });
  const t0 = performance.now();
  const { runner, listening } = await startWorker();
  listening.catch((error) => {
    console.error(`worker LISTEN failed: ${error}`);
  });
  await Promise.race([
    drained,
    deadline(600_000, "the drain did not finish in 10 minutes"),
  ]);
  const elapsed = performance.now() - t0;
  onDrained = null;
  drainTarget = Infinity;
  await runner.stop();
  const left = await remainingJobs(utils);
  if (left !== 0) {
    console.error(`warning: ${left} jobs still in the table after the drain`);
  }
  return TASKS / (elapsed / 1000);
}

async function pickup(utils) {
  const { runner, listening } = await startWorker();
  await listening;
  await sleep(PICKUP_GAP_MS);
  // As orch's bench does: 20 unmeasured rounds first, so that the first samples do not pay
  // for opening the worker's connections.
  const WARMUP = 20;
  const latencies = [];
  for (let i = 0; i < WARMUP + SAMPLES; i++) {
    const picked = new Promise((resolve) => {
      onPickup = (n) => n === i && resolve();
    });
    const t0 = performance.now();
    await utils.addJob(TASK, { sample: i });
    await Promise.race([
      picked,
      deadline(10_000, `pickup sample ${i} not picked up within 10 s`),
    ]);
    if (i >= WARMUP) latencies.push(pickupStart.get(i) - t0);
    await sleep(PICKUP_GAP_MS);
  }
  onPickup = null;
  await runner.stop();
  latencies.sort((a, b) => a - b);
  return { p50: percentile(latencies, 50), p95: percentile(latencies, 95) };
}

// ------------------------------------------------------------------- main --

// Producer: its own WorkerUtils with its own pg pool, separate from the
// worker's pool (run() builds a new pool from the connection string).
const utils = await makeWorkerUtils({
  preset: { worker: { connectionString: DATABASE_URL, logger } },
});

try {
  await utils.migrate();
  console.log(
    `graphile-worker 0.18: tasks=${TASKS} workers=${WORKERS} ` +
      `localQueue.size=${WORKERS + 1} completeJobBatchDelay=0 ` +
      `samples=${SAMPLES} rounds=${ROUNDS}`,
  );

  for (let r = 1; r <= ROUNDS; r++) {
    if (ROUNDS > 1) console.log(`round ${r}/${ROUNDS}`);

    await clearJobs(utils);
    console.log(`single enqueue: ${fmtRate(await singleEnqueue(utils))} jobs/s`);
    console.log(`drain (after single): ${fmtRate(await drain(utils))} jobs/s`);

    await clearJobs(utils);
    console.log(`batch enqueue: ${fmtRate(await batchEnqueue(utils))} jobs/s`);
    console.log(`drain (after batch): ${fmtRate(await drain(utils))} jobs/s`);
  }

  await clearJobs(utils);
  const { p50, p95 } = await pickup(utils);
  console.log(`pickup p50 ${fmtMs(p50)} ms, p95 ${fmtMs(p95)} ms`);
  await clearJobs(utils);
} finally {
  await utils.release();
}
