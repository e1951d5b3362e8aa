//! Real-kernel test, confined to a network namespace it creates and deletes.

use std::io;
use std::os::fd::AsRawFd;

use super::*;
use std::process::Command;

/// Skips (or, with `CI=true`, fails) when the test cannot run here.
fn skip(why: &str) {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("conntrack namespace test cannot run: {why}");
    }
    eprintln!("SKIP conntrack namespace test: {why}");
}

fn tool(name: &str) -> bool {
    let flag = if name == "ip" { "-V" } else { "--version" };
    Command::new(name)
        .arg(flag)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn run(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The namespace; deleted on drop, also when the test fails.
struct Netns(String);

impl Netns {
    fn exec(&self, args: &[&str]) -> String {
        let mut all = vec!["ip", "netns", "exec", self.0.as_str()];
        all.extend_from_slice(args);
        run(&all)
    }

    /// Runs `f` on a thread that has entered the namespace (the test's own thread,
    /// and so the host's namespace, is never touched).
    fn within<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/var/run/netns/{}", self.0);
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).expect("open netns");
            // SAFETY: a valid namespace descriptor; only this thread changes namespace.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", io::Error::last_os_error());
            f()
        })
        .join()
        .expect("namespace thread panicked")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn insert(ns: &Netns, proto: &str, orig: (&str, &str, u16, u16), reply: (&str, &str)) {
    let (src, dst, sport, dport) = orig;
    let (rsrc, rdst) = reply;
    let (sport, dport) = (sport.to_string(), dport.to_string());
    let mut args = vec![
        "conntrack",
        "-I",
        "-p",
        proto,
        "-s",
        src,
        "-d",
        dst,
        "--sport",
        &sport,
        "--dport",
        &dport,
        "-r",
        rsrc,
        "-q",
        rdst,
        "--reply-port-src",
        "53",
        "--reply-port-dst",
        &sport,
        "-t",
        "300",
    ];
    if proto == "tcp" {
        args.extend(["--state", "ESTABLISHED"]);
    }
    ns.exec(&args);
}

#[test]
fn deletes_exactly_the_matching_entries_in_a_namespace() {
    // SAFETY: plain syscall.
    if unsafe { libc::geteuid() } != 0 {
        return skip("not root");
    }
    for t in ["ip", "conntrack", "nft"] {
        if !tool(t) {
            return skip(&format!("`{t}` not installed"));
        }
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let name = format!("kntp-ct-{}-{nanos:x}", std::process::id());
    if Command::new("ip")
        .args(["netns", "add", &name])
        .status()
        .map(|s| !s.success())
        .unwrap_or(true)
    {
        return skip("cannot create a network namespace");
    }
    let ns = Netns(name);
    ns.exec(&["ip", "link", "set", "lo", "up"]);
    // Addresses on the namespace's own loopback: no dummy/veth kernel module needed.
    ns.exec(&["ip", "addr", "add", "10.0.0.1/24", "dev", "lo"]);
    ns.exec(&["ip", "addr", "add", "fd00::1/64", "dev", "lo", "nodad"]);
    ns.exec(&["ip", "route", "add", "10.96.0.0/16", "dev", "lo"]);

    // A real flow: a UDP packet to a "ClusterIP", DNATed by an nft rule to a local
    // listener.
    let rules = "table ip kntp_ct_test {\n\
         chain out { type nat hook output priority -100; \
         ip daddr 10.96.0.20 udp dport 53 dnat to 10.0.0.1:5353; }\n}\n";
    let path = std::env::temp_dir().join(format!("{}.nft", ns.0));
    std::fs::write(&path, rules).unwrap();
    let nft = ns.exec(&["nft", "-f", path.to_str().unwrap()]);
    let _ = std::fs::remove_file(&path);
    assert!(nft.is_empty(), "{nft}");
    let got = ns.within(|| {
        let listener = std::net::UdpSocket::bind("10.0.0.1:5353").unwrap();
        listener
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let client = std::net::UdpSocket::bind("10.0.0.1:40001").unwrap();
        client.send_to(b"ping", "10.96.0.20:53").unwrap();
        let mut buf = [0u8; 16];
        let (n, _) = listener.recv_from(&mut buf).unwrap();
        buf[..n].to_vec()
    });
    assert_eq!(got, b"ping");

    // Entries made with conntrack -I (setup only).
    let v4 = "10.0.0.1";
    insert(
        &ns,
        "udp",
        (v4, "10.96.0.10", 40002, 53),
        ("10.244.1.5", v4),
    ); // deleted
    insert(
        &ns,
        "udp",
        (v4, "10.96.0.10", 40003, 53),
        ("10.244.2.6", v4),
    ); // kept
    insert(
        &ns,
        "udp",
        (v4, "10.96.0.10", 40004, 54),
        ("10.244.1.5", v4),
    ); // kept
    insert(
        &ns,
        "tcp",
        (v4, "10.96.0.10", 40005, 53),
        ("10.244.1.5", v4),
    ); // kept
    insert(
        &ns,
        "udp",
        ("10.0.0.9", v4, 40006, 30053),
        ("10.244.1.5", v4),
    ); // deleted
    insert(
        &ns,
        "udp",
        ("10.0.0.9", v4, 40007, 30053),
        ("10.244.2.6", v4),
    ); // kept
       // The same tuple as 40002 in another zone: deleting it needs its zone sent back.
    let zoned = "conntrack -I -p udp -s 10.0.0.1 -d 10.96.0.10 --sport 40002 --dport 53 \
                 -r 10.244.1.5 -q 10.0.0.1 --reply-port-src 53 --reply-port-dst 40002 \
                 -t 300 --zone 7";
    ns.exec(&zoned.split_whitespace().collect::<Vec<_>>());
    let v6 = "fd00::1";
    insert(
        &ns,
        "udp",
        (v6, "fd00:96::10", 40008, 53),
        ("fd00:244::5", v6),
    ); // deleted
    insert(
        &ns,
        "udp",
        (v6, "fd00:96::10", 40009, 53),
        ("fd00:244::6", v6),
    ); // deleted
    insert(
        &ns,
        "udp",
        (v6, "fd00:96::11", 40010, 53),
        ("fd00:244::5", v6),
    ); // kept
    let before = ns.exec(&["conntrack", "-L"]);
    assert!(before.contains("dst=10.96.0.20"), "{before}");
    let count = |s: &str| s.lines().filter(|l| l.contains("sport=400")).count();
    assert_eq!(count(&before), 11, "{before}");
    assert!(before.contains("zone=7"), "{before}");

    let filters = vec![
        FlowFilter {
            family: Family::V4,
            proto: Proto::Udp,
            orig_dst: Some(ip("10.96.0.10")),
            orig_dst_port: Some(53),
            reply_src: Some(ip("10.244.1.5")),
        },
        FlowFilter {
            family: Family::V4,
            proto: Proto::Udp,
            orig_dst: None,
            orig_dst_port: Some(30053),
            reply_src: Some(ip("10.244.1.5")),
        },
        FlowFilter {
            family: Family::V4,
            proto: Proto::Udp,
            orig_dst: Some(ip("10.96.0.20")),
            orig_dst_port: Some(53),
            reply_src: Some(ip("10.0.0.1")),
        },
        FlowFilter {
            family: Family::V6,
            proto: Proto::Udp,
            orig_dst: Some(ip("fd00:96::10")),
            orig_dst_port: Some(53),
            reply_src: None,
        },
    ];
    let f = filters.clone();
    let deleted = ns.within(move || delete_flows(&f)).unwrap();
    assert_eq!(deleted, 6);

    let after = ns.exec(&["conntrack", "-L"]);
    let mut remaining: Vec<&str> = after
        .lines()
        .filter(|l| l.contains("sport=400"))
        .filter_map(|l| l.split("sport=").nth(1)?.split_whitespace().next())
        .collect();
    remaining.sort();
    assert_eq!(
        remaining,
        vec!["40003", "40004", "40005", "40007", "40010"],
        "{after}"
    );
    // A second run finds nothing left to delete.
    let f = filters.clone();
    assert_eq!(ns.within(move || delete_flows(&f)).unwrap(), 0);
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}
