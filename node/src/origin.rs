//! Origin proofs: a node signs every generation it accepts with the key of its TLS
//! certificate, and every node that stores a generation checks, from the generation alone, that
//! its origin made it (D73).
//!
//! A generation's id names its origin (`n3.7`), and nodes keep the first content they hear
//! under an id. Without a proof, any holder of a cluster certificate could write `n3.7` first
//! and make real n3's acknowledged `n3.7` vanish on the nodes that heard the forgery first.
//! With it, a generation is stored only if its [`OriginProof`] carries a certificate that
//! chained to the cluster CA when the generation was stamped, that is issued for the origin's
//! name, and whose key signed [`OriginProof::message`] (the cluster id, the id and the content
//! hash). So only the process holding the origin's key writes under its name, and a relay
//! (which forwards the proof unchanged) is as good as the first hop.
//!
//! The check depends on the generation and the node's configuration only (the CA bundle and
//! `unproven_through`), never on what the node received before, so every node of the same
//! configuration stores the same generations. Generations written before the cluster ran
//! format 6 carry no proof; `unproven_through` names them (see `docs/operations.md`).

use grapevine_proto::{ContentHash, GenId, Generation, OriginProof, VersionVector};
use rustls::pki_types::{CertificateDer, UnixTime};

use crate::gossip::signed::{self, Refusal};
use crate::tls::NodeIdentity;
use crate::transport::Transport;

/// Which generations may come without an origin proof: those written before the cluster
/// upgraded to format 6.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Unproven {
    /// None (the default): every generation must be proven.
    #[default]
    None,
    /// Those with `seq` up to their origin's entry: the log as it was at the upgrade.
    Through(VersionVector),
    /// Every one, as before format 6 (during a rolling upgrade from format 5).
    All,
}

impl Unproven {
    fn allows(&self, id: &GenId) -> bool {
        match self {
            Unproven::None => false,
            Unproven::Through(vector) => vector.covers(id),
            Unproven::All => true,
        }
    }
}

/// What a node needs to prove its generations and check its peers'.
#[derive(Clone)]
pub struct Origins {
    pub transport: Transport,
    pub cluster: String,
    pub unproven: Unproven,
}

impl Origins {
    /// The proof of a generation this node accepts, signed with its current TLS key; `None`
    /// only if the key cannot sign (every key `NodeTls` loads can).
    pub fn prove(&self, generation: &Generation) -> Option<OriginProof> {
        prove(&self.transport.identity(), &self.cluster, generation.id(), &generation.hash)
    }

    /// Whether `generation`'s origin proves it made it, against the CA bundle of the latest
    /// load.
    pub fn check(&self, generation: &Generation) -> Result<(), Refusal> {
        check(&self.transport.trust(), &self.cluster, &self.unproven, generation)
    }
}

/// The origin proof of generation `id` with content `hash`, by `identity`.
pub fn prove(identity: &NodeIdentity, cluster: &str, id: &GenId, hash: &ContentHash) -> Option<OriginProof> {
    let signature = signed::sign_bytes(identity, &OriginProof::message(cluster, id, hash))?;
    Some(OriginProof { certificate: identity.certificate.to_vec(), signature })
}

/// Checks `generation`'s origin proof against `trust`: the certificate chained to it when the
/// generation was stamped (so a certificate that expired or was renewed since still proves
/// what it signed), names the origin, and signed the generation's id and hash.
pub fn check(
    trust: &crate::tls::PeerTrust,
    cluster: &str,
    unproven: &Unproven,
    generation: &Generation,
) -> Result<(), Refusal> {
    let id = generation.id();
    let Some(proof) = &generation.origin else {
        return if unproven.allows(id) { Ok(()) } else { Err(Refusal::Unsigned) };
    };
    let certificate = CertificateDer::from(proof.certificate.as_slice());
    let stamped = UnixTime::since_unix_epoch(std::time::Duration::from_millis(generation.body.hlc.wall_ms));
    signed::check_certificate_der(trust, id.origin.as_str(), &certificate, stamped)?;
    let message = OriginProof::message(cluster, id, &generation.hash);
    signed::check_signature_bytes(&certificate, &message, &proof.signature)
}

#[cfg(test)]
mod tests;
