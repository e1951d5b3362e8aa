//! Minimal Linux FFI used by the harness (std only, no extra crates).
//!
//! std already links libc, so declaring the few symbols we need is enough.
//! Constants are the Linux (x86_64 / aarch64, asm-generic) values.

use std::fs::File;
use std::io;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::raw::{c_int, c_void};
use std::time::Duration;

const CLONE_NEWNET: c_int = 0x4000_0000;
const AF_INET: c_int = 2;
const AF_INET6: c_int = 10;
const SOCK_STREAM: c_int = 1;
const SOCK_CLOEXEC: c_int = 0o2_000_000;
const SOL_SOCKET: c_int = 1;
const SO_REUSEADDR: c_int = 2;
const EINPROGRESS: i32 = 115;
const EAGAIN: i32 = 11;

extern "C" {
    fn setns(fd: c_int, nstype: c_int) -> c_int;
    fn geteuid() -> u32;
    fn socket(domain: c_int, ty: c_int, protocol: c_int) -> c_int;
    fn bind(fd: c_int, addr: *const c_void, len: u32) -> c_int;
    fn connect(fd: c_int, addr: *const c_void, len: u32) -> c_int;
    fn setsockopt(fd: c_int, level: c_int, name: c_int, val: *const c_void, len: u32) -> c_int;
}

pub fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { geteuid() }
}

/// Path of the bind-mounted network namespace file created by `ip netns add`.
pub fn netns_path(name: &str) -> String {
    format!("/var/run/netns/{name}")
}

/// Moves the *calling thread* into the named network namespace and verifies
/// that it really arrived there (so a silent failure can never make the caller
/// operate on the root namespace).
pub fn enter_netns(name: &str) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let path = netns_path(name);
    let f = File::open(&path)?;
    // SAFETY: valid fd owned by `f` for the duration of the call.
    let rc = unsafe { setns(f.as_raw_fd(), CLONE_NEWNET) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let want = f.metadata()?;
    let have = std::fs::metadata("/proc/thread-self/ns/net")?;
    if want.dev() != have.dev() || want.ino() != have.ino() {
        return Err(io::Error::other(format!(
            "setns into {path} did not take effect for this thread"
        )));
    }
    Ok(())
}

#[repr(C)]
struct SockaddrIn {
    family: u16,
    port: u16,
    addr: [u8; 4],
    zero: [u8; 8],
}

#[repr(C)]
struct SockaddrIn6 {
    family: u16,
    port: u16,
    flowinfo: u32,
    addr: [u8; 16],
    scope_id: u32,
}

enum RawAddr {
    V4(SockaddrIn),
    V6(SockaddrIn6),
}

impl RawAddr {
    fn new(a: &SocketAddr) -> RawAddr {
        match a {
            SocketAddr::V4(a) => RawAddr::V4(SockaddrIn {
                family: AF_INET as u16,
                port: a.port().to_be(),
                addr: a.ip().octets(),
                zero: [0; 8],
            }),
            SocketAddr::V6(a) => RawAddr::V6(SockaddrIn6 {
                family: AF_INET6 as u16,
                port: a.port().to_be(),
                flowinfo: a.flowinfo(),
                addr: a.ip().octets(),
                scope_id: a.scope_id(),
            }),
        }
    }
    fn as_ptr(&self) -> (*const c_void, u32) {
        match self {
            RawAddr::V4(s) => (
                s as *const SockaddrIn as *const c_void,
                std::mem::size_of::<SockaddrIn>() as u32,
            ),
            RawAddr::V6(s) => (
                s as *const SockaddrIn6 as *const c_void,
                std::mem::size_of::<SockaddrIn6>() as u32,
            ),
        }
    }
}

fn cvt(rc: c_int) -> io::Result<c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// TCP connect from an explicit local address (std cannot bind before
/// connect). Connect timeout is implemented with SO_SNDTIMEO, which Linux
/// honours for blocking connect(2) (expiry yields EINPROGRESS -> TimedOut).
pub fn tcp_connect_from(
    src: SocketAddr,
    dst: SocketAddr,
    timeout: Duration,
) -> io::Result<TcpStream> {
    if src.is_ipv4() != dst.is_ipv4() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("address family mismatch: {src} -> {dst}"),
        ));
    }
    let domain = if dst.is_ipv4() { AF_INET } else { AF_INET6 };
    // SAFETY: plain syscalls on an fd we own; pointers reference live locals.
    unsafe {
        let fd: RawFd = cvt(socket(domain, SOCK_STREAM | SOCK_CLOEXEC, 0))?;
        let owned = OwnedFd::from_raw_fd(fd);
        let one: c_int = 1;
        cvt(setsockopt(
            fd,
            SOL_SOCKET,
            SO_REUSEADDR,
            &one as *const c_int as *const c_void,
            std::mem::size_of::<c_int>() as u32,
        ))?;
        let s = RawAddr::new(&src);
        let (p, l) = s.as_ptr();
        cvt(bind(fd, p, l))?;
        let stream = TcpStream::from(owned);
        stream.set_write_timeout(Some(timeout.max(Duration::from_millis(1))))?;
        let d = RawAddr::new(&dst);
        let (p, l) = d.as_ptr();
        if connect(fd, p, l) < 0 {
            let e = io::Error::last_os_error();
            return Err(match e.raw_os_error() {
                Some(EINPROGRESS) | Some(EAGAIN) => io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("connect {src} -> {dst} timed out"),
                ),
                _ => e,
            });
        }
        stream.set_write_timeout(None)?;
        Ok(stream)
    }
}
