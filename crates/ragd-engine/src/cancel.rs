//! Stopping long jobs: a token that a job checks between steps (documents, chunk candidates),
//! cancelled when its caller leaves, when its deadline passes, or when its parent (the server's
//! token for every job) is cancelled. Checking is a few atomic loads and a clock read.

use crate::error::{Error, Result};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// A job's stop signal. Clones share it; [`Cancel::default`] never stops.
#[derive(Debug, Clone, Default)]
pub struct Cancel(Arc<Inner>);

#[derive(Debug, Default)]
struct Inner {
    cancelled: AtomicBool,
    deadline: Option<Instant>,
    parent: Option<Cancel>,
}

impl Cancel {
    /// A token that stops when cancelled.
    pub fn new() -> Self {
        Self::default()
    }

    /// A token for one job under this one: it stops when either is cancelled, or at `deadline`.
    pub fn child(&self, deadline: Option<Instant>) -> Self {
        Self(Arc::new(Inner {
            cancelled: AtomicBool::new(false),
            deadline,
            parent: Some(self.clone()),
        }))
    }

    /// Stops every job holding this token or a child of it.
    pub fn cancel(&self) {
        self.0.cancelled.store(true, Ordering::Release);
    }

    /// `Ok` while the job may go on; `DeadlineExceeded` once its deadline has passed,
    /// `Cancelled` once it (or a parent) was cancelled.
    pub fn check(&self) -> Result<()> {
        let mut token = Some(self);
        while let Some(t) = token {
            if t.0.cancelled.load(Ordering::Acquire) {
                return Err(Error::Cancelled);
            }
            if t.0.deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(Error::DeadlineExceeded);
            }
            token = t.0.parent.as_ref();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn children_stop_with_their_parent_their_deadline_or_themselves() {
        let root = Cancel::new();
        let a = root.child(None);
        let b = root.child(Some(Instant::now() - Duration::from_millis(1)));
        let c = root.child(Some(Instant::now() + Duration::from_secs(3600)));
        assert!(a.check().is_ok() && c.check().is_ok());
        assert!(matches!(b.check(), Err(Error::DeadlineExceeded)));
        a.cancel();
        assert!(matches!(a.check(), Err(Error::Cancelled)));
        assert!(c.check().is_ok() && root.check().is_ok());
        root.cancel();
        assert!(matches!(c.check(), Err(Error::Cancelled)));
        assert!(Cancel::default().check().is_ok());
    }
}
