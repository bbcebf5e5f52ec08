//! Stop signals during training: the first SIGTERM or SIGINT (Ctrl-C) asks the training loop
//! to finish the steps in flight, write a checkpoint and stop; a second one exits at once
//! (128 + the signal's number, as a shell reports a killed process).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use signal_hook::consts::{SIGINT, SIGTERM};

/// The stop request of a process: set by the first SIGTERM or SIGINT.
#[derive(Clone)]
pub(crate) struct StopSignal {
    requested: Arc<AtomicBool>,
    which: Arc<AtomicUsize>,
}

impl StopSignal {
    /// Installs the handlers (once per process).
    pub(crate) fn install() -> Result<Self> {
        let requested = Arc::new(AtomicBool::new(false));
        let which = Arc::new(AtomicUsize::new(0));
        for sig in [SIGTERM, SIGINT] {
            // Registered first, so it sees the flag as the previous signal left it: the
            // second signal exits at once.
            signal_hook::flag::register_conditional_shutdown(sig, 128 + sig, requested.clone())
                .context("installing the stop-signal handler")?;
            signal_hook::flag::register_usize(sig, which.clone(), sig as usize)
                .context("installing the stop-signal handler")?;
            signal_hook::flag::register(sig, requested.clone())
                .context("installing the stop-signal handler")?;
        }
        Ok(Self { requested, which })
    }

    /// The signal's name once one arrived.
    pub(crate) fn received(&self) -> Option<String> {
        if !self.requested.load(Ordering::SeqCst) {
            return None;
        }
        Some(
            match self.which.load(Ordering::SeqCst) as i32 {
                SIGINT => "SIGINT",
                _ => "SIGTERM",
            }
            .to_string(),
        )
    }
}
