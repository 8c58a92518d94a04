//! Signed reports: a node's health reports and KPIs in gossip carry a signature by its TLS key,
//! and peers check it against the certificate the node publishes (`cert`), which must chain to
//! the cluster CA and name the node. chitchat relays every member's state through every other
//! member and authenticates none of it, so without this any node of the CA could write
//! `rep.<generation>` into another's state and open a gate or make an anomaly quorum.
//!
//! A signed value is the unsigned one, `:`, and the signature in unpadded URL-safe base64
//! (`h:12000:MEUCIQ...`). The signature covers [`message`]: the cluster id, the member's name
//! and incarnation, the key and the unsigned value, so it cannot be moved to another cluster,
//! member, restart of the member, key or verdict.
//!
//! A value that is unsigned, badly signed, or from a member whose certificate is missing,
//! untrusted or names another node, is treated as absent: it never counts toward a gate or a
//! quorum. [`Verifier`] caches each certificate's check per member for [`CERT_RECHECK`] (and
//! until the CA bundle is reloaded), and each value's check per certificate, so the engine's
//! reads on every report change cost a map lookup; a refusal is counted once per check.
//!
//! The parts: `KEY_CERT`, `message`, `sign`, `certificate_value`, `split`, `check_certificate`,
//! `check_signature`, `Refusal`, and `Verifier`, which remembers each member's certificate check
//! (per `cert` value and CA bundle) and each value's signature check; and, in `testsuite` builds,
//! `Forge` (`GRAPEVINE_TEST_FORGE_REPORTS`), a node that forges its reports for the cluster test.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as BASE64;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

use crate::tls::{NodeIdentity, PeerTrust, SIGNATURE_SCHEMES};

/// `cert` = the node's certificate (`node.pem`'s DER, base64): what its signatures are checked
/// against.
pub const KEY_CERT: &str = "cert";

/// Largest certificate (DER) a peer's `cert` may hold. rcgen's ECDSA certificates are about 500
/// bytes and an RSA-4096 one under 2 KB; chitchat values must stay far below 65 KB.
pub const MAX_CERT_BYTES: usize = 4 * 1024;

/// How long a member's certificate check is trusted before it is made again: certificates
/// expire, and a check must not outlive that by much.
pub const CERT_RECHECK: Duration = Duration::from_secs(60);

/// Values whose check is remembered; past it the memory is cleared and values are checked
/// again (a few hundred microseconds each).
const MAX_CHECKED_VALUES: usize = 64 * 1024;

/// Members whose certificate check is remembered; past it, cleared.
const MAX_CHECKED_CERTIFICATES: usize = 4 * 1024;

/// Separates these signatures from any other use of the node's key (TLS handshakes sign with a
/// context string of their own).
const SIGNING_CONTEXT: &[u8] = b"grapevine signed gossip value v1";

/// Why a peer's signed value was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum Refusal {
    /// The value has no signature field (a build without signed reports, or a forger).
    #[error("the value carries no signature")]
    Unsigned,
    /// The signature does not verify with the member's certificate over this value.
    #[error("the signature does not verify with the member's certificate")]
    BadSignature,
    /// The member publishes no `cert`.
    #[error("the member publishes no certificate")]
    NoCertificate,
    /// The member's `cert` is malformed, too large, expired, or does not chain to the CA bundle.
    #[error("the member's certificate is not trusted")]
    UntrustedCertificate,
    /// The member's certificate chains to the CA but is not issued to the member's name.
    #[error("the member's certificate names another node")]
    WrongName,
}

impl Refusal {
    /// The metric label (`grapevine_forged_reports_total{reason=...}`).
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::Unsigned => "unsigned",
            Refusal::BadSignature => "bad_signature",
            Refusal::NoCertificate => "no_certificate",
            Refusal::UntrustedCertificate => "untrusted_certificate",
            Refusal::WrongName => "wrong_name",
        }
    }
}

/// Who a value is from, as chitchat names the member whose state holds it.
#[derive(Clone, Copy, Debug)]
pub struct Signer<'a> {
    pub cluster: &'a str,
    pub name: &'a str,
    pub incarnation: u64,
}

/// The bytes a value's signature covers: a context, then each field length-prefixed, so no two
/// different tuples give the same bytes.
pub fn message(signer: Signer<'_>, key: &str, value: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(SIGNING_CONTEXT.len() + 64 + key.len() + value.len());
    out.extend_from_slice(SIGNING_CONTEXT);
    for field in [signer.cluster.as_bytes(), signer.name.as_bytes(), key.as_bytes(), value.as_bytes()] {
        out.extend_from_slice(&(field.len() as u32).to_be_bytes());
        out.extend_from_slice(field);
    }
    out.extend_from_slice(&signer.incarnation.to_be_bytes());
    out
}

/// `value` signed by `identity`: `value:signature`. `None` if the key cannot sign (the key
/// types `NodeTls::identity` accepts all can).
pub fn sign(identity: &NodeIdentity, signer: Signer<'_>, key: &str, value: &str) -> Option<String> {
    let signature = sign_bytes(identity, &message(signer, key, value))?;
    Some(format!("{value}:{}", BASE64.encode(signature)))
}

/// The signature of `message` by `identity`'s key, with the first scheme of
/// [`SIGNATURE_SCHEMES`] the key supports.
pub fn sign_bytes(identity: &NodeIdentity, message: &[u8]) -> Option<Vec<u8>> {
    identity.key.choose_scheme(&SIGNATURE_SCHEMES)?.sign(message).ok()
}

/// The value of `cert` for `identity`.
pub fn certificate_value(identity: &NodeIdentity) -> String {
    BASE64.encode(identity.certificate.as_ref())
}

/// The unsigned part of `value`, whose unsigned form has `fields` `:`-separated fields, and
/// the signature; [`Refusal::Unsigned`] when it has no signature field.
pub fn split(value: &str, fields: usize) -> Result<(&str, &str), Refusal> {
    let (unsigned, signature) = value.rsplit_once(':').ok_or(Refusal::Unsigned)?;
    if unsigned.split(':').count() != fields {
        return Err(Refusal::Unsigned);
    }
    Ok((unsigned, signature))
}

/// The signature algorithms of rustls's ring provider, built once.
static ALGORITHMS: LazyLock<WebPkiSupportedAlgorithms> =
    LazyLock::new(|| rustls::crypto::ring::default_provider().signature_verification_algorithms);

/// Checks that the `cert` value `published` chains to `trust` and names `name`.
pub fn check_certificate(
    trust: &PeerTrust,
    name: &str,
    published: Option<&str>,
) -> Result<CertificateDer<'static>, Refusal> {
    let published = published.filter(|value| !value.is_empty()).ok_or(Refusal::NoCertificate)?;
    if published.len() > MAX_CERT_BYTES * 4 / 3 + 4 {
        return Err(Refusal::UntrustedCertificate);
    }
    let der = CertificateDer::from(BASE64.decode(published).map_err(|_| Refusal::UntrustedCertificate)?);
    check_certificate_der(trust, name, &der, crate::clock::unix_time())?;
    Ok(der)
}

/// Checks that `certificate` chained to `trust` at `time` and names `name`.
pub fn check_certificate_der(
    trust: &PeerTrust,
    name: &str,
    certificate: &CertificateDer<'_>,
    time: UnixTime,
) -> Result<(), Refusal> {
    if certificate.len() > MAX_CERT_BYTES {
        return Err(Refusal::UntrustedCertificate);
    }
    // Every node certificate is a client certificate too (`ca issue`): the handshake's check.
    trust.check_at(std::slice::from_ref(certificate), false, time).map_err(|_| Refusal::UntrustedCertificate)?;
    let parsed = webpki::EndEntityCert::try_from(certificate).map_err(|_| Refusal::UntrustedCertificate)?;
    let name = ServerName::try_from(name).map_err(|_| Refusal::WrongName)?;
    parsed.verify_is_valid_for_subject_name(&name).map_err(|_| Refusal::WrongName)
}

/// Checks `signature` (base64) over `message` with the key of `certificate`.
pub fn check_signature(certificate: &CertificateDer<'_>, message: &[u8], signature: &str) -> Result<(), Refusal> {
    let signature = BASE64.decode(signature).map_err(|_| Refusal::BadSignature)?;
    check_signature_bytes(certificate, message, &signature)
}

/// Checks `signature` over `message` with the key of `certificate`.
pub fn check_signature_bytes(
    certificate: &CertificateDer<'_>,
    message: &[u8],
    signature: &[u8],
) -> Result<(), Refusal> {
    let parsed = webpki::EndEntityCert::try_from(certificate).map_err(|_| Refusal::BadSignature)?;
    // The signer chose the first scheme of the list its key supports; an algorithm for another
    // key type fails on the key's type before any arithmetic.
    let algorithms = SIGNATURE_SCHEMES.iter().flat_map(|scheme| {
        ALGORITHMS.mapping.iter().filter(move |(s, _)| s == scheme).flat_map(|(_, algorithms)| algorithms.iter())
    });
    for algorithm in algorithms {
        if parsed.verify_signature(*algorithm, message, signature).is_ok() {
            return Ok(());
        }
    }
    Err(Refusal::BadSignature)
}

/// A member's certificate as last checked.
struct CheckedCertificate {
    published: Option<String>,
    trust: Arc<PeerTrust>,
    at: Instant,
    outcome: Result<CertificateDer<'static>, Refusal>,
}

/// A value's check, against the certificate check it used.
struct CheckedValue {
    certificate: Arc<CheckedCertificate>,
    outcome: Result<(), Refusal>,
}

/// A refused value: why, and whether this was its first check (to count and log it once).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refused {
    pub refusal: Refusal,
    pub first: bool,
}

/// What one member published, as read from its chitchat state.
pub struct Published<'a> {
    pub signer: Signer<'a>,
    pub certificate: Option<&'a str>,
    pub key: &'a str,
    pub value: &'a str,
}

/// Remembers the checks of peers' certificates and values.
#[derive(Default)]
pub struct Verifier {
    certificates: HashMap<(String, u64), Arc<CheckedCertificate>>,
    values: HashMap<(String, u64, String, String), CheckedValue>,
}

impl Verifier {
    /// The unsigned part of `published.value` (of `fields` fields) if `trust` lets its member
    /// speak for its name and the signature verifies.
    pub fn check<'a>(
        &mut self,
        trust: &Arc<PeerTrust>,
        published: &Published<'a>,
        fields: usize,
        now: Instant,
    ) -> Result<&'a str, Refused> {
        let refused = |refusal, first| Refused { refusal, first };
        let certificate = self.certificate(trust, published, now);
        let (unsigned, signature) = split(published.value, fields).map_err(|r| refused(r, false))?;
        let signer = published.signer;
        let key = (signer.name.to_owned(), signer.incarnation, published.key.to_owned(), published.value.to_owned());
        if let Some(checked) = self.values.get(&key).filter(|c| Arc::ptr_eq(&c.certificate, &certificate)) {
            return checked.outcome.map(|()| unsigned).map_err(|r| refused(r, false));
        }
        let outcome = match &certificate.outcome {
            Ok(der) => check_signature(der, &message(signer, published.key, unsigned), signature),
            Err(refusal) => Err(*refusal),
        };
        if self.values.len() >= MAX_CHECKED_VALUES {
            self.values.clear();
        }
        self.values.insert(key, CheckedValue { certificate, outcome });
        outcome.map(|()| unsigned).map_err(|r| refused(r, true))
    }

    /// The check of the member's certificate: remembered while its `cert`, the CA bundle and
    /// [`CERT_RECHECK`] allow.
    fn certificate(
        &mut self,
        trust: &Arc<PeerTrust>,
        published: &Published<'_>,
        now: Instant,
    ) -> Arc<CheckedCertificate> {
        let member = (published.signer.name.to_owned(), published.signer.incarnation);
        if let Some(checked) = self.certificates.get(&member).filter(|c| {
            c.published.as_deref() == published.certificate
                && Arc::ptr_eq(&c.trust, trust)
                && now.duration_since(c.at) < CERT_RECHECK
        }) {
            return checked.clone();
        }
        let outcome = check_certificate(trust, published.signer.name, published.certificate);
        let checked = Arc::new(CheckedCertificate {
            published: published.certificate.map(str::to_owned),
            trust: trust.clone(),
            at: now,
            outcome,
        });
        if self.certificates.len() >= MAX_CHECKED_CERTIFICATES {
            self.certificates.clear();
        }
        self.certificates.insert(member, checked.clone());
        checked
    }
}

/// Test plumbing: a node that forges its reports (`GRAPEVINE_TEST_FORGE_REPORTS`), to show
/// that peers refuse them. `<h|a>:<key|cert>:<tls dir>`: every report says healthy (`h`) or
/// anomalous (`a`), and is signed with the key of the node whose `tls` directory is given;
/// with `cert`, that node's certificate is published too (a node speaking for another).
#[cfg(feature = "testsuite")]
pub struct Forge {
    pub verdict: grapevine_proto::report::Verdict,
    pub identity: NodeIdentity,
    pub publish_certificate: bool,
}

#[cfg(feature = "testsuite")]
impl Forge {
    pub const ENV: &str = "GRAPEVINE_TEST_FORGE_REPORTS";

    /// The forgery the environment asks for, if any.
    pub fn from_env() -> Option<Forge> {
        use grapevine_proto::report::Verdict;
        let text = std::env::var(Self::ENV).ok()?;
        let parsed = (|| {
            let mut parts = text.splitn(3, ':');
            let verdict = match parts.next()? {
                "h" => Verdict::Healthy,
                "a" => Verdict::Anomalous,
                _ => return None,
            };
            let publish_certificate = match parts.next()? {
                "key" => false,
                "cert" => true,
                _ => return None,
            };
            let tls = crate::tls::NodeTls::load(std::path::Path::new(parts.next()?)).ok()?;
            Some(Forge { verdict, identity: tls.identity().ok()?, publish_certificate })
        })();
        if parsed.is_none() {
            tracing::error!(value = %text, "{} must be <h|a>:<key|cert>:<tls dir>; not forging", Self::ENV);
        }
        parsed
    }
}

#[cfg(test)]
pub(crate) mod tests;
