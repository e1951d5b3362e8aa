//! Test support: a throwaway network namespace for kernel tests (never the machine's own).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::raw::c_int;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

pub(crate) const CLONE_NEWNET: c_int = 0x4000_0000;

extern "C" {
    pub(crate) fn setns(fd: c_int, nstype: c_int) -> c_int;
    pub(crate) fn geteuid() -> u32;
}

/// A network namespace made with `ip netns add`, deleted on drop (also when a test
/// panics). Never the machine's own namespace.
pub(crate) struct Netns {
    name: String,
}

impl Netns {
    pub(crate) fn create() -> Netns {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "kntp-nl-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let out = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .expect("run ip netns add");
        assert!(
            out.status.success(),
            "ip netns add {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Netns { name }
    }

    /// Moves the calling thread into this namespace and checks that it arrived.
    pub(crate) fn enter(&self) {
        use std::os::unix::fs::MetadataExt;
        let path = format!("/var/run/netns/{}", self.name);
        let f = File::open(&path).expect("open netns file");
        // SAFETY: a valid fd owned by `f` for the duration of the call.
        let rc = unsafe { setns(f.as_raw_fd(), CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
        let want = f.metadata().unwrap();
        let have = std::fs::metadata("/proc/thread-self/ns/net").unwrap();
        assert!(
            want.dev() == have.dev() && want.ino() == have.ino(),
            "setns into {path} did not take effect"
        );
    }

    /// `nft <args>` inside this namespace.
    pub(crate) fn nft(&self, args: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name, "nft"])
            .args(args)
            .output()
            .expect("run ip netns exec nft");
        assert!(
            out.status.success(),
            "nft {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

pub(crate) fn kernel_tests_possible() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { geteuid() } == 0;
    let tools = ["ip", "nft"]
        .iter()
        .all(|t| Command::new(t).arg("-V").output().is_ok());
    if !(root && tools) {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("CI must run the netlink kernel tests: they need root, ip and nft");
        }
        eprintln!("skipping netlink kernel test: needs root, ip and nft");
        return false;
    }
    true
}

/// Runs `body` on a thread that lives in a fresh network namespace (deleted afterwards);
/// `None` when the test cannot run here.
pub(crate) fn in_netns<T: Send>(body: impl FnOnce(&Netns) -> T + Send) -> Option<T> {
    if !kernel_tests_possible() {
        return None;
    }
    let ns = Netns::create();
    let res = std::thread::scope(|s| {
        s.spawn(|| {
            ns.enter();
            body(&ns)
        })
        .join()
    });
    drop(ns);
    match res {
        Ok(v) => Some(v),
        Err(p) => std::panic::resume_unwind(p),
    }
}

/// `nft list table` of `t` in `ns`.
pub(crate) fn list_table(ns: &Netns, t: &crate::ruleset::ir::Table) -> String {
    ns.nft(&["list", "table", super::text::family_name(t.family), &t.name])
}
