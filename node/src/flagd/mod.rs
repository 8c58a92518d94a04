//! flagd's gRPC services, so that every flagd provider works against a node unchanged.

/// The types and service traits generated from flagd's schemas (`node/proto/`, `build.rs`).
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod schema {
    /// `flagd.evaluation.v1`: the RPC providers' evaluation service.
    pub mod evaluation {
        tonic::include_proto!("flagd.evaluation.v1");
    }
    /// `flagd.sync.v1`: the in-process providers' sync service.
    pub mod sync {
        tonic::include_proto!("flagd.sync.v1");
    }
}
