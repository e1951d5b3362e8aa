//! A network namespace owned by the harness, plus servers/clients living in it.

use std::ffi::OsStr;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::sys;
use super::ToIp;

/// Prefix of every namespace the harness creates.
pub const NS_PREFIX: &str = "kntp-";

/// Handle to a network namespace created by the harness (`ip netns add`).
///
/// Cheap to clone. The namespace is deleted (servers stopped, processes
/// started in it killed) by [`Netns::destroy`], which runs automatically when
/// the owning [`super::Cluster`] or the last clone is dropped, including during
/// panic unwinding.
#[derive(Clone)]
pub struct Netns {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    role: String,
    destroyed: AtomicBool,
    servers: Mutex<Vec<Arc<ServerShared>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        destroy_inner(self);
    }
}

fn destroy_inner(inner: &Inner) {
    if inner.destroyed.swap(true, Ordering::SeqCst) {
        return;
    }
    // 1. stop and join server threads (they hold a reference to the netns).
    let servers = std::mem::take(&mut *inner.servers.lock().unwrap_or_else(|e| e.into_inner()));
    for s in servers {
        s.stop();
    }
    // 2. kill processes still running inside *our* namespace (started through
    //    `ip netns exec`), by pid; never ourselves.
    if let Ok(out) = Command::new("ip")
        .args(["netns", "pids", &inner.name])
        .stderr(Stdio::null())
        .output()
    {
        let me = std::process::id();
        for pid in String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|p| p.parse::<u32>().ok())
            .filter(|p| *p != me)
        {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .stderr(Stdio::null())
                .status();
        }
    }
    // 3. delete the namespace itself.
    match Command::new("ip")
        .args(["netns", "del", &inner.name])
        .output()
    {
        Ok(o) if o.status.success() => {}
        Ok(o) => eprintln!(
            "harness: failed to delete netns {}: {}",
            inner.name,
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => eprintln!("harness: failed to run ip netns del {}: {e}", inner.name),
    }
}

fn cmd_err(what: &str, out: &Output) -> io::Error {
    io::Error::other(format!(
        "{what} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim(),
        String::from_utf8_lossy(&out.stdout).trim()
    ))
}

impl Netns {
    /// Creates `name` (must start with `kntp-`), brings `lo` up and disables
    /// IPv6 DAD so addresses are usable immediately.
    pub fn create(name: &str, role: &str) -> io::Result<Netns> {
        assert!(
            name.starts_with(NS_PREFIX),
            "harness namespaces must be named {NS_PREFIX}*: {name}"
        );
        let out = Command::new("ip").args(["netns", "add", name]).output()?;
        if !out.status.success() {
            return Err(cmd_err(&format!("ip netns add {name}"), &out));
        }
        // From here on Drop cleans up, even if the rest fails.
        let ns = Netns {
            inner: Arc::new(Inner {
                name: name.to_string(),
                role: role.to_string(),
                destroyed: AtomicBool::new(false),
                servers: Mutex::new(Vec::new()),
            }),
        };
        ns.sysctls(&[
            ("net.ipv6.conf.all.accept_dad", "0"),
            ("net.ipv6.conf.default.accept_dad", "0"),
            ("net.ipv6.conf.all.accept_ra", "0"),
            ("net.ipv6.conf.default.accept_ra", "0"),
        ])?;
        ns.ip_batch(&["link set lo up"])?;
        Ok(ns)
    }

    /// Full namespace name, e.g. `kntp-1a2b3c4d-node`.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Short role name (`node`, `client`, pod name ...); servers report it.
    pub fn role(&self) -> &str {
        &self.inner.role
    }

    /// Stops servers, kills processes inside, deletes the namespace.
    /// Idempotent; called automatically on drop.
    pub fn destroy(&self) {
        destroy_inner(&self.inner);
    }

    fn check_alive(&self) -> io::Result<()> {
        if self.inner.destroyed.load(Ordering::SeqCst) {
            return Err(io::Error::other(format!(
                "netns {} already destroyed",
                self.name()
            )));
        }
        Ok(())
    }

    // ------------------------------------------------------------------
    // commands
    // ------------------------------------------------------------------

    /// `Command` for `ip netns exec <ns> <program>`; add args/stdio yourself.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", self.name()]).arg(program);
        c
    }

    /// Runs `ip netns exec <ns> args...` and returns its output (never panics
    /// on a non-zero exit; panics only if `ip` cannot be spawned).
    pub fn exec<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut it = args.into_iter();
        let prog = it.next().expect("exec needs a program");
        self.command(prog)
            .args(it)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("spawning ip netns exec in {}: {e}", self.name()))
    }

    /// Like [`exec`](Self::exec) but panics (with stderr) on failure and
    /// returns stdout.
    pub fn exec_ok<I, S>(&self, args: I) -> String
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<std::ffi::OsString> =
            args.into_iter().map(|a| a.as_ref().to_owned()).collect();
        let out = self.exec(&args);
        if !out.status.success() {
            panic!(
                "{}",
                cmd_err(&format!("in {}: {:?}", self.name(), args), &out)
            );
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `ip -n <ns> <args>` (args split on whitespace); panics on failure.
    /// Example: `ns.ip("route add 10.0.0.0/8 via 192.168.0.10")`.
    pub fn ip(&self, args: &str) -> String {
        let out = Command::new("ip")
            .args(["-n", self.name()])
            .args(args.split_whitespace())
            .output()
            .expect("spawn ip");
        if !out.status.success() {
            panic!(
                "{}",
                cmd_err(&format!("ip -n {} {args}", self.name()), &out)
            );
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs several `ip` commands (one per line, without the leading `ip`)
    /// in one `ip -n <ns> -batch -` process.
    pub fn ip_batch<S: AsRef<str>>(&self, cmds: &[S]) -> io::Result<()> {
        self.check_alive()?;
        let text: String = cmds.iter().map(|c| format!("{}\n", c.as_ref())).collect();
        let out = run_with_stdin(
            Command::new("ip").args(["-n", self.name(), "-batch", "-"]),
            &text,
        )?;
        if !out.status.success() {
            return Err(cmd_err(
                &format!("ip -n {} -batch:\n{text}", self.name()),
                &out,
            ));
        }
        Ok(())
    }

    /// Writes a sysctl inside the namespace (`net.ipv4.ip_forward` style key).
    pub fn sysctl(&self, key: &str, value: &str) -> io::Result<()> {
        self.sysctls(&[(key, value)])
    }

    /// Writes several sysctls inside the namespace.
    pub fn sysctls(&self, kv: &[(&str, &str)]) -> io::Result<()> {
        self.check_alive()?;
        let kv: Vec<(String, String)> = kv
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.run_in(move || {
            for (k, v) in kv {
                assert!(
                    k.starts_with("net."),
                    "only net.* sysctls are per-netns: {k}"
                );
                let path = format!("/proc/sys/{}", k.replace('.', "/"));
                std::fs::write(&path, format!("{v}\n"))
                    .map_err(|e| io::Error::new(e.kind(), format!("write {path}: {e}")))?;
            }
            Ok(())
        })
    }

    /// Runs `f` on a fresh thread that has entered this network namespace
    /// (via setns) and returns its result. Sockets created inside `f` live in
    /// the namespace. Panics in `f` propagate.
    pub fn run_in<R, F>(&self, f: F) -> R
    where
        R: Send,
        F: FnOnce() -> R + Send,
    {
        let name = self.name().to_string();
        std::thread::scope(|s| {
            let h = s.spawn(move || {
                sys::enter_netns(&name).unwrap_or_else(|e| panic!("entering netns {name}: {e}"));
                f()
            });
            match h.join() {
                Ok(r) => r,
                Err(p) => std::panic::resume_unwind(p),
            }
        })
    }

    /// Starts a process inside the namespace; it is killed when the returned
    /// guard is dropped (and, as a safety net, when the namespace is destroyed).
    pub fn spawn_process(&self, mut cmd: Command) -> io::Result<NsProcess> {
        self.check_alive()?;
        Ok(NsProcess {
            child: Some(cmd.spawn()?),
        })
    }

    // ------------------------------------------------------------------
    // nftables
    // ------------------------------------------------------------------

    /// Applies an nft ruleset with `nft -f -` inside the namespace.
    pub fn nft_apply(&self, ruleset: &str) -> io::Result<()> {
        self.check_alive()?;
        let out = run_with_stdin(
            Command::new("ip").args(["netns", "exec", self.name(), "nft", "-f", "-"]),
            ruleset,
        )?;
        if !out.status.success() {
            return Err(cmd_err(&format!("nft -f - in {}", self.name()), &out));
        }
        Ok(())
    }

    /// Applies a ruleset given either as a path to an existing file or as the
    /// ruleset text itself.
    pub fn nft_apply_file(&self, path_or_text: impl AsRef<str>) -> io::Result<()> {
        let s = path_or_text.as_ref();
        if !s.contains('\n') && !s.contains('{') && std::path::Path::new(s).is_file() {
            self.nft_apply(&std::fs::read_to_string(s)?)
        } else {
            self.nft_apply(s)
        }
    }

    /// Runs `nft <args>` inside the namespace.
    pub fn nft<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut v: Vec<std::ffi::OsString> = vec!["nft".into()];
        v.extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self.exec(v)
    }

    /// Fault injection: another program takes `table <family> <name>` with nft's `owner`
    /// flag, so the kernel refuses (EPERM) every batch of anyone else that touches it,
    /// until the returned process is dropped (the owner's socket closes and the kernel
    /// removes the table). Fails if the table already exists (the kernel cannot hand an
    /// existing table a new owner).
    pub fn hold_owned_table(&self, family: &str, name: &str) -> io::Result<NsProcess> {
        let mut cmd = self.command("nft");
        cmd.arg("-i")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut holder = self.spawn_process(cmd)?;
        {
            let stdin = holder.child().stdin.as_mut().expect("piped stdin");
            writeln!(stdin, "add table {family} {name} {{ flags owner; }}")?;
            stdin.flush()?;
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if self.nft(["list", "table", family, name]).status.success() {
                return Ok(holder);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(io::Error::other(format!(
            "nft -i in {} did not create an owned table {family} {name}",
            self.name()
        )))
    }

    /// `nft list table <family> <name>`; panics if it fails (e.g. no table).
    pub fn nft_list_table(&self, family: &str, name: &str) -> String {
        self.exec_ok(["nft", "list", "table", family, name])
    }

    /// `nft list ruleset` inside the namespace.
    pub fn nft_list_ruleset(&self) -> String {
        self.exec_ok(["nft", "list", "ruleset"])
    }

    // ------------------------------------------------------------------
    // servers
    // ------------------------------------------------------------------

    /// TCP server bound to `ip:port` inside the namespace. Every accepted
    /// connection immediately gets `"<role> <peer-ip:port> <local-ip:port>\n"`
    /// and is closed. Runs until stopped, or the namespace is destroyed.
    /// Port 0 picks a free port (see [`ServerHandle::addr`]).
    pub fn spawn_tcp_server(&self, ip: impl ToIp, port: u16) -> io::Result<ServerHandle> {
        let addr = SocketAddr::new(ip.to_ip(), port);
        let role = self.role().to_string();
        self.spawn_server(addr, move |stop, ready| {
            let l = match TcpListener::bind(addr).and_then(|l| {
                l.set_nonblocking(true)?;
                Ok(l)
            }) {
                Ok(l) => l,
                Err(e) => {
                    let _ = ready.send(Err(e));
                    return;
                }
            };
            let _ = ready.send(l.local_addr());
            while !stop.load(Ordering::SeqCst) {
                match l.accept() {
                    Ok((mut s, peer)) => {
                        let _ = s.set_nonblocking(false);
                        let _ = s.set_write_timeout(Some(Duration::from_secs(1)));
                        let local = s.local_addr().map(|a| a.to_string()).unwrap_or_default();
                        let _ = s.write_all(format!("{role} {peer} {local}\n").as_bytes());
                        let _ = s.shutdown(std::net::Shutdown::Write);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(2))
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        })
    }

    /// UDP server bound to `ip:port`; answers every datagram with
    /// `"<role> <peer-ip:port> <bound-ip:port>\n"`.
    pub fn spawn_udp_server(&self, ip: impl ToIp, port: u16) -> io::Result<ServerHandle> {
        let addr = SocketAddr::new(ip.to_ip(), port);
        let role = self.role().to_string();
        self.spawn_server(addr, move |stop, ready| {
            let s = match UdpSocket::bind(addr).and_then(|s| {
                s.set_read_timeout(Some(Duration::from_millis(20)))?;
                Ok(s)
            }) {
                Ok(s) => s,
                Err(e) => {
                    let _ = ready.send(Err(e));
                    return;
                }
            };
            let local = match s.local_addr() {
                Ok(a) => a,
                Err(e) => {
                    let _ = ready.send(Err(e));
                    return;
                }
            };
            let _ = ready.send(Ok(local));
            let mut buf = [0u8; 2048];
            while !stop.load(Ordering::SeqCst) {
                if let Ok((_, peer)) = s.recv_from(&mut buf) {
                    let _ = s.send_to(format!("{role} {peer} {local}\n").as_bytes(), peer);
                }
            }
        })
    }

    fn spawn_server<F>(&self, addr: SocketAddr, body: F) -> io::Result<ServerHandle>
    where
        F: FnOnce(&AtomicBool, mpsc::Sender<io::Result<SocketAddr>>) + Send + 'static,
    {
        self.check_alive()?;
        let shared = Arc::new(ServerShared {
            stop: AtomicBool::new(false),
            join: Mutex::new(None),
        });
        let (tx, rx) = mpsc::channel();
        let name = self.name().to_string();
        let sh = shared.clone();
        let join = std::thread::Builder::new()
            .name(format!("srv-{}-{addr}", self.role()))
            .spawn(move || {
                if let Err(e) = sys::enter_netns(&name) {
                    let _ = tx.send(Err(e));
                    return;
                }
                body(&sh.stop, tx);
            })?;
        *shared.join.lock().unwrap() = Some(join);
        match rx.recv() {
            Ok(Ok(local)) => {
                self.inner.servers.lock().unwrap().push(shared.clone());
                Ok(ServerHandle {
                    addr: local,
                    shared,
                })
            }
            Ok(Err(e)) => {
                shared.stop();
                Err(io::Error::new(
                    e.kind(),
                    format!("server {addr} in {}: {e}", self.name()),
                ))
            }
            Err(_) => {
                shared.stop();
                Err(io::Error::other("server thread died before binding"))
            }
        }
    }

    // ------------------------------------------------------------------
    // clients (each call runs on its own thread inside the namespace)
    // ------------------------------------------------------------------

    /// TCP connect to `dst:port`, read the reply until EOF.
    /// Errors: `ConnectionRefused` (RST / icmp port-unreachable, i.e. reject),
    /// `TimedOut` (drop), others as reported by the kernel.
    pub fn tcp_request(&self, dst: impl ToIp, port: u16, timeout: Duration) -> io::Result<String> {
        let dst = SocketAddr::new(dst.to_ip(), port);
        self.run_in(move || tcp_once(None, dst, timeout))
    }

    /// TCP request from a given local address (port 0 = ephemeral).
    pub fn tcp_request_from(
        &self,
        src: SocketAddr,
        dst: impl ToIp,
        port: u16,
        timeout: Duration,
    ) -> io::Result<String> {
        let dst = SocketAddr::new(dst.to_ip(), port);
        self.run_in(move || tcp_once(Some(src), dst, timeout))
    }

    /// `n` sequential TCP requests on one thread inside the namespace.
    pub fn tcp_requests(
        &self,
        dst: impl ToIp,
        port: u16,
        n: usize,
        timeout: Duration,
    ) -> Vec<io::Result<String>> {
        let dst = SocketAddr::new(dst.to_ip(), port);
        self.run_in(move || (0..n).map(|_| tcp_once(None, dst, timeout)).collect())
    }

    /// Sends one UDP datagram to `dst:port` from an ephemeral port and waits
    /// for one reply. `ConnectionRefused` = icmp port-unreachable,
    /// `TimedOut` = no answer.
    pub fn udp_request(&self, dst: impl ToIp, port: u16, timeout: Duration) -> io::Result<String> {
        let dst = SocketAddr::new(dst.to_ip(), port);
        self.run_in(move || udp_once(None, dst, timeout))
    }

    /// UDP request from a fixed local address/port (e.g. for conntrack tests).
    pub fn udp_request_from(
        &self,
        src: SocketAddr,
        dst: impl ToIp,
        port: u16,
        timeout: Duration,
    ) -> io::Result<String> {
        let dst = SocketAddr::new(dst.to_ip(), port);
        self.run_in(move || udp_once(Some(src), dst, timeout))
    }

    /// `n` sequential UDP requests (fresh ephemeral port each) on one thread.
    pub fn udp_requests(
        &self,
        dst: impl ToIp,
        port: u16,
        n: usize,
        timeout: Duration,
    ) -> Vec<io::Result<String>> {
        let dst = SocketAddr::new(dst.to_ip(), port);
        self.run_in(move || (0..n).map(|_| udp_once(None, dst, timeout)).collect())
    }
}

impl std::fmt::Debug for Netns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Netns({})", self.name())
    }
}

fn run_with_stdin(cmd: &mut Command, input: &str) -> io::Result<Output> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    {
        let mut stdin = child.stdin.take().expect("piped stdin");
        stdin.write_all(input.as_bytes())?;
    }
    child.wait_with_output()
}

fn timed_out(e: io::Error, what: &str) -> io::Error {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
            io::Error::new(io::ErrorKind::TimedOut, format!("{what}: timed out"))
        }
        _ => e,
    }
}

fn remaining(deadline: Instant) -> io::Result<Duration> {
    let now = Instant::now();
    if now >= deadline {
        return Err(io::Error::new(io::ErrorKind::TimedOut, "deadline passed"));
    }
    Ok((deadline - now).max(Duration::from_millis(1)))
}

fn tcp_once(src: Option<SocketAddr>, dst: SocketAddr, timeout: Duration) -> io::Result<String> {
    let deadline = Instant::now() + timeout;
    let mut s = match src {
        None => TcpStream::connect_timeout(&dst, timeout),
        Some(src) => sys::tcp_connect_from(src, dst, timeout),
    }
    .map_err(|e| timed_out(e, &format!("tcp connect {dst}")))?;
    s.set_read_timeout(Some(remaining(deadline)?))?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)
        .map_err(|e| timed_out(e, &format!("tcp read from {dst}")))?;
    if buf.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("tcp {dst}: empty reply"),
        ));
    }
    Ok(buf.trim_end().to_string())
}

fn udp_once(src: Option<SocketAddr>, dst: SocketAddr, timeout: Duration) -> io::Result<String> {
    let bind = src.unwrap_or_else(|| {
        let any: IpAddr = if dst.is_ipv4() {
            std::net::Ipv4Addr::UNSPECIFIED.into()
        } else {
            std::net::Ipv6Addr::UNSPECIFIED.into()
        };
        SocketAddr::new(any, 0)
    });
    let s = UdpSocket::bind(bind)?;
    s.connect(dst)?;
    s.set_read_timeout(Some(timeout.max(Duration::from_millis(1))))?;
    s.send(b"ping\n")?;
    let mut buf = [0u8; 2048];
    let n = s
        .recv(&mut buf)
        .map_err(|e| timed_out(e, &format!("udp {dst}")))?;
    Ok(String::from_utf8_lossy(&buf[..n]).trim_end().to_string())
}

struct ServerShared {
    stop: AtomicBool,
    join: Mutex<Option<JoinHandle<()>>>,
}

impl ServerShared {
    fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        let j = self.join.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(j) = j {
            let _ = j.join();
        }
    }
}

/// Handle to a running server. Dropping it does NOT stop the server (it
/// lives as long as its namespace); call [`ServerHandle::stop`] to close it.
pub struct ServerHandle {
    addr: SocketAddr,
    shared: Arc<ServerShared>,
}

impl ServerHandle {
    /// The bound address (useful with port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
    /// Stops the server and closes its socket (blocks until the thread exits).
    pub fn stop(&self) {
        self.shared.stop();
    }
}

/// A process running inside a namespace; killed (SIGKILL) and reaped on drop.
pub struct NsProcess {
    child: Option<Child>,
}

impl NsProcess {
    pub fn child(&mut self) -> &mut Child {
        self.child.as_mut().expect("child")
    }
    pub fn id(&self) -> u32 {
        self.child.as_ref().expect("child").id()
    }
    /// Kills the process and returns its output (if stdout/stderr were piped).
    pub fn kill_and_output(mut self) -> io::Result<Output> {
        let mut c = self.child.take().expect("child");
        let _ = c.kill();
        c.wait_with_output()
    }
}

impl Drop for NsProcess {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
