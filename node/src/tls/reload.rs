//! Certificate rotation without a restart, its first half: the node polls its `tls` directory
//! and loads a changed, valid set of files (`transport::reload` swaps it into the transport).
//!
//! Polling compares the files' content, not their times or inodes, and does not use inotify:
//! Kubernetes updates a Secret volume by renaming a symlink to a new directory (a file watch
//! on the old path sees nothing), and a copy by hand is several writes. A hash of three small
//! files every few seconds sees every way of replacing them the same way.
//!
//! A set is applied only once it loads whole and `node.key` is the key of `node.pem`; until
//! then the node keeps the set it has. Each content is tried once, so a set caught half
//! written is refused, then taken at the poll after the last file lands, and a set left
//! broken is reported once, not at every poll.
//!
//! `TlsWatch`, `Polled` and `POLL_INTERVAL` (D65). `daemon::start` loads through
//! `TlsWatch::load`, which refuses a certificate that does not name the node (`load_named`, at
//! start and at every reload: `TlsError::WrongName`; the names are the DNS names,
//! `certificate_names`), and keeps the fingerprint (`TlsFiles::fingerprint`, a SHA-256 of the
//! contents) of that same read. `TlsWatch::poll` reads and fingerprints the files again; a
//! content not tried before is loaded (`Polled::Changed`) or refused (`Polled::Refused`).
//!
//! **Architecture Invariant:** a reload swaps the whole set or nothing: a node never presents a
//! certificate of one set with a key or a bundle of another.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{NodeTls, TlsError, TlsFiles};

/// How often the files are read and compared. Short enough that an operator waits seconds per
/// node between the steps of a CA rotation; long enough that reading three small files and
/// hashing them is no cost.
pub const POLL_INTERVAL: Duration = Duration::from_secs(2);

/// The `tls` directory of a node and the content last tried from it.
pub struct TlsWatch {
    dir: PathBuf,
    /// The node's name: a reloaded certificate must be issued for it too.
    name: String,
    /// The fingerprint of the files last loaded or refused.
    tried: [u8; 32],
}

/// What one poll found.
pub enum Polled {
    /// The files hold what was last tried.
    Unchanged,
    /// They changed, and the new set does not load; the current one stays.
    Refused(TlsError),
    /// They changed, and the new set loads and its key matches its certificate.
    Changed(NodeTls),
}

impl TlsWatch {
    /// The first load, at start: the certificates, and the watch that later polls compare to
    /// them (from the same read, so a change in between is not missed). The certificate must
    /// be issued for `name` ([`TlsError::WrongName`] otherwise).
    pub fn load(dir: &Path, name: &str) -> Result<(TlsWatch, NodeTls), TlsError> {
        let files = TlsFiles::read(dir);
        let tried = files.fingerprint();
        let tls = load_named(files, name)?;
        Ok((TlsWatch { dir: dir.to_owned(), name: name.to_owned(), tried }, tls))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Reads the files again (blocking I/O) and loads them if they changed since the last try.
    pub fn poll(&mut self) -> Polled {
        let files = TlsFiles::read(&self.dir);
        let fingerprint = files.fingerprint();
        if fingerprint == self.tried {
            return Polled::Unchanged;
        }
        self.tried = fingerprint;
        match load_named(files, &self.name) {
            Ok(tls) => Polled::Changed(tls),
            Err(error) => Polled::Refused(error),
        }
    }
}

/// Loads `files` and checks that their certificate is issued for `name` (one of its DNS
/// names): a node under another name than its certificate's would write as one node and
/// authenticate as another.
fn load_named(files: TlsFiles, name: &str) -> Result<NodeTls, TlsError> {
    let tls = NodeTls::from_files(files)?;
    let names = tls.names();
    if !names.iter().any(|issued| issued == name) {
        let found = if names.is_empty() { "no DNS name".to_owned() } else { names.join(", ") };
        return Err(TlsError::WrongName { expected: name.to_owned(), found });
    }
    Ok(tls)
}

#[cfg(test)]
pub(crate) mod tests {
    use std::fs;

    use super::*;
    use crate::tls::{NODE_CERT_FILE, NODE_KEY_FILE, ca_init, ca_issue};

    pub(crate) fn issue(ca: &Path, name: &str, out: &Path) {
        ca_issue(ca, name, &["127.0.0.1".parse().unwrap()], &[], out).unwrap();
    }

    pub(crate) fn copy(from: &Path, to: &Path, file: &str) {
        fs::copy(from.join(file), to.join(file)).unwrap();
    }

    #[test]
    fn a_key_of_another_certificate_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca");
        ca_init(&ca).unwrap();
        let (n1, n2) = (dir.path().join("n1"), dir.path().join("n2"));
        issue(&ca, "n1", &n1);
        issue(&ca, "n2", &n2);
        copy(&n2, &n1, NODE_KEY_FILE);
        let error = NodeTls::load(&n1).unwrap_err().to_string();
        assert!(error.contains("node.key: expected the private key of the certificate in node.pem"), "{error}");
    }

    #[test]
    fn a_half_written_set_is_refused_then_taken_when_complete() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca");
        ca_init(&ca).unwrap();
        let (node, renewed) = (dir.path().join("n1"), dir.path().join("n1-renewed"));
        issue(&ca, "n1", &node);
        issue(&ca, "n1", &renewed);
        let (mut watch, _) = TlsWatch::load(&node, "n1").unwrap();
        assert!(matches!(watch.poll(), Polled::Unchanged));

        // A copy caught mid-write: half of node.pem.
        let pem = fs::read_to_string(renewed.join(NODE_CERT_FILE)).unwrap();
        fs::write(node.join(NODE_CERT_FILE), &pem[..pem.len() / 2]).unwrap();
        let Polled::Refused(error) = watch.poll() else { panic!("half a certificate was taken") };
        assert!(error.to_string().contains("node.pem: expected a PEM certificate"), "{error}");
        assert!(matches!(watch.poll(), Polled::Unchanged), "the same broken content is tried once");

        // node.pem whole, node.key not replaced yet.
        copy(&renewed, &node, NODE_CERT_FILE);
        let Polled::Refused(error) = watch.poll() else { panic!("a certificate with the old key was taken") };
        assert!(error.to_string().contains("node.key: expected the private key"), "{error}");

        // A symlink swap shows a moment with a file missing.
        fs::remove_file(node.join(NODE_KEY_FILE)).unwrap();
        let Polled::Refused(error) = watch.poll() else { panic!("a set without its key was taken") };
        assert!(error.to_string().contains("node.key: No such file"), "{error}");

        copy(&renewed, &node, NODE_KEY_FILE);
        let Polled::Changed(tls) = watch.poll() else { panic!("the complete set was not taken") };
        assert_eq!(tls.ca_count(), 1);
        let expires = (time::OffsetDateTime::from(crate::clock::wall()) + crate::tls::NODE_VALIDITY).year().to_string();
        assert!(tls.not_after().starts_with(&expires), "{}", tls.not_after());
        assert!(matches!(watch.poll(), Polled::Unchanged));
    }

    #[test]
    fn a_certificate_for_another_node_is_refused_at_load_and_reload() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca");
        ca_init(&ca).unwrap();
        let (n1, n7) = (dir.path().join("n1"), dir.path().join("n7"));
        issue(&ca, "n1", &n1);
        issue(&ca, "n7", &n7);
        let Err(error) = TlsWatch::load(&n7, "n1") else { panic!("a certificate for n7 was taken by n1") };
        assert_eq!(error.to_string(), "expected a certificate issued for n1, got one issued for n7");
        let (mut watch, _) = TlsWatch::load(&n1, "n1").unwrap();
        copy(&n7, &n1, NODE_CERT_FILE);
        copy(&n7, &n1, NODE_KEY_FILE);
        let Polled::Refused(error) = watch.poll() else { panic!("a reload to n7's certificate was taken") };
        assert!(matches!(error, TlsError::WrongName { .. }), "{error}");
    }
}
