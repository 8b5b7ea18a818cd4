//! Time values: when periodic jobs tick ([`Periodic`]) and when bulk jobs may not run
//! ([`QuietWindow`]). The worker's scheduler and ticker act on them.

pub mod periodic;
pub mod window;

pub use self::periodic::Periodic;
pub use self::window::QuietWindow;
