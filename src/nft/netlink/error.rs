//! Errors of the netlink layer: an IR object that cannot be encoded, or a kernel that
//! refused a batch (naming the message it refused).

use rustables::error::QueryError;

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// The IR cannot be expressed (a bug in whoever built it), e.g. an IPv6 address in an
    /// `ip` table or a key longer than the registers.
    #[error("cannot encode {object}: {reason}")]
    Encode { object: String, reason: String },
    /// An element operation names a set that neither the transaction nor the given
    /// declarations declare, so its key and data types are unknown.
    #[error("{object}: set {set} is not declared")]
    UnknownSet { object: String, set: String },
    /// The kernel refused message `seq` of the batch; nothing of the batch was applied.
    #[error("the kernel refused message {seq} ({object}): {}", std::io::Error::from_raw_os_error(*errno))]
    Kernel {
        seq: u32,
        errno: i32,
        object: String,
    },
    /// Every dump of a set's elements repeated some key (see `read_elements`).
    #[error(
        "the kernel's element dump of set {set} stayed inconsistent after {attempts} attempts"
    )]
    InconsistentDump { set: String, attempts: u32 },
    /// What the kernel holds is not something our encoders write (a rule shape, a set type,
    /// a chain policy...), so it cannot be read back as IR without guessing.
    #[error("cannot read back {object}: {reason}")]
    Unreadable { object: String, reason: String },
    /// Talking to netlink failed otherwise (socket, decoding a dump, ...).
    #[error("netlink: {0}")]
    Query(#[from] QueryError),
}

pub(super) fn encode_err(object: &str, reason: impl Into<String>) -> NetlinkError {
    NetlinkError::Encode {
        object: object.to_string(),
        reason: reason.into(),
    }
}
