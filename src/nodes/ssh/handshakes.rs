//! How many SSH handshakes may be in flight: per sshd, and overall.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::config::SshSettings;

/// Handshakes in flight at once over all nodes, whatever their addresses:
/// bounds uprun's own CPU and sockets when every node is its own host.
pub(crate) const MAX_HANDSHAKES_OVERALL: usize = 32;

/// The handshake limits of one batch of connections: at most
/// `[ssh] max_parallel_handshakes` in flight per sshd (per `host:port` as
/// the site writes it: sshd drops unauthenticated connections past its
/// `MaxStartups`), and at most [`MAX_HANDSHAKES_OVERALL`] in all.
pub(crate) struct HandshakeLimiter {
    per_endpoint: usize,
    overall: Arc<tokio::sync::Semaphore>,
    endpoints: Mutex<HashMap<(String, u16), Arc<tokio::sync::Semaphore>>>,
}

/// What one connection waits for before its handshake (reconnections too).
#[derive(Clone)]
pub(crate) struct HandshakePermits {
    endpoint: Arc<tokio::sync::Semaphore>,
    overall: Arc<tokio::sync::Semaphore>,
}

impl HandshakePermits {
    /// Both permits, this endpoint's first (no overall permit is held while
    /// waiting for a busy sshd); `None` once a limiter is closed.
    pub(crate) async fn acquire(
        &self,
    ) -> Option<(
        tokio::sync::SemaphorePermit<'_>,
        tokio::sync::SemaphorePermit<'_>,
    )> {
        let endpoint = self.endpoint.acquire().await.ok()?;
        let overall = self.overall.acquire().await.ok()?;
        Some((endpoint, overall))
    }
}

impl HandshakeLimiter {
    pub(crate) fn new(settings: &SshSettings) -> HandshakeLimiter {
        HandshakeLimiter {
            per_endpoint: settings.max_parallel_handshakes.max(1),
            overall: Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES_OVERALL)),
            endpoints: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn permits(&self, host: &str, port: u16) -> HandshakePermits {
        let mut endpoints = self.endpoints.lock().unwrap_or_else(|e| e.into_inner());
        let endpoint = endpoints
            .entry((host.to_ascii_lowercase(), port))
            .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(self.per_endpoint)))
            .clone();
        HandshakePermits {
            endpoint,
            overall: self.overall.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshakes_are_limited_per_sshd_and_overall() {
        let settings = SshSettings {
            max_parallel_handshakes: 2,
            ..SshSettings::default()
        };
        let limiter = HandshakeLimiter::new(&settings);
        let a = limiter.permits("node-a", 22);
        // The same sshd however its name is cased: one limit.
        let a_again = limiter.permits("NODE-A", 22);
        let held: Vec<_> = (0..2)
            .map(|_| a.endpoint.try_acquire().expect("a permit"))
            .collect();
        assert!(a_again.endpoint.try_acquire().is_err(), "a's sshd is full");
        // Another port or host is another sshd, with its own limit.
        assert!(limiter
            .permits("node-a", 2222)
            .endpoint
            .try_acquire()
            .is_ok());
        assert!(limiter.permits("node-b", 22).endpoint.try_acquire().is_ok());
        drop(held);
        assert!(a_again.endpoint.try_acquire().is_ok());
        // Overall: one cap shared by every endpoint.
        let all: Vec<_> = (0..MAX_HANDSHAKES_OVERALL)
            .map(|i| {
                limiter
                    .permits(&format!("host{i}"), 22)
                    .overall
                    .try_acquire_owned()
                    .expect("an overall permit")
            })
            .collect();
        assert!(limiter.permits("node-c", 22).overall.try_acquire().is_err());
        drop(all);
    }
}
