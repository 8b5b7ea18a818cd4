//! The classes worker processes publish ([`Published::Classes`]): the options of job types a
//! process or a tool does not have, so that admission (the header, locks, markers) and
//! redaction apply to their jobs too. A client reads them again when it meets a class its
//! reading lacks (at most once every [`MISS`] for a class still not found).

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use crate::backend::{Broker, Published};
use crate::error::BrokerError;
use crate::job::{record, JobOptions};

/// The longest a tool goes on an old reading of the whole catalog (`fresh`).
const REFRESH: Duration = Duration::from_secs(30);

/// How long a class looked for and not found is taken as unknown without reading again.
const MISS: Duration = Duration::from_secs(1);

/// A client's reading of the published classes.
#[derive(Default)]
pub(crate) struct Catalog {
    read: RwLock<Reading>,
}

#[derive(Default)]
struct Reading {
    classes: HashMap<String, &'static JobOptions>,
    /// Classes looked for and not found since this reading, and when.
    missed: HashMap<String, Instant>,
    at: Option<Instant>,
}

impl Catalog {
    fn reading(&self) -> std::sync::RwLockReadGuard<'_, Reading> {
        self.read.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The published options of `class`, reading the catalog again when the reading
    /// lacks it.
    pub(crate) async fn options(
        &self,
        broker: &dyn Broker,
        class: &str,
    ) -> Result<Option<&'static JobOptions>, BrokerError> {
        {
            let reading = self.reading();
            if let Some(options) = reading.classes.get(class) {
                return Ok(Some(options));
            }
            // A class missed a moment ago is not read again at once: a storm of jobs of a
            // class no process publishes costs one read a second.
            if reading
                .missed
                .get(class)
                .is_some_and(|at| at.elapsed() < MISS)
            {
                return Ok(None);
            }
        }
        // A class may have been published since the last reading (a batch publishes its
        // callbacks' classes as it is enqueued): read again before admitting it bare.
        self.refresh(broker).await?;
        let mut reading = self.read.write().unwrap_or_else(|e| e.into_inner());
        let found = reading.classes.get(class).copied();
        if found.is_none() {
            reading.missed.insert(class.to_owned(), Instant::now());
        }
        Ok(found)
    }

    /// Reads the catalog again if it was last read more than [`REFRESH`] ago.
    pub(crate) async fn fresh(&self, broker: &dyn Broker) -> Result<(), BrokerError> {
        let stale = self.reading().at.is_none_or(|at| at.elapsed() >= REFRESH);
        if stale {
            self.refresh(broker).await?;
        }
        Ok(())
    }

    /// Reads the catalog now.
    pub(crate) async fn refresh(&self, broker: &dyn Broker) -> Result<(), BrokerError> {
        let published = broker.published(Published::Classes).await?;
        let classes = published
            .iter()
            .filter_map(|(class, text)| Some((class.clone(), record::from_json(text)?)))
            .collect();
        *self.read.write().unwrap_or_else(|e| e.into_inner()) = Reading {
            classes,
            missed: HashMap::new(),
            at: Some(Instant::now()),
        };
        Ok(())
    }

    /// Every class of the last reading, with its options.
    pub(crate) fn classes(&self) -> Vec<(String, &'static JobOptions)> {
        self.reading()
            .classes
            .iter()
            .map(|(class, options)| (class.clone(), *options))
            .collect()
    }
}

/// Publishes `classes` (name, options), replacing what was published under their names.
pub(crate) async fn publish(
    broker: &dyn Broker,
    classes: &[(&str, &JobOptions)],
) -> Result<(), BrokerError> {
    let entries: Vec<(String, String)> = classes
        .iter()
        .map(|(class, options)| ((*class).to_owned(), record::to_json(options)))
        .collect();
    broker.publish(Published::Classes, &entries).await
}
