//! The errors of building a [`ReplicaSet`](crate::ReplicaSet) from a list of addresses.

/// Why a [`ReplicaSet`](crate::ReplicaSet) could not be built. Failures of calls are
/// [`tonic::Status`]es, not this type.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    /// An address is not `http://host:port` or `host:port`.
    #[error("{stage}: bad replica address {address:?}: {reason}")]
    BadAddress {
        /// The stage label the set was built for.
        stage: String,
        /// The address as given.
        address: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The list of addresses was empty (after trimming).
    #[error("{stage}: no replica address given")]
    NoAddress {
        /// The stage label the set was built for.
        stage: String,
    },
    /// A DNS name could not be resolved (the lookup failed).
    #[error("{stage}: cannot resolve replica address {address:?}: {source}")]
    Unresolved {
        /// The stage label the set was built for.
        stage: String,
        /// The address whose host name failed to resolve.
        address: String,
        /// The resolver's error.
        #[source]
        source: std::io::Error,
    },
    /// A DNS name resolved, but to no address at all.
    #[error("{stage}: replica address {address:?} resolves to no IP address")]
    ResolvesToNothing {
        /// The stage label the set was built for.
        stage: String,
        /// The address whose host name resolved to nothing.
        address: String,
    },
}
