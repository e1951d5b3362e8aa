//! Watches nftables' commit notifications. The kernel multicasts a NEWGEN message from its
//! commit path, at the moment a transaction takes effect; a batch that deletes anything is
//! acknowledged only after an RCU grace period that follows (10-20 ms on the test machines).
//! The benchmarks use this to report when packets start seeing a change, next to when the
//! kernel acknowledged it.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// NFNLGRP_NFTABLES
const GROUP: libc::c_int = 7;
/// NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_NEWGEN
const NEWGEN: u16 = (10 << 8) | 15;

/// Timestamps of NEWGEN notifications in the network namespace it was started in. While it
/// exists the kernel builds a notification for every object a transaction touches, which
/// slows large transactions down; drop it before timing those.
pub struct Commits {
    seen: Arc<Mutex<Vec<Instant>>>,
    stop: Arc<AtomicBool>,
}

impl Drop for Commits {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Commits {
    /// Subscribes in the calling thread's network namespace; a thread reads the socket.
    pub fn listen() -> io::Result<Commits> {
        let fd = subscribe()?;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (out, done) = (seen.clone(), stop.clone());
        std::thread::spawn(move || read_loop(fd, out, done));
        Ok(Commits { seen, stop })
    }

    /// The first commit at or after `since`, waiting up to `wait` for the listener to
    /// catch up (the notification is queued before the acknowledgement, but read by
    /// another thread). Older timestamps are dropped.
    pub fn first_since(&self, since: Instant, wait: Duration) -> Option<Instant> {
        let deadline = Instant::now() + wait;
        loop {
            if let Ok(mut seen) = self.seen.lock() {
                seen.retain(|t| *t >= since);
                if let Some(t) = seen.first().copied() {
                    return Some(t);
                }
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}

fn subscribe() -> io::Result<OwnedFd> {
    let fd = super::generation::netfilter_socket()?;
    let opt = |level, name, value: libc::c_int| {
        // SAFETY: the option value is a c_int that lives across the call.
        let r = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                level,
                name,
                &value as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    };
    // SAFETY: a zeroed sockaddr_nl with the family set asks for an automatic port id.
    let bound = unsafe {
        let mut addr: libc::sockaddr_nl = std::mem::zeroed();
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        libc::bind(
            fd.as_raw_fd(),
            &addr as *const libc::sockaddr_nl as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if bound < 0 {
        return Err(io::Error::last_os_error());
    }
    // A full sync notifies once per object; a small buffer would overflow (ENOBUFS).
    let _ = opt(libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, 64 << 20);
    opt(libc::SOL_NETLINK, libc::NETLINK_ADD_MEMBERSHIP, GROUP)?;
    Ok(fd)
}

/// Reads until `stop` is set; the descriptor closes (and the subscription ends) on return.
fn read_loop(fd: OwnedFd, seen: Arc<Mutex<Vec<Instant>>>, stop: Arc<AtomicBool>) {
    let mut buf = vec![0u8; 1 << 20];
    while !stop.load(Ordering::Relaxed) {
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        if unsafe { libc::poll(&mut pfd, 1, 50) } <= 0 {
            continue;
        }
        // SAFETY: buf is valid for buf.len() bytes.
        let n = unsafe {
            libc::recv(
                fd.as_raw_fd(),
                buf.as_mut_ptr() as *mut libc::c_void,
                buf.len(),
                0,
            )
        };
        let now = Instant::now();
        if n < 0 {
            match io::Error::last_os_error().raw_os_error() {
                // Overflowed after a flood of notifications: later ones still arrive.
                Some(libc::ENOBUFS) | Some(libc::EINTR) => continue,
                _ => return,
            }
        }
        let n = n as usize;
        let mut off = 0;
        while off + 16 <= n {
            let len =
                u32::from_ne_bytes([buf[off], buf[off + 1], buf[off + 2], buf[off + 3]]) as usize;
            let kind = u16::from_ne_bytes([buf[off + 4], buf[off + 5]]);
            if kind == NEWGEN {
                if let Ok(mut s) = seen.lock() {
                    s.push(now);
                }
            }
            if len < 16 {
                break;
            }
            off += (len + 3) & !3;
        }
    }
}
