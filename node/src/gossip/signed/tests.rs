//! Signing and checking gossip values, each refusal, the verifier's memory, and what it costs.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::clock;
use crate::tls::{NodeTls, ca_init, ca_issue};

/// A cluster CA in a temporary directory, and nodes issued by it.
pub(crate) struct Cluster {
    dir: tempfile::TempDir,
}

impl Cluster {
    pub(crate) fn new() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        ca_init(&dir.path().join("ca")).unwrap();
        Cluster { dir }
    }

    /// A node certificate for `name` from the CA `ca`.
    pub(crate) fn node(&self, ca: &str, name: &str) -> NodeTls {
        let ca = self.dir.path().join(ca);
        if !ca.exists() {
            ca_init(&ca).unwrap();
        }
        let out = self.dir.path().join(format!("{name}-{}", ca.file_name().unwrap().to_string_lossy()));
        ca_issue(&ca, name, &["127.0.0.1".parse().unwrap()], &[], &out).unwrap();
        NodeTls::load(&out).unwrap()
    }

    pub(crate) fn trust(&self) -> Arc<PeerTrust> {
        let path = self.dir.path().join("observer");
        if !path.exists() {
            ca_issue(&self.dir.path().join("ca"), "observer", &[], &[], &path).unwrap();
        }
        Arc::new(NodeTls::load(Path::new(&path)).unwrap().peer_trust().unwrap())
    }
}

const CLUSTER: &str = "test";

fn signer(name: &str) -> Signer<'_> {
    Signer { cluster: CLUSTER, name, incarnation: 7 }
}

fn identity(tls: &NodeTls) -> NodeIdentity {
    tls.identity().unwrap()
}

/// Checks `value` of `key`, published by `name` with certificate `certificate`.
fn check(
    trust: &Arc<PeerTrust>,
    name: &str,
    certificate: Option<&str>,
    key: &str,
    value: &str,
) -> Result<String, Refusal> {
    let published = Published { signer: signer(name), certificate, key, value };
    Verifier::default().check(trust, &published, 2, clock::now()).map(str::to_owned).map_err(|r| r.refusal)
}

#[test]
fn a_signed_report_verifies_and_keeps_its_value_compact() {
    let cluster = Cluster::new();
    let n1 = identity(&cluster.node("ca", "n1"));
    let value = sign(&n1, signer("n1"), "rep.n1.7", "h:12000").unwrap();
    assert!(value.starts_with("h:12000:"), "{value}");
    assert!(value.len() < 120, "{} bytes: {value}", value.len());
    let certificate = certificate_value(&n1);
    assert!(certificate.len() < 1_000, "a certificate of {} bytes", certificate.len());
    let trust = cluster.trust();
    assert_eq!(check(&trust, "n1", Some(&certificate), "rep.n1.7", &value), Ok("h:12000".to_owned()));
}

#[test]
fn each_forgery_is_refused_for_its_reason() {
    let cluster = Cluster::new();
    let (n1, n2) = (identity(&cluster.node("ca", "n1")), identity(&cluster.node("ca", "n2")));
    let foreign = identity(&cluster.node("foreign-ca", "n1"));
    let trust = cluster.trust();
    let n1_cert = certificate_value(&n1);
    let key = "rep.n1.7";
    let signed = sign(&n1, signer("n1"), key, "h:12000").unwrap();
    let refused = |name, certificate: Option<&str>, key, value: &str| check(&trust, name, certificate, key, value);

    // A build without signatures, or a value stripped of its signature.
    assert_eq!(refused("n1", Some(&n1_cert), key, "h:12000"), Err(Refusal::Unsigned));
    // Another verdict under the same signature, another key, a signature of garbage.
    let tampered = signed.replacen("h:", "a:", 1);
    assert_eq!(refused("n1", Some(&n1_cert), key, &tampered), Err(Refusal::BadSignature));
    assert_eq!(refused("n1", Some(&n1_cert), "rep.n1.8", &signed), Err(Refusal::BadSignature));
    assert_eq!(refused("n1", Some(&n1_cert), key, "h:12000:not-base64!"), Err(Refusal::BadSignature));
    // n2 signs a report under n1's name, with its own key: n1's certificate does not verify it.
    let by_n2 = sign(&n2, signer("n1"), key, "h:12000").unwrap();
    assert_eq!(refused("n1", Some(&n1_cert), key, &by_n2), Err(Refusal::BadSignature));
    // The same value in another cluster or from another incarnation of n1.
    let published = |signer| Published { signer, certificate: Some(&n1_cert), key, value: &signed };
    let mut verifier = Verifier::default();
    let other_cluster = Signer { cluster: "other", ..signer("n1") };
    let restarted = Signer { incarnation: 8, ..signer("n1") };
    for moved in [other_cluster, restarted] {
        let refusal = verifier.check(&trust, &published(moved), 2, clock::now()).unwrap_err().refusal;
        assert_eq!(refusal, Refusal::BadSignature);
    }
    // No certificate, garbage, a certificate of another CA.
    assert_eq!(refused("n1", None, key, &signed), Err(Refusal::NoCertificate));
    assert_eq!(refused("n1", Some("AAAA"), key, &signed), Err(Refusal::UntrustedCertificate));
    let foreign_signed = sign(&foreign, signer("n1"), key, "h:12000").unwrap();
    assert_eq!(
        refused("n1", Some(&certificate_value(&foreign)), key, &foreign_signed),
        Err(Refusal::UntrustedCertificate)
    );
    // n2 speaks for n1 with its own trusted certificate and key: the certificate names n2.
    let n2_as_n1 = sign(&n2, signer("n1"), key, "a:0").unwrap();
    assert_eq!(refused("n1", Some(&certificate_value(&n2)), key, &n2_as_n1), Err(Refusal::WrongName));
}

#[test]
fn checks_are_remembered_and_a_reload_of_the_ca_bundle_checks_again() {
    let cluster = Cluster::new();
    let n1 = identity(&cluster.node("ca", "n1"));
    let certificate = certificate_value(&n1);
    let (trust, reloaded) = (cluster.trust(), cluster.trust());
    let key = "rep.n1.7";
    let forged = "h:12000:AAAA";
    let published = Published { signer: signer("n1"), certificate: Some(&certificate), key, value: forged };
    let mut verifier = Verifier::default();
    let now = clock::now();
    let first = verifier.check(&trust, &published, 2, now).unwrap_err();
    assert_eq!(first, Refused { refusal: Refusal::BadSignature, first: true });
    let again = verifier.check(&trust, &published, 2, now).unwrap_err();
    assert!(!again.first, "a refusal is counted once");
    // A new CA bundle, or a minute later, checks afresh.
    assert!(verifier.check(&reloaded, &published, 2, now).unwrap_err().first);
    assert!(verifier.check(&reloaded, &published, 2, now + CERT_RECHECK + Duration::from_secs(1)).unwrap_err().first);
}

#[test]
fn a_node_identity_signs_with_ecdsa_p256() {
    let cluster = Cluster::new();
    let n1 = identity(&cluster.node("ca", "n1"));
    let scheme = n1.key.choose_scheme(&SIGNATURE_SCHEMES).unwrap().scheme();
    assert_eq!(scheme, rustls::SignatureScheme::ECDSA_NISTP256_SHA256);
}

/// What signing and checking one report costs (run with `--nocapture` to see the figures):
/// the median of 9 runs of 200 each.
#[test]
fn cost_of_signing_and_checking_a_report() {
    let cluster = Cluster::new();
    let n1 = identity(&cluster.node("ca", "n1"));
    let certificate = certificate_value(&n1);
    let trust = cluster.trust();
    let key = "rep.n1.7";
    let median_us = |mut run: Box<dyn FnMut(usize)>| {
        let mut runs: Vec<f64> = (0..9)
            .map(|round| {
                let started = clock::now();
                for i in 0..200 {
                    run(round * 1000 + i);
                }
                clock::elapsed(started).as_secs_f64() * 1e6 / 200.0
            })
            .collect();
        runs.sort_by(f64::total_cmp);
        runs[4]
    };
    let sign_us = median_us(Box::new(|i| {
        sign(&n1, signer("n1"), key, &format!("h:{i}")).unwrap();
    }));
    let values: Vec<String> = (0..10_000).map(|i| sign(&n1, signer("n1"), key, &format!("h:{i}")).unwrap()).collect();
    let der = check_certificate(&trust, "n1", Some(&certificate)).unwrap();
    let signature_us = median_us(Box::new(|i| {
        let (unsigned, signature) = split(&values[i % values.len()], 2).unwrap();
        check_signature(&der, &message(signer("n1"), key, unsigned), signature).unwrap();
    }));
    let certificate_us = median_us(Box::new(|_| {
        check_certificate(&trust, "n1", Some(&certificate)).unwrap();
    }));
    let mut verifier = Verifier::default();
    let published = Published { signer: signer("n1"), certificate: Some(&certificate), key, value: &values[0] };
    verifier.check(&trust, &published, 2, clock::now()).unwrap();
    let cached_us = median_us(Box::new(|_| {
        verifier.check(&trust, &published, 2, clock::now()).unwrap();
    }));
    eprintln!(
        "signed reports (median of 9 x 200, debug={}): sign {sign_us:.1} us, check a signature {signature_us:.1} us, \
         check a certificate {certificate_us:.1} us, a remembered check {cached_us:.2} us",
        cfg!(debug_assertions)
    );
}
