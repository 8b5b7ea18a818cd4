//! The heartbeat: keeps this process's Sidekiq process hash alive, flushes the stats,
//! takes signals sent through Redis, and now and then recovers dead processes' jobs.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::{recovery, RunState, Shared};
use crate::backend::Heartbeat;
use crate::class_stats;
use crate::error::BrokerError;
use crate::job::keys::cancel_key;
use crate::metrics;

/// How often the class rates of every process are read.
const RATES_EVERY: Duration = Duration::from_secs(30);

/// Beats until `done` turns true, then once more so the last stats are flushed.
pub(crate) async fn run(shared: Arc<Shared>, mut done: watch::Receiver<bool>) {
    let mut last_recovery = Instant::now();
    let mut last_rates = Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(shared.config.heartbeat_interval) => {}
            _ = done.changed() => {}
        }
        if *done.borrow() {
            break;
        }
        if let Err(e) = beat(&shared).await {
            metrics::broker_error("heartbeat");
            tracing::warn!("heartbeat: {e}");
        }
        // A class's tier (and so its time limit) follows its rate over every process; a
        // process that has run nothing has no use for it.
        if last_rates.elapsed() >= RATES_EVERY && !shared.class_stats.is_empty() {
            last_rates = Instant::now();
            match shared.broker.processes().await {
                Ok(processes) => {
                    let merged = class_stats::merge(processes.iter().map(|p| p.classes.as_str()));
                    let rates = merged
                        .into_iter()
                        .map(|c| (c.class, c.runs_per_minute))
                        .collect();
                    shared.budgets.set_global_rates(rates);
                }
                Err(e) => tracing::debug!("reading the class rates of every process: {e}"),
            }
        }
        if last_recovery.elapsed() >= shared.config.recovery_interval {
            last_recovery = Instant::now();
            if let Err(e) = recovery::recover_orphans(&shared).await {
                tracing::warn!("recovering jobs of dead processes: {e}");
            }
        }
    }
}

/// Publishes one heartbeat. Counts that could not be flushed are kept for the next one.
pub(crate) async fn beat(shared: &Shared) -> Result<(), BrokerError> {
    let processed = shared.processed.swap(0, Ordering::Relaxed);
    let failed = shared.failed.swap(0, Ordering::Relaxed);
    let skipped = shared.skipped.swap(0, Ordering::Relaxed);
    let cancelled = shared.cancelled.swap(0, Ordering::Relaxed);
    let busy = shared.busy.load(Ordering::Relaxed);
    metrics::process(busy, shared.config.concurrency);
    let heartbeat = Heartbeat {
        identity: shared.identity.clone(),
        info: shared.info.clone(),
        busy,
        beat: std::time::SystemTime::now(),
        quiet: !shared.is_running(),
        rss_kb: resident_memory_kb(),
        processed,
        failed,
        skipped,
        cancelled,
        ttl: shared.config.heartbeat_ttl,
        concurrency: shared.config.concurrency,
        running: shared.running_jobs(),
        classes: shared.class_stats.snapshot(std::time::SystemTime::now()),
    };
    let beat = shared.broker.heartbeat(&heartbeat).await;
    signal_cancellations(shared).await;
    shared.health.record(beat.is_ok());
    match beat {
        Ok(signal) => {
            match signal.as_deref() {
                Some("TSTP") => shared.set_state(RunState::Quiet),
                Some("TERM") | Some("INT") => shared.set_state(RunState::Stopping),
                Some(other) => tracing::info!("ignoring signal {other} sent through Redis"),
                None => {}
            }
            Ok(())
        }
        Err(e) => {
            shared.processed.fetch_add(processed, Ordering::Relaxed);
            shared.failed.fetch_add(failed, Ordering::Relaxed);
            shared.skipped.fetch_add(skipped, Ordering::Relaxed);
            shared.cancelled.fetch_add(cancelled, Ordering::Relaxed);
            Err(e)
        }
    }
}

/// Resident memory of this process in KiB, as reported in the process info (Linux; 0
/// elsewhere).
pub(crate) fn resident_memory_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Tells the running jobs an operator cancelled (`Admin::cancel`) that they are.
async fn signal_cancellations(shared: &Shared) {
    let running: Vec<(u64, String)> = shared
        .running_map()
        .iter()
        .filter_map(|(slot, s)| {
            Some((
                *slot,
                crate::envelope::Envelope::parse(&s.job.payload).ok()?.jid,
            ))
        })
        .collect();
    if running.is_empty() {
        return;
    }
    let keys: Vec<String> = running.iter().map(|(_, jid)| cancel_key(jid)).collect();
    match shared.store().get_many(&keys).await {
        Ok(marks) => {
            let map = shared.running_map();
            for ((slot, jid), mark) in running.iter().zip(marks) {
                if mark.is_some() || shared.wakeups.cancelled(jid) {
                    if let Some(started) = map.get(slot) {
                        started.cancel.cancel();
                    }
                }
            }
        }
        Err(e) => tracing::debug!("reading cancellations: {e}"),
    }
}
