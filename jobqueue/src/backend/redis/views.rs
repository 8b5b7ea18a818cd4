//! What operators read and change on Redis ([`Views`]): pages of queues, sets, in-flight
//! lists and set-aside jobs; removals by exact payload; pauses. Every call reads or
//! removes a bounded number of entries.

use std::time::SystemTime;

use async_trait::async_trait;
use redis::AsyncCommands;

use super::codec::{lossy, payload_bytes, payload_from_bytes, payloads_from_bytes};
use super::RedisBroker;
use crate::backend::{Entry, LimitEntry, Location, Paused, Span, Views};
use crate::error::BrokerError;
use crate::time::{epoch_seconds, from_epoch, now};

/// `LRANGE` bounds for `count` entries from `offset`, counted from the tail (a queue's
/// next job is its last).
fn from_tail(offset: usize, count: usize) -> (isize, isize) {
    let stop = -1 - isize::try_from(offset).unwrap_or(isize::MAX - 1);
    let start = stop.saturating_sub(isize::try_from(count).unwrap_or(isize::MAX) - 1);
    (start, stop)
}

/// `LRANGE`/`ZRANGE` bounds for `count` entries from `offset`, from the head.
fn from_head(offset: usize, count: usize) -> (isize, isize) {
    let start = isize::try_from(offset).unwrap_or(isize::MAX);
    (
        start,
        start.saturating_add(isize::try_from(count).unwrap_or(isize::MAX) - 1),
    )
}

fn entries(payloads: Vec<Vec<u8>>) -> Vec<Entry> {
    payloads_from_bytes(payloads)
        .into_iter()
        .map(|payload| Entry { payload, at: None })
        .collect()
}

#[async_trait]
impl Views for RedisBroker {
    async fn queues(&self) -> Result<Vec<String>, BrokerError> {
        let queues: Vec<Vec<u8>> = self.conn().smembers(&self.inner.keys.queues).await?;
        let mut queues: Vec<String> = queues.into_iter().map(lossy).collect();
        queues.sort();
        Ok(queues)
    }

    async fn len(&self, at: Location<'_>) -> Result<usize, BrokerError> {
        let keys = &self.inner.keys;
        let mut conn = self.conn();
        Ok(match at {
            Location::Queue(queue) => conn.llen(keys.queue(queue)).await?,
            Location::Set(set) => conn.zcard(keys.set(set)).await?,
            Location::InFlight(process) => conn.llen(keys.in_flight(process)).await?,
            Location::Parked(key) => conn.llen(keys.parked(key)).await?,
        })
    }

    async fn range(&self, at: Location<'_>, span: Span) -> Result<Vec<Entry>, BrokerError> {
        let keys = &self.inner.keys;
        let mut conn = self.conn();
        let list = match at {
            Location::Queue(queue) => Some((keys.queue(queue), true)),
            Location::Parked(key) => Some((keys.parked(key), true)),
            Location::InFlight(process) => Some((keys.in_flight(process), false)),
            Location::Set(_) => None,
        };
        match (list, span) {
            (_, Span::Page { count: 0, .. } | Span::Scored { count: 0, .. }) => Ok(Vec::new()),
            (Some((key, tail)), Span::Page { offset, count }) => {
                let (start, stop) = match tail {
                    true => from_tail(offset, count),
                    false => from_head(offset, count),
                };
                let mut jobs: Vec<Vec<u8>> = conn.lrange(key, start, stop).await?;
                if tail {
                    jobs.reverse();
                }
                Ok(entries(jobs))
            }
            (Some(_), Span::Scored { .. }) => Ok(Vec::new()),
            (None, span) => {
                let Location::Set(set) = at else {
                    return Ok(Vec::new());
                };
                let key = keys.set(set);
                let scored: Vec<(Vec<u8>, f64)> = match span {
                    Span::Page { offset, count } => {
                        let (start, stop) = from_head(offset, count);
                        conn.zrange_withscores(key, start, stop).await?
                    }
                    Span::Scored { min, max, count } => {
                        redis::cmd("ZRANGE")
                            .arg(key)
                            .arg(epoch_seconds(min))
                            .arg(epoch_seconds(max))
                            .arg("BYSCORE")
                            .arg("LIMIT")
                            .arg(0)
                            .arg(count)
                            .arg("WITHSCORES")
                            .query_async(&mut conn)
                            .await?
                    }
                };
                Ok(scored
                    .into_iter()
                    .map(|(payload, score)| Entry {
                        payload: payload_from_bytes(payload),
                        at: Some(from_epoch(score)),
                    })
                    .collect())
            }
        }
    }

    async fn remove(&self, at: Location<'_>, payloads: &[String]) -> Result<usize, BrokerError> {
        let keys = &self.inner.keys;
        if payloads.is_empty() {
            return Ok(0);
        }
        let (list, limit) = match at {
            Location::Queue(queue) => (keys.queue(queue), ""),
            Location::Parked(key) => (keys.parked(key), key),
            Location::InFlight(_) => return Ok(0),
            Location::Set(set) => {
                let members: Vec<_> = payloads.iter().map(|p| payload_bytes(p)).collect();
                let members: Vec<&[u8]> = members.iter().map(|m| m.as_ref()).collect();
                return Ok(self.conn().zrem(keys.set(set), members).await?);
            }
        };
        let mut call = self.inner.scripts.remove.key(list);
        call.key(keys.limits()).arg(limit);
        for payload in payloads {
            call.arg(payload_bytes(payload).as_ref());
        }
        Ok(call.invoke_async(&mut self.conn()).await?)
    }

    async fn limits(&self) -> Result<Vec<LimitEntry>, BrokerError> {
        let keys = &self.inner.keys;
        let waiting: Vec<(Vec<u8>, f64)> =
            self.conn().zrange_withscores(keys.limits(), 0, -1).await?;
        let waiting: Vec<(String, f64)> = waiting.into_iter().map(|(k, s)| (lossy(k), s)).collect();
        if waiting.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for (key, _) in &waiting {
            pipe.llen(keys.slots(key)).llen(keys.parked(key));
        }
        let counts: Vec<(usize, usize)> = pipe.query_async(&mut self.conn()).await?;
        Ok(waiting
            .into_iter()
            .zip(counts)
            .map(|((key, next_look), (held, parked))| LimitEntry {
                key,
                held,
                parked,
                next_look: from_epoch(next_look),
            })
            .collect())
    }

    async fn pause(&self, queue: &str, state: Paused) -> Result<(), BrokerError> {
        let keys = &self.inner.keys;
        let until = match state {
            Paused::No => {
                redis::pipe()
                    .zrem(&keys.paused, queue)
                    .ignore()
                    .publish(&keys.wake, "queued")
                    .ignore()
                    .query_async::<()>(&mut self.conn())
                    .await?;
                return Ok(());
            }
            Paused::UntilResumed => f64::INFINITY,
            Paused::Until(at) => epoch_seconds(at),
        };
        let _: () = self.conn().zadd(&keys.paused, queue, until).await?;
        Ok(())
    }

    async fn paused(&self) -> Result<Vec<(String, Option<SystemTime>)>, BrokerError> {
        let keys = &self.inner.keys;
        let mut conn = self.conn();
        let _: () = conn.zrembyscore(&keys.paused, "-inf", now()).await?;
        let entries: Vec<(Vec<u8>, f64)> = conn.zrange_withscores(&keys.paused, 0, -1).await?;
        Ok(entries
            .into_iter()
            .map(|(queue, until)| (lossy(queue), until.is_finite().then(|| from_epoch(until))))
            .collect())
    }
}
