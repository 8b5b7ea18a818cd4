// graphile-worker 0.18 (Node.js, PostgreSQL), with the batching its performance page
// recommends for throughput (the configuration behind its ~184,000 jobs/s, there with 4
// processes of 24 slots each), in one process of `--concurrency` slots. Preset options:
//
//   concurrentJobs: C               `--concurrency`
//   maxPoolSize: max(10, C + 2)     as its maxPoolSize doc advises
//   localQueue: { size: 10000 }     batched fetching: one get_jobs call locks 10,000 jobs
//   completeJobBatchDelay: 0        batched completion: the completions of one event-loop
//   failJobBatchDelay: 0              turn go to PostgreSQL in one complete_jobs call
//
// and NO_LOG_SUCCESS=1 (as its perfTest sets), else every job logs a line. The rest is its
// defaults: prepared statements, LISTEN/NOTIFY for new jobs, pollInterval 2 s (used only
// after a fetch comes back empty), no refetchDelay. Enqueue with WorkerUtils.addJobs, one
// call (one `add_jobs` statement, which returns the 10,000 rows) per 10,000 jobs.
//
// The local queue fetches only once it is empty (it does not prefetch), so every refill
// stalls all the slots for one get_jobs round trip: its size sets the pace. The docs'
// perfTest value, 500, drained 100,000 jobs here at half the rate of 10,000 (a sweep over
// 500..20,000 at --concurrency 50 on 2 cores: 500 ~10k jobs/s, 2,000 ~18k, 10,000 ~25k,
// 20,000 no better); completeJobBatchDelay 250 made no difference to 0.
//
// Emptying drops the graphile_worker schema and migrates afresh, before the clocks start.
// The clock stops when the last job has run; the process then exits without waiting for
// the worker's graceful shutdown, so the last batch of completions may not be written.
//
//   npm ci --prefix scripts/peers
//   node scripts/peers/graphile.js --postgres URL --jobs N --concurrency C
//
// graphile-worker 0.18.0 declares node >= 22.18; it runs on Node 20 (npm warns EBADENGINE).
"use strict";

// Read by graphile-worker when it loads: without it, every job logs a line at info level.
process.env.NO_LOG_SUCCESS = "1";

const CHUNK = 10_000;
const LOCAL_QUEUE = 10_000;

function parse() {
  const o = { postgres: "postgres://postgres@127.0.0.1:5432/test", jobs: 100_000, concurrency: 10 };
  const args = process.argv.slice(2);
  for (let i = 0; i < args.length; i += 2) {
    const [arg, value] = [args[i], args[i + 1]];
    if (value === undefined) throw new Error(`${arg} needs a value`);
    if (arg === "--postgres") o.postgres = value;
    else if (arg === "--jobs") o.jobs = Number.parseInt(value, 10);
    else if (arg === "--concurrency") o.concurrency = Number.parseInt(value, 10);
    else throw new Error(`unknown option ${arg}: --postgres URL --jobs N --concurrency C`);
  }
  if (!(o.jobs > 0) || !(o.concurrency > 0)) throw new Error("--jobs and --concurrency take whole numbers");
  return o;
}

async function main() {
  const o = parse();
  const { Logger, makeWorkerUtils, run } = await import("graphile-worker");
  // Warnings and errors only, on stderr: the last line of stdout is the harness's.
  const logger = new Logger((scope) => (level, message) => {
    if (level === "error" || level === "warning") console.error(`[${scope.label}] ${level}: ${message}`);
  });
  const preset = {
    worker: {
      connectionString: o.postgres,
      logger,
      concurrentJobs: o.concurrency,
      maxPoolSize: Math.max(10, o.concurrency + 2),
      localQueue: { size: LOCAL_QUEUE },
      completeJobBatchDelay: 0,
      failJobBatchDelay: 0,
    },
  };

  // Empty: drop graphile-worker's schema (its jobs, queues, tasks and migration history)
  // and migrate afresh.
  const utils = await makeWorkerUtils({ preset });
  await utils.withPgClient((client) => client.query("drop schema if exists graphile_worker cascade"));
  await utils.migrate();

  let done = 0;
  let finish;
  const finished = new Promise((resolve) => (finish = resolve));
  const taskList = {
    noop: async () => {
      done += 1;
      if (done === o.jobs) finish();
    },
  };

  const cpu = process.cpuUsage();
  const started = process.hrtime.bigint();
  for (let n = 0; n < o.jobs; n += CHUNK) {
    const specs = [];
    for (let i = n; i < Math.min(n + CHUNK, o.jobs); i++) specs.push({ identifier: "noop", payload: { n: i } });
    await utils.addJobs(specs);
  }
  const enqueued = process.hrtime.bigint();

  await run({ preset, taskList, noHandleSignals: true });
  await finished;
  const end = process.hrtime.bigint();
  const used = process.cpuUsage(cpu);

  const enqueueS = Number(enqueued - started) / 1e9;
  const drainS = Number(end - enqueued) / 1e9;
  const cpuUs = (used.user + used.system) / o.jobs;
  console.log(
    `jobs=${o.jobs} concurrency=${o.concurrency} enqueue_s=${enqueueS.toFixed(3)} ` +
      `drain_s=${drainS.toFixed(3)} jobs_per_sec=${(o.jobs / drainS).toFixed(0)} ` +
      `process_cpu_us_per_job=${cpuUs.toFixed(2)}`,
  );
  // Abort the worker rather than wait for its graceful shutdown.
  process.exit(0);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
