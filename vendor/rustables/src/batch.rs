use std::os::fd::AsRawFd;

use crate::error::QueryError;
use crate::nlmsg::{NfNetlinkObject, NfNetlinkWriter};
use crate::sys::{NFNL_SUBSYS_NFTABLES, NLM_F_ACK};
use crate::{MsgType, ProtocolFamily};

use nix::sys::socket::{
    self, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType,
};

/// A batch of netfilter messages to be performed in one atomic operation.
pub struct Batch {
    #[allow(clippy::box_collection)]
    buf: Box<Vec<u8>>,
    // the 'static lifetime here is a cheat, as the writer can only be used as long
    // as `self.buf` exists. This is why this member must never be exposed directly to
    // the rest of the crate (let alone publicly).
    writer: NfNetlinkWriter<'static>,
    seq: u32,
}

#[allow(clippy::new_without_default)]
impl Batch {
    /// Creates a new nftnl batch with the [default page size].
    ///
    /// [default page size]: fn.default_batch_page_size.html
    pub fn new() -> Self {
        Self::with_capacity(0)
    }

    /// Like [`Batch::new`], with room for about `bytes` of messages up front. A batch of
    /// tens of megabytes otherwise grows by repeated reallocation and copying.
    pub fn with_capacity(bytes: usize) -> Self {
        // TODO: use a pinned Box ?
        let size = (default_batch_page_size() as usize).max(bytes);
        let mut buf = Box::new(Vec::with_capacity(size));
        // Safe because we hold onto the buffer for as long as `writer` exists
        let mut writer =
            NfNetlinkWriter::new(unsafe { &mut *(Box::as_mut(&mut buf) as *mut Vec<u8>) });
        let seq = 0;
        writer.write_header(
            libc::NFNL_MSG_BATCH_BEGIN as u16,
            ProtocolFamily::Unspec,
            NLM_F_ACK as u16,
            seq,
            Some(libc::NFNL_SUBSYS_NFTABLES as u16),
        );
        writer.finalize_writing_object();
        Batch {
            buf,
            writer,
            seq: seq + 1,
        }
    }

    /// Adds the given message to this batch and returns its sequence number: the first message
    /// gets 1, the next 2, ... A kernel error for this message is reported by [`Batch::send`]
    /// with this number (see [`QueryError::kernel_error`]).
    pub fn add<T: NfNetlinkObject>(&mut self, msg: &T, msg_type: MsgType) -> u32 {
        trace!("Writing NlMsg with seq {} to batch", self.seq);
        let seq = self.seq;
        msg.add_or_remove(&mut self.writer, msg_type, seq);
        self.seq += 1;
        seq
    }

    /// The sequence number the next added message will get.
    pub fn next_seq(&self) -> u32 {
        self.seq
    }

    /// Number of messages added so far (not counting the batch begin/end markers).
    pub fn len(&self) -> usize {
        (self.seq - 1) as usize
    }

    /// True when no message was added.
    pub fn is_empty(&self) -> bool {
        self.seq == 1
    }

    /// Current size of the encoded batch in bytes.
    pub fn size_bytes(&self) -> usize {
        self.buf.len()
    }

    /// Adds all the messages in the given iterator to this batch.
    pub fn add_iter<T: NfNetlinkObject, I: Iterator<Item = T>>(
        &mut self,
        msg_iter: I,
        msg_type: MsgType,
    ) {
        for msg in msg_iter {
            self.add(&msg, msg_type);
        }
    }

    /// Adds the final end message to the batch and returns a [`FinalizedBatch`] that can be used
    /// to send the messages to netfilter.
    ///
    /// Return None if there is no object in the batch (this could block forever).
    ///
    /// [`FinalizedBatch`]: struct.FinalizedBatch.html
    pub fn finalize(mut self) -> Vec<u8> {
        self.writer.write_header(
            libc::NFNL_MSG_BATCH_END as u16,
            ProtocolFamily::Unspec,
            0,
            self.seq,
            Some(NFNL_SUBSYS_NFTABLES as u16),
        );
        self.writer.finalize_writing_object();
        *self.buf
    }

    /// Sends the batch in one datagram and waits for the kernel's verdict: the batch is applied
    /// atomically, or not at all.
    ///
    /// Works for batches of any size (tens of MB): `SO_SNDBUF`/`SO_RCVBUF` are sized for the
    /// batch (with `SO_SNDBUFFORCE`/`SO_RCVBUFFORCE`, which need `CAP_NET_ADMIN`, as does
    /// writing nftables; falling back to the unprivileged variants), only the last message asks
    /// for an ACK (errors are always reported), and error messages carry only headers
    /// (`NETLINK_CAP_ACK`).
    ///
    /// On a kernel error, returns `QueryError::NetlinkError` of the first failing message; use
    /// [`QueryError::kernel_error`] to get its (sequence number, errno) and map it back to the
    /// value returned by [`Batch::add`].
    pub fn send(self) -> Result<(), QueryError> {
        use crate::query::recv_and_process;

        if self.is_empty() {
            return Ok(());
        }
        let nb_msgs = self.len();

        let sock = socket::socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::empty(),
            SockProtocol::NetlinkNetFilter,
        )
        .map_err(QueryError::NetlinkOpenError)?;

        let max_seq = self.seq - 1;

        let addr = NetlinkAddr::new(0, 0);
        // while this bind() is not strictly necessary, strace have trouble decoding the messages
        // if we don't
        socket::bind(sock.as_raw_fd(), &addr).map_err(|_| QueryError::BindFailed)?;

        let mut to_send = self.finalize();
        let fd = sock.as_raw_fd();
        // The whole batch must fit in the send buffer (else EMSGSIZE, nothing applied); every
        // reply (ACK or error) costs about 1 KiB of receive buffer accounting (truesize), and an
        // overflow would hide the outcome (ENOBUFS).
        let sndbuf = to_send.len().saturating_add(64 * 1024);
        let rcvbuf = nb_msgs.saturating_mul(1024).saturating_add(1 << 20);
        set_buffer_size(fd, libc::SO_SNDBUFFORCE, libc::SO_SNDBUF, sndbuf);
        set_buffer_size(fd, libc::SO_RCVBUFFORCE, libc::SO_RCVBUF, rcvbuf);
        // only echo the headers of failing messages, not their whole payload
        let one: libc::c_int = 1;
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_NETLINK,
                libc::NETLINK_CAP_ACK,
                &one as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        keep_only_last_ack(&mut to_send);

        let mut sent = 0;
        while sent != to_send.len() {
            sent += socket::send(sock.as_raw_fd(), &to_send[sent..], MsgFlags::empty())
                .map_err(QueryError::NetlinkSendError)?;
        }

        recv_and_process(sock.as_raw_fd(), Some(max_seq), None, &mut ())
    }
}

fn set_buffer_size(fd: std::os::fd::RawFd, force_opt: i32, opt: i32, size: usize) {
    let v = size.min(i32::MAX as usize) as libc::c_int;
    let p = &v as *const libc::c_int as *const libc::c_void;
    let len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    unsafe {
        if libc::setsockopt(fd, libc::SOL_SOCKET, force_opt, p, len) != 0 {
            // not privileged: the kernel caps this at net.core.{w,r}mem_max
            libc::setsockopt(fd, libc::SOL_SOCKET, opt, p, len);
        }
    }
}

/// Clears `NLM_F_ACK` on every object message of a finalized batch but the last one (the one
/// before `BATCH_END`): one ACK per message would overflow the receive buffer of a large batch.
/// Errors are reported regardless of the flag.
pub(crate) fn keep_only_last_ack(buf: &mut [u8]) {
    let hdr_len = std::mem::size_of::<crate::sys::nlmsghdr>();
    let mut offsets = Vec::new();
    let mut o = 0;
    while o + hdr_len <= buf.len() {
        let len = u32::from_ne_bytes(buf[o..o + 4].try_into().unwrap()) as usize;
        if len < hdr_len {
            break;
        }
        offsets.push(o);
        o += crate::nlmsg::pad_netlink_object_with_variable_size(len);
    }
    // [BATCH_BEGIN, msg 1, ..., msg N, BATCH_END]
    if offsets.len() < 3 {
        return;
    }
    for &m in &offsets[1..offsets.len() - 2] {
        let flags = u16::from_ne_bytes([buf[m + 6], buf[m + 7]]) & !(NLM_F_ACK as u16);
        buf[m + 6..m + 8].copy_from_slice(&flags.to_ne_bytes());
    }
}

/// Selected batch page is 256 Kbytes long to load ruleset of half a million rules without hitting
/// -EMSGSIZE due to large iovec.
pub fn default_batch_page_size() -> u32 {
    unsafe { libc::sysconf(libc::_SC_PAGESIZE) as u32 * 32 }
}
