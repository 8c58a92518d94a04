//! Certificate rotation without a restart, its second half: every `POLL_INTERVAL` the task
//! polls the node's `tls::reload::TlsWatch` (on a blocking thread) and swaps a changed set that
//! loads into the transport.
//!
//! `run` is the task; `apply` hands a changed set to `Transport::set_tls`
//! (`tls_reloads{reason="ok"}`, `reloaded TLS certificates` at info) or keeps the current set
//! (`reason="failed"`, a warning naming the file) (D65).

use std::path::Path;

use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::{Transport, TransportError};
use crate::metrics::reason;
use crate::tls::reload::{POLL_INTERVAL, Polled, TlsWatch};

/// Polls every [`POLL_INTERVAL`] until `shutdown`, swapping each changed, valid set into
/// `transport`.
pub async fn run(mut watch: TlsWatch, transport: Transport, shutdown: CancellationToken) {
    let mut ticks = tokio::time::interval(POLL_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate, and the files were just loaded.
    ticks.tick().await;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let polled = tokio::task::spawn_blocking(move || {
            let polled = watch.poll();
            (watch, polled)
        });
        match polled.await {
            Ok((returned, polled)) => {
                watch = returned;
                apply(watch.dir(), &transport, polled);
            }
            Err(panic) => {
                error!(%panic, "reading the TLS files failed; certificates are no longer reloaded");
                return;
            }
        }
    }
}

/// Swaps a changed set into `transport`, and counts and logs the outcome.
pub fn apply(dir: &Path, transport: &Transport, polled: Polled) {
    let result = match polled {
        Polled::Unchanged => return,
        Polled::Refused(error) => Err(TransportError::Tls(error)),
        Polled::Changed(tls) => transport.set_tls(&tls).map(|()| tls),
    };
    let reloads = &transport.metrics().tls_reloads;
    match result {
        Ok(tls) => {
            reloads.get_or_create(&reason("ok")).inc();
            let (not_after, cas) = (tls.not_after(), tls.ca_count());
            info!(dir = %dir.display(), %not_after, cas, "reloaded TLS certificates");
        }
        Err(error) => {
            reloads.get_or_create(&reason("failed")).inc();
            warn!(dir = %dir.display(), %error, "TLS files changed but do not load; keeping the current certificates");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::path::PathBuf;
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::metrics::Metrics;
    use crate::tls::reload::tests::{copy, issue};
    use crate::tls::{CA_CERT_FILE, NODE_CERT_FILE, NODE_KEY_FILE, ca_init};
    use crate::transport::CLOSE_UNTRUSTED;

    fn write_ca_bundle(node: &Path, cas: &[&Path]) {
        let bundle = cas.iter().map(|ca| fs::read_to_string(ca.join(CA_CERT_FILE)).unwrap()).collect::<String>();
        fs::write(node.join(CA_CERT_FILE), bundle).unwrap();
    }

    struct Peer {
        dir: PathBuf,
        watch: TlsWatch,
        transport: Transport,
    }

    impl Peer {
        fn bind(dir: PathBuf, name: &str) -> Peer {
            let (watch, tls) = TlsWatch::load(&dir, name).unwrap();
            let listen = "127.0.0.1:0".parse().unwrap();
            let (transport, _inboxes) = Transport::bind(listen, &tls, Arc::new(Metrics::new())).unwrap();
            Peer { dir, watch, transport }
        }

        /// Polls and applies, and returns the `tls_reloads` counter of `outcome`.
        fn reload(&mut self, outcome: &'static str) -> u64 {
            let polled = self.watch.poll();
            apply(&self.dir, &self.transport, polled);
            self.transport.metrics().tls_reloads.get_or_create(&reason(outcome)).get()
        }
    }

    /// Why `connection` closed, waiting up to 5 s.
    async fn closed(connection: &quinn::Connection) -> Option<quinn::ConnectionError> {
        tokio::time::timeout(Duration::from_secs(5), connection.closed()).await.ok()
    }

    /// Closed by the peer because it no longer trusts our certificate.
    fn closed_as_untrusted(error: &Option<quinn::ConnectionError>) -> bool {
        matches!(error, Some(quinn::ConnectionError::ApplicationClosed(close))
            if close.error_code == CLOSE_UNTRUSTED.into())
    }

    /// The CA rotation of `docs/operations.md` between two live transports, and the
    /// connections a dropped CA closes, on the accepting side and on the dialing side.
    #[tokio::test]
    async fn a_reload_serves_new_handshakes_and_closes_connections_it_no_longer_trusts() {
        let dir = tempfile::tempdir().unwrap();
        let (old_ca, new_ca) = (dir.path().join("old-ca"), dir.path().join("new-ca"));
        ca_init(&old_ca).unwrap();
        ca_init(&new_ca).unwrap();
        let (a_dir, b_dir, b_new) = (dir.path().join("a"), dir.path().join("b"), dir.path().join("b-new"));
        issue(&old_ca, "a", &a_dir);
        issue(&old_ca, "b", &b_dir);
        issue(&new_ca, "b", &b_new);
        let (mut a, mut b) = (Peer::bind(a_dir.clone(), "a"), Peer::bind(b_dir.clone(), "b"));
        let b_addr = b.transport.local_addr();
        let first = a.transport.connect(b_addr).await.unwrap();

        // b trusts both CAs: the open connection stays, and is still the one a uses.
        write_ca_bundle(&b_dir, &[&old_ca, &new_ca]);
        assert_eq!(b.reload("ok"), 1);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(first.close_reason().is_none(), "{:?}", first.close_reason());
        assert_eq!(a.transport.connect(b_addr).await.unwrap().stable_id(), first.stable_id());

        // b moves to the new CA alone: a's certificate is no longer trusted, so b closes the
        // connection a dialed, and a's next dial is refused.
        copy(&b_new, &b_dir, NODE_CERT_FILE);
        copy(&b_new, &b_dir, NODE_KEY_FILE);
        write_ca_bundle(&b_dir, &[&new_ca]);
        assert_eq!(b.reload("ok"), 2);
        let why = closed(&first).await;
        assert!(closed_as_untrusted(&why), "{why:?}");
        assert!(a.transport.connect(b_addr).await.is_err());

        // A half-written set on a is refused and a keeps its certificate; once whole, a dials
        // with its new certificate and gets in.
        let a_new = dir.path().join("a-new");
        issue(&new_ca, "a", &a_new);
        copy(&a_new, &a_dir, NODE_CERT_FILE);
        write_ca_bundle(&a_dir, &[&old_ca, &new_ca]);
        assert_eq!(a.reload("failed"), 1);
        copy(&a_new, &a_dir, NODE_KEY_FILE);
        assert_eq!(a.reload("ok"), 1);
        let second = a.transport.connect(b_addr).await.unwrap();

        // a, the dialer, drops the CA of b's certificate: a closes its own connection.
        write_ca_bundle(&a_dir, &[&old_ca]);
        assert_eq!(a.reload("ok"), 2);
        let why = closed(&second).await;
        assert!(matches!(why, Some(quinn::ConnectionError::LocallyClosed)), "{why:?}");
        a.transport.close().await;
        b.transport.close().await;
    }
}
