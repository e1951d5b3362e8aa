//! The netfilter netlink socket: dumps of conntrack entries and their deletion.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::model::Family;

use super::*;

pub(super) struct Socket {
    pub(super) fd: OwnedFd,
    pub(super) seq: u32,
    pub(super) buf: Vec<u8>,
}

impl Socket {
    pub(super) fn open() -> Result<Socket, ConntrackError> {
        // SAFETY: plain syscall; the result is checked before use.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                NETLINK_NETFILTER,
            )
        };
        if fd < 0 {
            return Err(ConntrackError::Socket(io::Error::last_os_error()));
        }
        // SAFETY: `fd` is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: an all-zero sockaddr_nl is valid.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: `addr` is a valid sockaddr_nl of the given length.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(ConntrackError::Socket(io::Error::last_os_error()));
        }
        // Never block forever on a kernel that does not answer.
        let tv = libc::timeval {
            tv_sec: 30,
            tv_usec: 0,
        };
        // SAFETY: `tv` is a valid timeval of the given length.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(ConntrackError::Socket(io::Error::last_os_error()));
        }
        let seq = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as u32)
            .unwrap_or(1);
        Ok(Socket {
            fd,
            seq,
            buf: vec![0; RECV_BUF],
        })
    }

    pub(super) fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    pub(super) fn send(&self, msg: &[u8]) -> Result<(), ConntrackError> {
        // SAFETY: an all-zero sockaddr_nl is valid (pid 0: the kernel).
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        loop {
            // SAFETY: `msg` and `addr` are valid for the lengths given.
            let n = unsafe {
                libc::sendto(
                    self.fd.as_raw_fd(),
                    msg.as_ptr().cast(),
                    msg.len(),
                    0,
                    (&addr as *const libc::sockaddr_nl).cast(),
                    std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
                )
            };
            if n >= 0 {
                return if n as usize == msg.len() {
                    Ok(())
                } else {
                    Err(ConntrackError::Send(io::Error::other("short send")))
                };
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(ConntrackError::Send(e));
            }
        }
    }

    /// Receives one datagram into `self.buf`, returning its length.
    pub(super) fn recv(&mut self) -> Result<usize, ConntrackError> {
        loop {
            // SAFETY: `buf` is valid for writes of its length.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    self.buf.as_mut_ptr().cast(),
                    self.buf.len(),
                    libc::MSG_TRUNC,
                )
            };
            if n >= 0 {
                let n = n as usize;
                if n > self.buf.len() {
                    return Err(ConntrackError::Recv(io::Error::other(format!(
                        "netlink message of {n} bytes truncated"
                    ))));
                }
                return Ok(n);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(ConntrackError::Recv(e));
            }
        }
    }

    /// Every entry of `family` that any of `filters` matches.
    pub(super) fn dump_matching(
        &mut self,
        family: Family,
        filters: &[&FlowFilter],
    ) -> Result<Vec<Entry>, ConntrackError> {
        let seq = self.next_seq();
        self.send(&request(
            IPCTNL_MSG_CT_GET,
            NLM_F_DUMP,
            seq,
            af(family),
            &[],
        ))?;
        let mut out = Vec::new();
        loop {
            let n = self.recv()?;
            for m in messages(&self.buf[..n]) {
                let (ty, _flags, mseq, payload) = m?;
                if mseq != seq {
                    continue;
                }
                match ty {
                    NLMSG_DONE => {
                        // The payload may carry a negative errno when the dump failed.
                        let code = error_code(payload).unwrap_or(0);
                        return if code > 0 {
                            Err(ConntrackError::Dump {
                                family,
                                source: io::Error::from_raw_os_error(code),
                            })
                        } else {
                            Ok(out)
                        };
                    }
                    NLMSG_ERROR => {
                        let code = error_code(payload)?;
                        if code != 0 {
                            return Err(ConntrackError::Dump {
                                family,
                                source: io::Error::from_raw_os_error(code),
                            });
                        }
                    }
                    _ if ty >> 8 == NFNL_SUBSYS_CTNETLINK => {
                        if let Some(e) = parse_entry(payload)? {
                            if filters.iter().any(|f| f.matches(&e)) {
                                out.push(e);
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    /// Deletes one entry: `Ok(Ok(true))` when deleted, `Ok(Ok(false))` when it was already
    /// gone, `Ok(Err(_))` when the kernel refused.
    pub(super) fn delete(&mut self, e: &Entry) -> Result<io::Result<bool>, ConntrackError> {
        let seq = self.next_seq();
        self.send(&delete_request(seq, e))?;
        loop {
            let n = self.recv()?;
            for m in messages(&self.buf[..n]) {
                let (ty, _, mseq, payload) = m?;
                if mseq != seq || ty != NLMSG_ERROR {
                    continue;
                }
                return Ok(match error_code(payload)? {
                    0 => Ok(true),
                    libc::ENOENT => Ok(false),
                    code => Err(io::Error::from_raw_os_error(code)),
                });
            }
        }
    }
}

pub(super) fn delete_entries(
    sock: &mut Socket,
    entries: &[Entry],
) -> Result<usize, ConntrackError> {
    let mut deleted = 0;
    let mut failed = 0;
    let mut first = None;
    for e in entries {
        match sock.delete(e)? {
            Ok(true) => deleted += 1,
            Ok(false) => {}
            Err(err) => {
                failed += 1;
                first.get_or_insert(err);
            }
        }
    }
    match first {
        None => Ok(deleted),
        Some(first) => Err(ConntrackError::Delete {
            deleted,
            failed,
            first,
        }),
    }
}
