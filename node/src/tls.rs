//! The cluster CA and node certificates (rcgen), and the mutual-TLS configs (rustls, ring).
//!
//! `ca init --out DIR` writes `ca.pem` and `ca.key`. `ca issue --out DIR` writes `ca.pem`,
//! `node.pem` and `node.key`: exactly what `grapevine node --tls DIR` reads.
//!
//! Peers are dialed by the gossip address chitchat hands us, not by a name, so a peer's
//! certificate is checked for a chain to the cluster CA and a valid signature, not for a host
//! name: membership in the cluster is what the CA attests.
//!
//! Start-up and every reload go through one path: [`TlsFiles::read`] takes the three files at
//! once, [`NodeTls::from_files`] parses and checks them. [`reload`] polls the files and swaps a
//! changed set into the transport without a restart.
//!
//! - The parts: `ca_init`, `ca_issue`, `TlsFiles`, `NodeTls` (`load`, `from_files`,
//!   `server_config`, `client_config`, `peer_trust`, `identity`, `ca_count`, `not_after`),
//!   `PeerTrust`, `NodeIdentity` (the certificate and signing key that sign gossip reports),
//!   `SIGNATURE_SCHEMES`, `CaOnlyVerifier`, `ALPN`, the file names (`CA_CERT_FILE`, `CA_KEY_FILE`,
//!   `NODE_CERT_FILE`, `NODE_KEY_FILE`) and `TlsError`.
//! - The only crypto provider is rustls's `ring`, passed explicitly. Only TLS 1.3 is allowed.
//! - `set_validity` gives certificates a validity period starting one day back (clock skew):
//!   `CA_VALIDITY` (10 years) for the CA, `NODE_VALIDITY` (2 years) for node certificates.
//! - `TlsFiles::read` reads the three files once (a file that cannot be read is kept as its error),
//!   and `NodeTls::from_files` parses them, checks with rustls's `CertifiedKey::from_der` that
//!   `node.key` is the key of `node.pem`, and that every certificate of `ca.pem` is a usable root,
//!   naming the file at fault.
//! - `PeerTrust` holds the two verifiers of a set (`WebPkiClientVerifier` for peers that dialed,
//!   `CaOnlyVerifier` for peers dialed) so that `transport` can hold open connections to a new
//!   bundle with the same checks as a handshake.

pub mod reload;

use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose, SanType};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::sign::{CertifiedKey, SigningKey};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};

/// How long the cluster CA is valid. Replacing a CA means re-issuing every node certificate,
/// so it is long; a node certificate expires sooner and is re-issued with `ca issue`.
const CA_VALIDITY: time::Duration = time::Duration::days(10 * 365);
/// How long a node certificate is valid.
const NODE_VALIDITY: time::Duration = time::Duration::days(2 * 365);

/// Sets validity from yesterday (tolerating clock skew between hosts) for `validity`.
fn set_validity(params: &mut CertificateParams, validity: time::Duration) {
    let now = time::OffsetDateTime::from(crate::clock::wall());
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + validity;
}

pub const CA_CERT_FILE: &str = "ca.pem";
pub const CA_KEY_FILE: &str = "ca.key";
pub const NODE_CERT_FILE: &str = "node.pem";
pub const NODE_KEY_FILE: &str = "node.key";

/// The schemes a node signs its gossip reports with, in order of preference: the first its key
/// supports is used (ECDSA P-256 for the keys `ca issue` makes).
pub const SIGNATURE_SCHEMES: [SignatureScheme; 4] = [
    SignatureScheme::ECDSA_NISTP256_SHA256,
    SignatureScheme::ECDSA_NISTP384_SHA384,
    SignatureScheme::ED25519,
    SignatureScheme::RSA_PSS_SHA256,
];

/// The ALPN protocol of the peer plane; a peer speaking anything else is refused.
pub const ALPN: &[u8] = b"grapevine/1";

/// Why certificates could not be made or loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file that should exist does not, or cannot be read or written.
    #[error("{path}: {error}")]
    Io { path: PathBuf, error: std::io::Error },
    /// A file that exists but holds no usable certificate or key.
    #[error("{path}: expected {expected}, got {found}")]
    Invalid { path: PathBuf, expected: &'static str, found: String },
    /// `ca init` refuses to overwrite an existing CA.
    #[error("{path} already exists; refusing to overwrite a CA (choose another --out)")]
    Exists { path: PathBuf },
    /// rcgen or rustls refused to build something.
    #[error("certificate error: {0}")]
    Build(String),
    /// The certificate is issued for another node than the one this node is: a node's name is
    /// its certificate's (`docs/security.md`).
    #[error("expected a certificate issued for {expected}, got one issued for {found}")]
    WrongName { expected: String, found: String },
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> TlsError + '_ {
    move |error| TlsError::Io { path: path.to_owned(), error }
}

fn build_error(error: impl std::fmt::Display) -> TlsError {
    TlsError::Build(error.to_string())
}

/// Writes `contents` to `path`; private keys are readable by their owner only.
fn write_file(path: &Path, contents: &str, private: bool) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mode = if private { 0o600 } else { 0o644 };
    let mut file =
        fs::OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(path).map_err(io_error(path))?;
    file.write_all(contents.as_bytes()).map_err(io_error(path))
}

fn read_file(path: &Path) -> Result<String, TlsError> {
    fs::read_to_string(path).map_err(io_error(path))
}

/// `grapevine ca init`: a new self-signed cluster CA in `out`.
pub fn ca_init(out: &Path) -> Result<(), TlsError> {
    let cert_path = out.join(CA_CERT_FILE);
    if cert_path.exists() {
        return Err(TlsError::Exists { path: cert_path });
    }
    fs::create_dir_all(out).map_err(io_error(out))?;
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, "grapevine cluster CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    set_validity(&mut params, CA_VALIDITY);
    let key = KeyPair::generate().map_err(build_error)?;
    let cert = params.self_signed(&key).map_err(build_error)?;
    write_file(&out.join(CA_KEY_FILE), &key.serialize_pem(), true)?;
    write_file(&cert_path, &cert.pem(), false)
}

/// `grapevine ca issue`: a node certificate signed by the CA in `ca_dir`, written to `out`
/// with a copy of the CA certificate.
pub fn ca_issue(ca_dir: &Path, name: &str, ips: &[IpAddr], dns: &[String], out: &Path) -> Result<(), TlsError> {
    let ca_cert_path = ca_dir.join(CA_CERT_FILE);
    let ca_key_path = ca_dir.join(CA_KEY_FILE);
    let ca_cert_pem = read_file(&ca_cert_path)?;
    let ca_key = KeyPair::from_pem(&read_file(&ca_key_path)?).map_err(|e| TlsError::Invalid {
        path: ca_key_path.clone(),
        expected: "a PEM private key",
        found: e.to_string(),
    })?;
    let ca_params = CertificateParams::from_ca_cert_pem(&ca_cert_pem).map_err(|e| TlsError::Invalid {
        path: ca_cert_path.clone(),
        expected: "a PEM CA certificate",
        found: e.to_string(),
    })?;
    // rcgen signs with a Certificate value: re-create it from the CA's own parameters and key.
    let ca_cert = ca_params.self_signed(&ca_key).map_err(build_error)?;

    let mut names = vec![name.to_owned()];
    names.extend(dns.iter().cloned());
    let mut params = CertificateParams::new(names).map_err(build_error)?;
    params.subject_alt_names.extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::ExplicitNoCa;
    set_validity(&mut params, NODE_VALIDITY);
    params.extended_key_usages =
        vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth, rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let key = KeyPair::generate().map_err(build_error)?;
    let cert = params.signed_by(&key, &ca_cert, &ca_key).map_err(build_error)?;

    fs::create_dir_all(out).map_err(io_error(out))?;
    write_file(&out.join(NODE_KEY_FILE), &key.serialize_pem(), true)?;
    write_file(&out.join(NODE_CERT_FILE), &cert.pem(), false)?;
    write_file(&out.join(CA_CERT_FILE), &ca_cert_pem, false)
}

/// The three files of a `tls` directory, each read once: what start-up and every reload
/// parse, and what the reload task compares, so a file that changes between the comparison
/// and the parse cannot slip by.
pub struct TlsFiles {
    dir: PathBuf,
    ca: std::io::Result<Vec<u8>>,
    cert: std::io::Result<Vec<u8>>,
    key: std::io::Result<Vec<u8>>,
}

impl TlsFiles {
    /// Reads `ca.pem`, `node.pem` and `node.key` from `dir`; a file that cannot be read is kept
    /// as its error, which [`NodeTls::from_files`] reports.
    pub fn read(dir: &Path) -> TlsFiles {
        let read = |name: &str| fs::read(dir.join(name));
        TlsFiles { dir: dir.to_owned(), ca: read(CA_CERT_FILE), cert: read(NODE_CERT_FILE), key: read(NODE_KEY_FILE) }
    }

    /// A SHA-256 over each file's bytes, or its read error: equal fingerprints, equal files.
    pub fn fingerprint(&self) -> [u8; 32] {
        let mut hasher = Sha256::new();
        for file in [&self.ca, &self.cert, &self.key] {
            let error_text;
            let (tag, bytes): (u8, &[u8]) = match file {
                Ok(bytes) => (1, bytes),
                Err(error) => {
                    error_text = error.to_string();
                    (0, error_text.as_bytes())
                }
            };
            hasher.update([tag]);
            hasher.update((bytes.len() as u64).to_le_bytes());
            hasher.update(bytes);
        }
        hasher.finalize().into()
    }
}

/// The bytes of the file `name` in `dir` as read, or the error naming it.
fn contents(dir: &Path, name: &str, read: std::io::Result<Vec<u8>>) -> Result<(PathBuf, Vec<u8>), TlsError> {
    let path = dir.join(name);
    match read {
        Ok(bytes) => Ok((path, bytes)),
        Err(error) => Err(TlsError::Io { path, error }),
    }
}

/// What a node needs for mutual TLS, loaded from the directory `ca issue` wrote.
#[derive(Clone, Debug)]
pub struct NodeTls {
    /// Every certificate in `ca.pem`: one CA, or during a CA rotation the old and the new.
    cas: Vec<CertificateDer<'static>>,
    chain: Vec<CertificateDer<'static>>,
    key: Arc<PrivateKeyDer<'static>>,
}

impl NodeTls {
    /// Loads `ca.pem`, `node.pem` and `node.key` from `dir`, naming the file at fault.
    pub fn load(dir: &Path) -> Result<Self, TlsError> {
        Self::from_files(TlsFiles::read(dir))
    }

    /// Parses the files and checks that `node.key` is the key of `node.pem`: a set caught half
    /// written (one of the two replaced) is refused here, not at the first handshake.
    pub fn from_files(files: TlsFiles) -> Result<Self, TlsError> {
        let TlsFiles { dir, ca, cert, key } = files;
        let (ca_path, ca) = contents(&dir, CA_CERT_FILE, ca)?;
        let cas = parse_all_certs(&ca_path, &ca)?;
        let (cert_path, cert) = contents(&dir, NODE_CERT_FILE, cert)?;
        let chain = vec![parse_first_cert(&cert_path, &cert)?];
        let (key_path, key) = contents(&dir, NODE_KEY_FILE, key)?;
        let key = PrivateKeyDer::from_pem_slice(&key).map_err(|e| TlsError::Invalid {
            path: key_path.clone(),
            expected: "a PEM private key",
            found: e.to_string(),
        })?;
        CertifiedKey::from_der(chain.clone(), key.clone_key(), &provider()).map_err(|e| TlsError::Invalid {
            path: key_path,
            expected: "the private key of the certificate in node.pem",
            found: e.to_string(),
        })?;
        let tls = NodeTls { cas, chain, key: Arc::new(key) };
        // Checked here so that a bad bundle names its file, not the first config built from it.
        tls.roots().map_err(|e| TlsError::Invalid {
            path: ca_path,
            expected: "CA certificates",
            found: e.to_string(),
        })?;
        Ok(tls)
    }

    /// The names the certificate is issued for: its DNS names, the first of which is the
    /// `--name` of `ca issue`. A node may run under any of them, as peers check a signed report
    /// (`gossip::signed`).
    pub fn names(&self) -> Vec<String> {
        certificate_names(&self.chain[0])
    }

    /// How many CA certificates `ca.pem` holds.
    pub fn ca_count(&self) -> usize {
        self.cas.len()
    }

    /// When the node certificate expires, in UTC (`2027-11-21T21:38:51Z`), or `unknown` for a
    /// certificate rcgen cannot parse (it was made elsewhere; rustls took it).
    pub fn not_after(&self) -> String {
        let Ok(params) = CertificateParams::from_ca_cert_der(&self.chain[0]) else {
            return "unknown".into();
        };
        let at = params.not_after.to_offset(time::UtcOffset::UTC);
        let (year, month, day) = (at.year(), u8::from(at.month()), at.day());
        format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", at.hour(), at.minute(), at.second())
    }

    /// What an open connection's peer certificate is held to after a reload: the verifiers
    /// of the handshake, over this bundle.
    pub fn peer_trust(&self) -> Result<PeerTrust, TlsError> {
        let roots = self.roots()?;
        let client =
            WebPkiClientVerifier::builder_with_provider(roots.clone(), provider()).build().map_err(build_error)?;
        let server = CaOnlyVerifier { roots, algorithms: provider().signature_verification_algorithms };
        Ok(PeerTrust { client, server })
    }

    /// What this node signs its gossip reports with: its certificate and its private key.
    pub fn identity(&self) -> Result<NodeIdentity, TlsError> {
        let key = provider().key_provider.load_private_key(self.key.clone_key()).map_err(build_error)?;
        if key.choose_scheme(&SIGNATURE_SCHEMES).is_none() {
            let found = format!("a {:?} key", key.algorithm());
            return Err(TlsError::Invalid {
                path: NODE_KEY_FILE.into(),
                expected: "an ECDSA, Ed25519 or RSA key",
                found,
            });
        }
        Ok(NodeIdentity { certificate: self.chain[0].clone(), key })
    }

    fn roots(&self) -> Result<Arc<RootCertStore>, TlsError> {
        let mut roots = RootCertStore::empty();
        for ca in &self.cas {
            roots.add(ca.clone()).map_err(build_error)?;
        }
        Ok(Arc::new(roots))
    }

    /// The server side: present our certificate, require one from the CA of the client.
    pub fn server_config(&self) -> Result<rustls::ServerConfig, TlsError> {
        let provider = provider();
        let client_verifier = WebPkiClientVerifier::builder_with_provider(self.roots()?, provider.clone())
            .build()
            .map_err(build_error)?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(build_error)?
            .with_client_cert_verifier(client_verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(build_error)?;
        config.alpn_protocols = vec![ALPN.to_vec()];
        Ok(config)
    }

    /// The client side: present our certificate, require the server's to chain to the CA.
    pub fn client_config(&self) -> Result<rustls::ClientConfig, TlsError> {
        let provider = provider();
        let verifier =
            Arc::new(CaOnlyVerifier { roots: self.roots()?, algorithms: provider.signature_verification_algorithms });
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(build_error)?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())
            .map_err(build_error)?;
        config.alpn_protocols = vec![ALPN.to_vec()];
        Ok(config)
    }
}

/// The node's certificate and signing key, as the latest load made them: what signs the
/// reports it publishes in gossip (`gossip::signed`).
#[derive(Debug)]
pub struct NodeIdentity {
    /// The end-entity certificate of `node.pem`.
    pub certificate: CertificateDer<'static>,
    /// The key of `node.key`.
    pub key: Arc<dyn SigningKey>,
}

/// The DNS names of a certificate (DER): the names of the node it is issued for, as webpki
/// reads them when it checks a certificate for a name (the common name is not one: webpki
/// ignores it). Empty when it cannot be parsed or has none.
pub fn certificate_names(certificate: &CertificateDer<'_>) -> Vec<String> {
    let Ok(params) = CertificateParams::from_ca_cert_der(certificate) else { return Vec::new() };
    let dns = params.subject_alt_names.iter().filter_map(|name| match name {
        SanType::DnsName(name) => Some(name.as_str().to_owned()),
        _ => None,
    });
    dns.collect()
}

/// ring, and only ring: with two providers compiled in, rustls panics at the first builder.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn parse_first_cert(path: &Path, pem: &[u8]) -> Result<CertificateDer<'static>, TlsError> {
    CertificateDer::from_pem_slice(pem).map_err(|e| TlsError::Invalid {
        path: path.to_owned(),
        expected: "a PEM certificate",
        found: e.to_string(),
    })
}

/// Every PEM certificate in `pem` (at least one): a CA bundle.
fn parse_all_certs(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let invalid = |found: String| TlsError::Invalid { path: path.to_owned(), expected: "PEM certificates", found };
    let certs =
        CertificateDer::pem_slice_iter(pem).collect::<Result<Vec<_>, _>>().map_err(|e| invalid(e.to_string()))?;
    if certs.is_empty() {
        return Err(invalid("no certificate".into()));
    }
    Ok(certs)
}

/// Whether a peer's certificate, verified at its handshake, still chains to the CA bundle of
/// the latest reload: the same checks as a handshake (chain, validity dates, signatures).
pub struct PeerTrust {
    /// For peers that dialed us: they presented a client certificate.
    client: Arc<dyn ClientCertVerifier>,
    /// For peers we dialed: they presented a server certificate.
    server: CaOnlyVerifier,
}

impl PeerTrust {
    /// Checks `chain` (end entity first) as the handshake did; `peer_is_server` when we dialed.
    pub fn check(&self, chain: &[CertificateDer<'_>], peer_is_server: bool) -> Result<(), rustls::Error> {
        self.check_at(chain, peer_is_server, crate::clock::unix_time())
    }

    /// Checks `chain` as a handshake at `now` would have.
    pub fn check_at(
        &self,
        chain: &[CertificateDer<'_>],
        peer_is_server: bool,
        now: UnixTime,
    ) -> Result<(), rustls::Error> {
        let (end_entity, intermediates) = chain.split_first().ok_or(rustls::Error::NoCertificatesPresented)?;
        if peer_is_server {
            let name = ServerName::try_from("grapevine").expect("a valid DNS name");
            self.server.verify_server_cert(end_entity, intermediates, &name, &[], now).map(drop)
        } else {
            self.client.verify_client_cert(end_entity, intermediates, now).map(drop)
        }
    }
}

/// Verifies a server certificate's chain to the cluster CA and its signatures, not its name.
#[derive(Debug)]
struct CaOnlyVerifier {
    roots: Arc<RootCertStore>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for CaOnlyVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.algorithms.all,
        )?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_certificates_load_and_build_configs() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca");
        ca_init(&ca).unwrap();
        assert!(matches!(ca_init(&ca), Err(TlsError::Exists { .. })));
        let node = dir.path().join("n1");
        ca_issue(&ca, "n1", &["127.0.0.1".parse().unwrap()], &["n1.example".into()], &node).unwrap();
        let tls = NodeTls::load(&node).unwrap();
        tls.server_config().unwrap();
        tls.client_config().unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(node.join(NODE_KEY_FILE)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn every_ca_of_a_bundle_is_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let (old, new) = (dir.path().join("old"), dir.path().join("new"));
        ca_init(&old).unwrap();
        ca_init(&new).unwrap();
        let node = dir.path().join("n1");
        ca_issue(&new, "n1", &[], &[], &node).unwrap();
        let bundle = [&old, &new].map(|ca| fs::read_to_string(ca.join(CA_CERT_FILE)).unwrap()).concat();
        fs::write(node.join(CA_CERT_FILE), bundle).unwrap();
        let tls = NodeTls::load(&node).unwrap();
        assert_eq!(tls.roots().unwrap().len(), 2);
        fs::write(node.join(CA_CERT_FILE), "").unwrap();
        let error = NodeTls::load(&node).unwrap_err().to_string();
        assert!(error.contains("expected PEM certificates") && error.contains("no certificate"), "{error}");
    }

    #[test]
    fn the_name_is_the_one_ca_issue_was_given() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca");
        ca_init(&ca).unwrap();
        let node = dir.path().join("n7");
        ca_issue(&ca, "n7", &["127.0.0.1".parse().unwrap()], &["n7.example".into()], &node).unwrap();
        assert_eq!(NodeTls::load(&node).unwrap().names(), ["n7", "n7.example"]);
    }

    #[test]
    fn a_missing_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let error = NodeTls::load(dir.path()).unwrap_err().to_string();
        assert!(error.contains("ca.pem"), "{error}");
    }
}
