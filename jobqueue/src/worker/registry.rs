//! The job types a worker runs, looked up by class name. Nothing else can run: a payload
//! only names a class, and only registered classes have code behind them.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;

use crate::envelope::{decode_args, DecodeError};
use crate::job::{JobContext, JobError, JobOptions, Perform};

/// How a registered job's run failed.
pub(crate) enum Failure {
    /// The arguments do not fit the type: no retry can help.
    Decode(DecodeError),
    /// `perform` returned an error.
    Failed {
        error: JobError,
        retry_in: Option<Duration>,
    },
}

#[async_trait]
pub(crate) trait Handler: Send + Sync {
    async fn call(&self, args: &[Value], ctx: &JobContext) -> Result<(), Failure>;
    fn options(&self) -> &'static JobOptions;
}

struct Typed<J>(PhantomData<fn() -> J>);

#[async_trait]
impl<J: Perform> Handler for Typed<J> {
    async fn call(&self, args: &[Value], ctx: &JobContext) -> Result<(), Failure> {
        let job: J = decode_args(J::NAME, args).map_err(Failure::Decode)?;
        job.perform(ctx).await.map_err(|error| Failure::Failed {
            retry_in: job.retry_in(ctx.retries, &error),
            error,
        })
    }

    fn options(&self) -> &'static JobOptions {
        &J::OPTIONS
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

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&'static str, &Arc<dyn Handler>)> {
        self.handlers.iter().map(|(name, (h, _))| (*name, h))
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.handlers.is_empty()
    }

    pub(crate) fn class_names(&self) -> Vec<&'static str> {
        let mut names: Vec<_> = self.handlers.keys().copied().collect();
        names.sort_unstable();
        names
    }
}
