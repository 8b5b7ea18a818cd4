-- jobqueue's tables: the layout of Sidekiq's Redis keys, in rows. Every table is jobqueue's
-- own; nothing here touches the application's tables.

-- Jobs waiting in a queue ('q', `name` is the queue), taken by a process ('f', `name` is
-- its identity) or set aside under a limit key ('p', `name` is the key). `pos` orders a
-- line: a push takes the next number, a push to the front the next number negated.
-- Finished jobs are deleted, so the table holds only live jobs; autovacuum looks at it
-- after 1 % of its rows have changed rather than 20 %. Acknowledgements delete by `id`:
-- through the line index they would step over every row the process held since the last
-- vacuum.
CREATE TABLE jobqueue_jobs (
    id bigserial PRIMARY KEY,
    place "char" NOT NULL,
    name text NOT NULL,
    queue text NOT NULL,
    pos bigint NOT NULL,
    payload text NOT NULL
) WITH (fillfactor = 80, autovacuum_vacuum_scale_factor = 0.01, autovacuum_vacuum_threshold = 1000);
CREATE INDEX jobqueue_jobs_line ON jobqueue_jobs (place, name, pos);
CREATE SEQUENCE jobqueue_pos;
-- In-flight rows are numbered apart: a fetch reserves a range for its batch.
CREATE SEQUENCE jobqueue_flight;

-- The sorted sets: scheduled ('s'), retries ('r') and dead jobs ('d'), each payload once
-- per set (by its digest: a payload may be longer than an index entry can be).
CREATE TABLE jobqueue_sets (
    id bigserial PRIMARY KEY,
    set "char" NOT NULL,
    score float8 NOT NULL,
    digest bytea NOT NULL,
    payload text NOT NULL,
    UNIQUE (set, digest)
) WITH (autovacuum_vacuum_scale_factor = 0.01, autovacuum_vacuum_threshold = 1000);
CREATE INDEX jobqueue_sets_due ON jobqueue_sets (set, score, id);

-- Every queue ever pushed to.
CREATE TABLE jobqueue_queues (name text PRIMARY KEY);
-- Paused queues, and when each resumes by itself (infinity: never).
CREATE TABLE jobqueue_paused (queue text PRIMARY KEY, until float8 NOT NULL);

-- The key/value store with expiry: locks, markers, claims, marks, checkpoints.
CREATE TABLE jobqueue_kv (key text PRIMARY KEY, value text NOT NULL, expires float8 NOT NULL);

-- Processes: their heartbeats, those that fetched (for recovery), signals to them, what
-- they publish for tools, and the totals they add to.
CREATE TABLE jobqueue_processes (
    identity text PRIMARY KEY,
    info text NOT NULL,
    busy bigint NOT NULL,
    beat float8 NOT NULL,
    quiet boolean NOT NULL,
    rss_kb bigint NOT NULL,
    running text NOT NULL,
    classes text NOT NULL,
    expires float8 NOT NULL
);
CREATE TABLE jobqueue_fetchers (identity text PRIMARY KEY);
CREATE TABLE jobqueue_signals (id bigserial PRIMARY KEY, identity text NOT NULL, signal text NOT NULL);
CREATE INDEX jobqueue_signals_to ON jobqueue_signals (identity, id);
CREATE TABLE jobqueue_published (what text NOT NULL, name text NOT NULL, value text NOT NULL, PRIMARY KEY (what, name));
CREATE TABLE jobqueue_stats (name text PRIMARY KEY, value bigint NOT NULL);

-- Per-key limits: slots taken (a running job's, or a start), and keys with jobs set aside
-- with when each is looked at again.
CREATE TABLE jobqueue_slots (key text NOT NULL, jid text NOT NULL, process text NOT NULL, at float8 NOT NULL);
CREATE INDEX jobqueue_slots_key ON jobqueue_slots (key, at);
CREATE TABLE jobqueue_limit_keys (key text PRIMARY KEY, next_look float8 NOT NULL);

-- Batches: counts and callbacks, and the jobs not finished yet.
CREATE TABLE jobqueue_batches (
    bid text PRIMARY KEY,
    description text NOT NULL,
    complete_queue text,
    complete_payload text,
    success_queue text,
    success_payload text,
    total bigint NOT NULL DEFAULT 0,
    succeeded bigint NOT NULL DEFAULT 0,
    failed bigint NOT NULL DEFAULT 0,
    finished boolean NOT NULL DEFAULT false,
    expires float8 NOT NULL
);
CREATE TABLE jobqueue_batch_jobs (bid text NOT NULL, jid text NOT NULL, PRIMARY KEY (bid, jid));

-- Jobs enqueued in an application's transaction for a broker elsewhere (Redis): a relay
-- moves committed rows into it and deletes them.
CREATE TABLE jobqueue_outbox (
    id bigserial PRIMARY KEY,
    queue text NOT NULL,
    payload text NOT NULL,
    at float8,
    created float8 NOT NULL
);
