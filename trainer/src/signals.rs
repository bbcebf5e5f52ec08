//! Stop signals during training and evaluation: the first SIGTERM or SIGINT (Ctrl-C) asks the
//! training loop to finish the steps in flight, write a checkpoint and stop (an evaluation: to
//! finish and keep the chunk in progress); a second one exits at once
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

    /// The flag the first signal sets, for a library loop to poll.
    pub(crate) fn flag(&self) -> Arc<AtomicBool> {
        self.requested.clone()
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

/// A command stopped by `signal` after keeping its finished work (an evaluation's chunks): the
/// process exits as a stopped training run does (130 for SIGINT, 143 for SIGTERM).
#[derive(Debug)]
pub(crate) struct Stopped {
    /// `SIGINT` or `SIGTERM`.
    pub(crate) signal: String,
    /// What was kept and how to resume.
    pub(crate) message: String,
}

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.signal, self.message)
    }
}

impl std::error::Error for Stopped {}
