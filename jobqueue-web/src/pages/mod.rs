//! One module per page, each with its view and its actions.

pub(crate) mod busy;
pub(crate) mod classes;
pub(crate) mod overview;
pub(crate) mod periodic;
pub(crate) mod queues;
pub(crate) mod sets;
