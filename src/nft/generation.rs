//! The nftables ruleset generation: a counter the kernel bumps on every committed
//! transaction, in the calling thread's network namespace. Reading it is one small netlink
//! request, so the agent can tell cheaply whether anything (ours or another program's)
//! changed nftables since its own last commit, and only then compare its tables in full.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_GETGEN
const GETGEN: u16 = (10 << 8) | 16;
/// NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_NEWGEN (the reply)
const NEWGEN: u16 = (10 << 8) | 15;
const NFTA_GEN_ID: u16 = 1;
const NLMSG_ERROR: u16 = 2;

/// The current generation id.
pub fn generation() -> io::Result<u32> {
    let fd = netfilter_socket()?;
    let req = request(1);
    // SAFETY: `req` is valid for its length; the kernel is the destination (zeroed address).
    let sent = unsafe {
        let mut addr: libc::sockaddr_nl = std::mem::zeroed();
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        libc::sendto(
            fd.as_raw_fd(),
            req.as_ptr() as *const libc::c_void,
            req.len(),
            0,
            &addr as *const libc::sockaddr_nl as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = vec![0u8; 8192];
    // SAFETY: buf is valid for buf.len() bytes.
    let n = unsafe {
        libc::recv(
            fd.as_raw_fd(),
            buf.as_mut_ptr() as *mut libc::c_void,
            buf.len(),
            0,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    parse_reply(&buf[..n as usize])
}

/// A netfilter netlink socket (nftables requests and notifications).
pub(super) fn netfilter_socket() -> io::Result<OwnedFd> {
    // SAFETY: socket(2) returns a new descriptor or -1; ownership passes to OwnedFd.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_NETFILTER,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a valid descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A GETGEN request: the netlink header, then nfgenmsg (family unspecified, version 0).
fn request(seq: u32) -> Vec<u8> {
    let mut m = Vec::with_capacity(20);
    m.extend_from_slice(&20u32.to_ne_bytes());
    m.extend_from_slice(&GETGEN.to_ne_bytes());
    m.extend_from_slice(&(libc::NLM_F_REQUEST as u16).to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(&[libc::AF_UNSPEC as u8, 0, 0, 0]);
    m
}

/// The generation id in a NEWGEN reply (big-endian `NFTA_GEN_ID`).
fn parse_reply(msg: &[u8]) -> io::Result<u32> {
    let bad = |why: &str| io::Error::new(io::ErrorKind::InvalidData, why.to_string());
    if msg.len() < 20 {
        return Err(bad("short GETGEN reply"));
    }
    let ty = u16::from_ne_bytes([msg[4], msg[5]]);
    if ty == NLMSG_ERROR {
        let code = i32::from_ne_bytes([msg[16], msg[17], msg[18], msg[19]]);
        return Err(io::Error::from_raw_os_error(-code));
    }
    if ty != NEWGEN {
        return Err(bad("unexpected reply to GETGEN"));
    }
    let len = (u32::from_ne_bytes([msg[0], msg[1], msg[2], msg[3]]) as usize).min(msg.len());
    let mut attrs = &msg[20..len];
    while attrs.len() >= 4 {
        let alen = u16::from_ne_bytes([attrs[0], attrs[1]]) as usize;
        let aty = u16::from_ne_bytes([attrs[2], attrs[3]]) & 0x3fff;
        if alen < 4 || alen > attrs.len() {
            break;
        }
        if aty == NFTA_GEN_ID && alen >= 8 {
            return Ok(u32::from_be_bytes([attrs[4], attrs[5], attrs[6], attrs[7]]));
        }
        attrs = &attrs[(alen + 3) & !3..];
    }
    Err(bad("GETGEN reply without a generation id"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_newgen_reply_gives_its_id() {
        let mut m = request(7);
        m[4..6].copy_from_slice(&NEWGEN.to_ne_bytes());
        // NFTA_GEN_ID = 0x01020304, then NFTA_GEN_PROC_PID (ignored).
        m.extend_from_slice(&8u16.to_ne_bytes());
        m.extend_from_slice(&NFTA_GEN_ID.to_ne_bytes());
        m.extend_from_slice(&[1, 2, 3, 4]);
        m.extend_from_slice(&8u16.to_ne_bytes());
        m.extend_from_slice(&2u16.to_ne_bytes());
        m.extend_from_slice(&[0, 0, 0, 9]);
        let len = m.len() as u32;
        m[0..4].copy_from_slice(&len.to_ne_bytes());
        assert_eq!(parse_reply(&m).unwrap(), 0x0102_0304);
    }

    #[test]
    fn an_error_reply_is_an_error() {
        let mut m = request(7);
        m[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        m[16..20].copy_from_slice(&(-libc::EPERM).to_ne_bytes());
        assert_eq!(
            parse_reply(&m).unwrap_err().raw_os_error(),
            Some(libc::EPERM)
        );
        assert!(parse_reply(&m[..10]).is_err());
    }

    /// In a namespace of its own: a commit bumps the generation.
    #[test]
    fn a_commit_bumps_the_generation() {
        if !crate::nft::testns::kernel_tests_possible() {
            return;
        }
        let got = crate::nft::testns::in_netns(|ns| {
            let before = generation().expect("GETGEN");
            ns.nft(&["add", "table", "ip", "generation-test"]);
            let after = generation().expect("GETGEN");
            (before, after)
        });
        if let Some((before, after)) = got {
            assert!(after > before, "{before} -> {after}");
        }
    }
}
