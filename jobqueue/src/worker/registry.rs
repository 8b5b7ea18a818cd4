//! The job types a worker runs, looked up by class name. Nothing else can run: a payload
//! only names a class, and only registered classes have code behind them.

use std::marker::PhantomData;
use std::sync::Arc;

use async_trait::async_trait;
use foldhash::HashMap;
use serde_json::Value;

use crate::envelope::decode_args;
use crate::job::JobOptions;
use crate::perform::{JobContext, JobError, Perform};
use crate::retry::error_class;

#[async_trait]
pub(crate) trait Handler: Send + Sync {
    /// Decodes the arguments and performs the job.
    async fn call(&self, args: &[Value], ctx: &JobContext) -> Result<(), JobError>;
    fn options(&self) -> &'static JobOptions;
    /// The class name it runs under.
    fn class(&self) -> &'static str;
}

struct Typed<J>(PhantomData<fn() -> J>);

#[async_trait]
impl<J: Perform> Handler for Typed<J> {
    async fn call(&self, args: &[Value], ctx: &JobContext) -> Result<(), JobError> {
        let job: J = decode_args(J::NAME, args, J::OPTIONS.sensitive).map_err(|e| {
            // The same arguments fail the same way every time: no retry.
            JobError::new(e.to_string())
                .with_class(error_class::INVALID_ARGUMENTS)
                .no_retry()
        })?;
        job.perform(ctx).await.map_err(|mut error| {
            if error.retry_in.is_none() {
                error.retry_in = job.retry_in(ctx.retries, &error);
            }
            error
        })
    }

    fn options(&self) -> &'static JobOptions {
        &J::OPTIONS
    }

    fn class(&self) -> &'static str {
        J::NAME
    }
}

#[derive(Clone, Default)]
pub(crate) struct Registry {
    handlers: HashMap<&'static str, (Arc<dyn Handler>, &'static str)>,
}

impl Registry {
    /// Adds `J`; returns the Rust type already registered under the same class, if any.
    pub(crate) fn add<J: Perform>(&mut self) -> Option<&'static str> {
        let type_name = std::any::type_name::<J>();
        match self.handlers.get(J::NAME) {
            Some((_, existing)) if *existing != type_name => Some(existing),
            _ => {
                self.handlers
                    .insert(J::NAME, (Arc::new(Typed::<J>(PhantomData)), type_name));
                None
            }
        }
    }

    pub(crate) fn get(&self, class: &str) -> Option<&Arc<dyn Handler>> {
        self.handlers.get(class).map(|(handler, _)| handler)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.handlers.is_empty()
    }

    /// Whether a class has a concurrency or rate limit.
    pub(crate) fn has_limits(&self) -> bool {
        self.handlers.values().any(|(handler, _)| {
            let options = handler.options();
            options.concurrency.is_some() || options.rate.is_some()
        })
    }

    /// Whether a class is collapsible, so fetches read its jobs' markers.
    pub(crate) fn has_collapsible(&self) -> bool {
        self.handlers
            .values()
            .any(|(handler, _)| handler.options().collapse.is_some())
    }

    /// Every class with its options, to publish for processes and tools without them.
    pub(crate) fn classes(&self) -> Vec<(&'static str, &'static JobOptions)> {
        self.handlers
            .iter()
            .map(|(class, (handler, _))| (*class, handler.options()))
            .collect()
    }

    /// The sensitive argument fields of each class that has some.
    pub(crate) fn sensitive(
        &self,
    ) -> std::collections::BTreeMap<&'static str, &'static [&'static str]> {
        self.handlers
            .iter()
            .map(|(class, (handler, _))| (*class, handler.options().sensitive))
            .filter(|(_, fields)| !fields.is_empty())
            .collect()
    }

    pub(crate) fn class_names(&self) -> Vec<&'static str> {
        let mut names: Vec<_> = self.handlers.keys().copied().collect();
        names.sort_unstable();
        names
    }
}

/// Whether admission acts on jobs of a class with `options`: a uniqueness lock taken at
/// enqueue, a collapse key or limits written in the header. Their due jobs pass through
/// the client, not straight to their queues.
pub(crate) fn admission_acts_on(options: &JobOptions) -> bool {
    options.collapse.is_some()
        || options.unique.is_some_and(|u| u.locks_at_enqueue())
        || options.concurrency.is_some()
        || options.rate.is_some()
}
