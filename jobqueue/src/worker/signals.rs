//! Operating-system signals, as Sidekiq reads them: TERM and INT shut down gracefully, TSTP
//! makes the worker quiet (no new jobs).

use super::WorkerHandle;

pub(super) async fn listen(handle: &WorkerHandle) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut tstp = signal(SignalKind::from_raw(libc::SIGTSTP))?;
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = tstp.recv() => {
                    tracing::info!("SIGTSTP: quiet, no new jobs");
                    handle.quiet();
                }
            }
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c().await?;
    tracing::info!("shutdown signal received");
    handle.shutdown();
    Ok(())
}
