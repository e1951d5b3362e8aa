//! Migration from upstream kube-proxy: find and remove what it left in a node's kernel.
//!
//! Upstream kube-proxy's `--cleanup` removes, and only removes (read from kubernetes/kubernetes
//! `pkg/proxy/nftables/cleanup.go`, `pkg/proxy/iptables/cleanup.go` and the chain lists in
//! `pkg/proxy/iptables/proxier.go`):
//!
//! - nftables mode: `table ip kube-proxy` and `table ip6 kube-proxy`;
//! - iptables mode, for IPv4 and IPv6:
//!   - its jump rules from the built-in chains, matched by their exact rule spec
//!     (`iptablesJumpChains`, plus the `iptablesCleanupOnlyChains` of earlier releases);
//!   - in `nat`: `KUBE-SERVICES`, `KUBE-NODEPORTS`, `KUBE-POSTROUTING`, `KUBE-MARK-MASQ`,
//!     `KUBE-PROXY-CANARY` and every `KUBE-SVC-`, `KUBE-SVL-`, `KUBE-SEP-`, `KUBE-FW-`,
//!     `KUBE-EXT-` chain (and `KUBE-XLB-`, which releases up to 1.23 wrote), flushed and deleted;
//!   - in `filter`: `KUBE-SERVICES`, `KUBE-EXTERNAL-SERVICES`, `KUBE-FORWARD`,
//!     `KUBE-NODEPORTS`, `KUBE-PROXY-FIREWALL`, `KUBE-PROXY-CANARY`, flushed and deleted;
//!   - in `mangle`: `KUBE-PROXY-CANARY`, deleted only (it is always empty).
//!
//! It leaves the kubelet's chains alone: `KUBE-FIREWALL` (and its jumps from `INPUT`/`OUTPUT`),
//! `KUBE-MARK-DROP`, `KUBE-KUBELET-CANARY`, `KUBE-IPTABLES-HINT`. So does this module.
//!
//! Differences from upstream, all on the side of touching less:
//! - upstream's `iptables-restore` of a table fails as a whole when one of the chains it deletes
//!   is still the target of a rule it did not write; here such a chain (and whatever it jumps
//!   to) is kept untouched and reported in [`Removed::notes`], and the rest is removed;
//! - upstream's mangle `-X KUBE-PROXY-CANARY` fails (ignored) if that chain is not empty or is
//!   referenced; here it is then not attempted;
//! - upstream cleans the one iptables backend its image's wrapper picked; here both the legacy
//!   and the nft backend are cleaned, each whose binaries exist (legacy tables are read only when
//!   the kernel already has them, so that reading does not create them).
//!
//! IPVS mode's own leftovers (IPVS virtual servers, the `kube-ipvs0` device, `KUBE-*` ipsets,
//! chains such as `KUBE-NODE-PORT` or `KUBE-LOAD-BALANCER`) are out of scope; the chains it
//! shares with iptables mode (`KUBE-SERVICES`, `KUBE-POSTROUTING`, ...) are handled as above.
//!
//! The planning ([`plan_table`]) is pure and works on `iptables-save` text; running the
//! binaries and talking netlink happens in [`remove_kube_proxy_leftovers`].

use std::collections::{BTreeSet, HashSet};
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::nft::netlink::{self, NetlinkError};
use crate::vocab::Family;

/// The name of upstream kube-proxy's nftables table (in both the `ip` and `ip6` families).
pub const KUBE_PROXY_TABLE: &str = "kube-proxy";

/// What [`remove_kube_proxy_leftovers`] removed, and what it looked at but left.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Removed {
    /// nftables tables deleted, e.g. `ip kube-proxy`.
    pub nft_tables: Vec<String>,
    /// One entry per iptables table changed, e.g. `legacy ip nat: 12 chains, 3 jump rules`.
    pub iptables: Vec<String>,
    /// Things left on purpose (a backend without binaries, a kube-proxy chain that a foreign
    /// rule still jumps to), one sentence each. Informational; not part of [`Removed::is_empty`].
    pub notes: Vec<String>,
}

impl Removed {
    /// True when nothing was removed (notes do not count).
    pub fn is_empty(&self) -> bool {
        self.nft_tables.is_empty() && self.iptables.is_empty()
    }
}

impl fmt::Display for Removed {
    /// One line: `nftables: ip kube-proxy; iptables: legacy ip nat: 12 chains, 3 jump rules`,
    /// or `nothing`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if !self.nft_tables.is_empty() {
            parts.push(format!("nftables: {}", self.nft_tables.join(", ")));
        }
        if !self.iptables.is_empty() {
            parts.push(format!("iptables: {}", self.iptables.join(", ")));
        }
        if parts.is_empty() {
            f.write_str("nothing")
        } else {
            f.write_str(&parts.join("; "))
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// Deleting one of kube-proxy's nftables tables failed.
    #[error("deleting table {table}: {source}")]
    Nft {
        table: String,
        #[source]
        source: NetlinkError,
    },
    /// Running an iptables binary failed (could not start, or exited non-zero).
    #[error("{program}: {message}")]
    Iptables { program: String, message: String },
    /// Some steps failed; the others ran. `removed` is what was removed nonetheless.
    #[error(
        "kube-proxy's leftovers were only partly removed (removed: {removed}); {}",
        failures.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; ")
    )]
    Incomplete {
        removed: Removed,
        failures: Vec<MigrateError>,
    },
}

/// Removes what upstream kube-proxy left in the network namespace of the **calling thread**:
/// its `ip`/`ip6` `kube-proxy` nftables tables, and its iptables/ip6tables chains and jump
/// rules in both the legacy and the nft iptables backends (each whose `*-save`/`*-restore`
/// binaries exist). Nothing else is touched; see the module documentation for the exact list.
///
/// Blocking (runs the iptables binaries, which inherit the calling thread's namespace). Every
/// step runs even when an earlier one failed; the only error returned is then
/// [`MigrateError::Incomplete`], carrying what was removed and each failure
/// ([`MigrateError::Nft`] or [`MigrateError::Iptables`]). Running it again on a clean node
/// removes nothing and returns an empty [`Removed`].
pub fn remove_kube_proxy_leftovers() -> Result<Removed, MigrateError> {
    let mut removed = Removed::default();
    let mut failures = Vec::new();

    for family in [Family::V4, Family::V6] {
        let table = format!("{} {KUBE_PROXY_TABLE}", family_word(family));
        match netlink::delete_tables(&[(family, KUBE_PROXY_TABLE)]) {
            Ok(true) => removed.nft_tables.push(table),
            Ok(false) => {}
            Err(source) => failures.push(MigrateError::Nft { table, source }),
        }
    }

    for backend in [Backend::Legacy, Backend::Nft] {
        for family in [Family::V4, Family::V6] {
            let Some(tools) = Tools::find(backend, family) else {
                removed.notes.push(format!(
                    "{}: no {} binaries found, not checked",
                    backend_label(backend, family),
                    Tools::names(backend, family).join("/")
                ));
                continue;
            };
            clean_backend(&tools, &mut removed, &mut failures);
        }
    }

    if failures.is_empty() {
        Ok(removed)
    } else {
        Err(MigrateError::Incomplete { removed, failures })
    }
}

// ---------------------------------------------------------------------------------------------
// What kube-proxy owns
// ---------------------------------------------------------------------------------------------

/// A jump rule kube-proxy writes from a built-in chain to one of its own:
/// `-A <chain> [-m conntrack --ctstate NEW] -m comment --comment "<comment>" -j <target>`.
struct JumpRule {
    table: &'static str,
    chain: &'static str,
    ct_new: bool,
    comment: &'static str,
    target: &'static str,
}

const fn jump(
    table: &'static str,
    chain: &'static str,
    ct_new: bool,
    comment: &'static str,
    target: &'static str,
) -> JumpRule {
    JumpRule {
        table,
        chain,
        ct_new,
        comment,
        target,
    }
}

const PORTALS: &str = "kubernetes service portals";
const EXTERNAL: &str = "kubernetes externally-visible service portals";
const LB_FIREWALL: &str = "kubernetes load balancer firewall";

/// `iptablesJumpChains` (current upstream), then the `iptablesCleanupOnlyChains` entries of
/// earlier releases (filter `INPUT` to `KUBE-SERVICES`, with `ctstate NEW` in 1.13-1.19,
/// without it before, and `OUTPUT` without it).
const JUMP_RULES: &[JumpRule] = &[
    jump("filter", "INPUT", true, EXTERNAL, "KUBE-EXTERNAL-SERVICES"),
    jump(
        "filter",
        "FORWARD",
        true,
        EXTERNAL,
        "KUBE-EXTERNAL-SERVICES",
    ),
    jump(
        "filter",
        "INPUT",
        false,
        "kubernetes health check service ports",
        "KUBE-NODEPORTS",
    ),
    jump("filter", "FORWARD", true, PORTALS, "KUBE-SERVICES"),
    jump("filter", "OUTPUT", true, PORTALS, "KUBE-SERVICES"),
    jump(
        "filter",
        "FORWARD",
        false,
        "kubernetes forwarding rules",
        "KUBE-FORWARD",
    ),
    jump("filter", "INPUT", true, LB_FIREWALL, "KUBE-PROXY-FIREWALL"),
    jump("filter", "OUTPUT", true, LB_FIREWALL, "KUBE-PROXY-FIREWALL"),
    jump(
        "filter",
        "FORWARD",
        true,
        LB_FIREWALL,
        "KUBE-PROXY-FIREWALL",
    ),
    jump("nat", "OUTPUT", false, PORTALS, "KUBE-SERVICES"),
    jump("nat", "PREROUTING", false, PORTALS, "KUBE-SERVICES"),
    jump(
        "nat",
        "POSTROUTING",
        false,
        "kubernetes postrouting rules",
        "KUBE-POSTROUTING",
    ),
    // Cleanup-only entries of earlier releases.
    jump("filter", "INPUT", true, PORTALS, "KUBE-SERVICES"),
    jump("filter", "INPUT", false, PORTALS, "KUBE-SERVICES"),
    jump("filter", "OUTPUT", false, PORTALS, "KUBE-SERVICES"),
];

impl JumpRule {
    /// The rule's tokens after `-A <chain>`, as `iptables-save` prints them (unquoted).
    fn tokens(&self) -> Vec<&'static str> {
        let mut t = Vec::with_capacity(10);
        if self.ct_new {
            t.extend(["-m", "conntrack", "--ctstate", "NEW"]);
        }
        t.extend([
            "-m",
            "comment",
            "--comment",
            self.comment,
            "-j",
            self.target,
        ]);
        t
    }
}

/// The fixed chains kube-proxy flushes and deletes in each table.
fn owned_chains(table: &str) -> &'static [&'static str] {
    match table {
        "nat" => &[
            "KUBE-SERVICES",
            "KUBE-NODEPORTS",
            "KUBE-POSTROUTING",
            "KUBE-MARK-MASQ",
            "KUBE-PROXY-CANARY",
        ],
        "filter" => &[
            "KUBE-SERVICES",
            "KUBE-EXTERNAL-SERVICES",
            "KUBE-FORWARD",
            "KUBE-NODEPORTS",
            "KUBE-PROXY-FIREWALL",
            "KUBE-PROXY-CANARY",
        ],
        _ => &[],
    }
}

/// Chains kube-proxy only deletes (never flushes) in each table.
fn delete_only_chains(table: &str) -> &'static [&'static str] {
    match table {
        "mangle" => &["KUBE-PROXY-CANARY"],
        _ => &[],
    }
}

/// The per-service and per-endpoint chain prefixes kube-proxy hunts for in `nat`.
const SERVICE_CHAIN_PREFIXES: &[&str] = &[
    "KUBE-SVC-",
    "KUBE-SVL-",
    "KUBE-SEP-",
    "KUBE-FW-",
    "KUBE-EXT-",
    "KUBE-XLB-",
];

/// The iptables tables kube-proxy writes to, in the order they are cleaned.
pub const TABLES: [&str; 3] = ["nat", "filter", "mangle"];

// ---------------------------------------------------------------------------------------------
// Parsing iptables-save
// ---------------------------------------------------------------------------------------------

/// One table of an `iptables-save` dump.
#[derive(Debug, Default)]
struct SavedTable {
    /// Chain names in the order of their `:` lines.
    chains: Vec<String>,
    rules: Vec<SavedRule>,
}

#[derive(Debug)]
struct SavedRule {
    chain: String,
    /// The line after `-A <chain> `, exactly as saved (quoting kept).
    spec: String,
    /// `spec` split into arguments, quotes removed.
    tokens: Vec<String>,
}

impl SavedRule {
    /// The chain this rule jumps or goes to, if any.
    fn target(&self) -> Option<&str> {
        self.tokens
            .windows(2)
            .find(|w| matches!(w[0].as_str(), "-j" | "--jump" | "-g" | "--goto"))
            .map(|w| w[1].as_str())
    }
}

/// Finds table `table` in `saved` (the output of `iptables-save`, with or without `-t`).
/// `None` when the dump has no such table.
fn parse_table(table: &str, saved: &str) -> Option<SavedTable> {
    let mut current: Option<SavedTable> = None;
    for line in saved.lines() {
        let line = line.trim_end();
        if let Some(name) = line.strip_prefix('*') {
            if current.is_some() {
                break; // a table without COMMIT; the next one starts
            }
            if name == table {
                current = Some(SavedTable::default());
            }
            continue;
        }
        let Some(t) = current.as_mut() else { continue };
        if line == "COMMIT" {
            break;
        }
        if let Some(decl) = line.strip_prefix(':') {
            if let Some(name) = decl.split_whitespace().next() {
                t.chains.push(name.to_string());
            }
        } else if let Some(rest) = line.strip_prefix("-A ") {
            let (chain, spec) = rest.split_once(' ').unwrap_or((rest, ""));
            t.rules.push(SavedRule {
                chain: chain.to_string(),
                spec: spec.to_string(),
                tokens: split_args(spec),
            });
        }
    }
    current
}

/// Splits an `iptables-save` rule into arguments the way `iptables-restore` does: on blanks,
/// with `"..."` quoting a single argument and `\` escaping the next character inside quotes.
fn split_args(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_token = false;
    let mut quoted = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if quoted {
            match c {
                '\\' => {
                    if let Some(n) = chars.next() {
                        cur.push(n);
                    }
                }
                '"' => quoted = false,
                _ => cur.push(c),
            }
        } else if c == '"' {
            quoted = true;
            in_token = true;
        } else if c.is_whitespace() {
            if in_token {
                out.push(std::mem::take(&mut cur));
                in_token = false;
            }
        } else {
            cur.push(c);
            in_token = true;
        }
    }
    if in_token {
        out.push(cur);
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Planning
// ---------------------------------------------------------------------------------------------

/// What to remove from one iptables table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TablePlan {
    pub table: String,
    /// kube-proxy's jump rules to delete: (chain, rule spec after `-A <chain> ` as saved).
    pub jumps: Vec<(String, String)>,
    /// Chains to flush, then delete.
    pub flush_delete: Vec<String>,
    /// Chains to delete without flushing (they are empty).
    pub delete_only: Vec<String>,
    /// kube-proxy chains left in place, and why (one sentence each).
    pub kept: Vec<String>,
}

impl TablePlan {
    /// True when the plan removes nothing (`kept` may still say something).
    pub fn is_empty(&self) -> bool {
        self.jumps.is_empty() && self.flush_delete.is_empty() && self.delete_only.is_empty()
    }

    /// Number of chains the plan deletes.
    pub fn chain_count(&self) -> usize {
        self.flush_delete.len() + self.delete_only.len()
    }

    /// The `iptables-restore --noflush` input that carries out the plan in one transaction of
    /// the table: flush (by redeclaring) the chains, delete the jump rules by their spec,
    /// delete the chains. Empty when there is nothing to do.
    pub fn restore_script(&self) -> String {
        if self.is_empty() {
            return String::new();
        }
        let mut s = format!("*{}\n", self.table);
        for c in &self.flush_delete {
            s.push_str(&format!(":{c} - [0:0]\n"));
        }
        for (chain, spec) in &self.jumps {
            s.push_str(&format!("-D {chain} {spec}\n"));
        }
        for c in self.flush_delete.iter().chain(&self.delete_only) {
            s.push_str(&format!("-X {c}\n"));
        }
        s.push_str("COMMIT\n");
        s
    }
}

/// Plans the removal of kube-proxy's chains and jump rules from table `table` ("nat",
/// "filter" or "mangle"), given `saved`, the output of `iptables-save` (`-t <table>` or all
/// tables). A table the dump lacks, or another table name, gives an empty plan.
///
/// A kube-proxy chain that a rule kube-proxy did not write still jumps to (after removing
/// everything else) is kept with its rules, as is everything it jumps to, and named in
/// [`TablePlan::kept`]: deleting it would make the whole restore fail.
pub fn plan_table(table: &str, saved: &str) -> TablePlan {
    let mut plan = TablePlan {
        table: table.to_string(),
        ..TablePlan::default()
    };
    let Some(t) = parse_table(table, saved) else {
        return plan;
    };
    let exists: HashSet<&str> = t.chains.iter().map(String::as_str).collect();

    // The chains kube-proxy would remove, in upstream's order: fixed ones, then service ones.
    let mut flush: Vec<&str> = owned_chains(table)
        .iter()
        .copied()
        .filter(|c| exists.contains(c))
        .collect();
    if table == "nat" {
        for c in &t.chains {
            if SERVICE_CHAIN_PREFIXES.iter().any(|p| c.starts_with(p))
                && !flush.iter().any(|f| f == c)
            {
                flush.push(c);
            }
        }
    }
    let mut delete_only: Vec<&str> = delete_only_chains(table)
        .iter()
        .copied()
        .filter(|c| exists.contains(c))
        .collect();

    // kube-proxy's jump rules, by exact spec (every copy of one).
    let jump_specs: Vec<(&str, Vec<&str>)> = JUMP_RULES
        .iter()
        .filter(|j| j.table == table)
        .map(|j| (j.chain, j.tokens()))
        .collect();
    let is_jump = |r: &SavedRule| {
        jump_specs
            .iter()
            .any(|(chain, tokens)| r.chain == *chain && r.tokens == *tokens)
    };
    let jump_idx: BTreeSet<usize> = (0..t.rules.len())
        .filter(|&i| is_jump(&t.rules[i]))
        .collect();

    // A chain with rules cannot go without a flush: upstream's bare `-X` would fail.
    delete_only.retain(|c| {
        let has_rules = t.rules.iter().any(|r| r.chain == *c);
        if has_rules {
            plan.kept.push(format!(
                "{table} {c}: not empty, so not deleted (kube-proxy only deletes it when empty)"
            ));
        }
        !has_rules
    });

    // Keep every chain to be removed that a surviving rule still jumps to, and what those
    // kept chains jump to in turn, until nothing surviving references a removed chain.
    loop {
        let removing: HashSet<&str> = flush.iter().chain(&delete_only).copied().collect();
        let blocker = t.rules.iter().enumerate().find_map(|(i, r)| {
            let target = r.target()?;
            let survives = !jump_idx.contains(&i) && !removing.contains(r.chain.as_str());
            (survives && removing.contains(target)).then_some((target, r))
        });
        let Some((target, rule)) = blocker else { break };
        plan.kept.push(format!(
            "{table} {target}: kept, a rule kube-proxy did not write jumps to it \
             (-A {} {})",
            rule.chain, rule.spec
        ));
        flush.retain(|c| *c != target);
        delete_only.retain(|c| *c != target);
    }

    plan.jumps = jump_idx
        .iter()
        .map(|&i| (t.rules[i].chain.clone(), t.rules[i].spec.clone()))
        .collect();
    plan.flush_delete = flush.into_iter().map(str::to_string).collect();
    plan.delete_only = delete_only.into_iter().map(str::to_string).collect();
    plan
}

// ---------------------------------------------------------------------------------------------
// Running the iptables binaries
// ---------------------------------------------------------------------------------------------

/// An iptables backend: the classic x_tables kernel tables, or iptables-nft's nf_tables ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Legacy,
    Nft,
}

fn family_word(family: Family) -> &'static str {
    match family {
        Family::V4 => "ip",
        Family::V6 => "ip6",
    }
}

fn backend_word(backend: Backend) -> &'static str {
    match backend {
        Backend::Legacy => "legacy",
        Backend::Nft => "nft",
    }
}

/// `legacy ip`, `nft ip6`, ...: how a backend and family are named in [`Removed`].
fn backend_label(backend: Backend, family: Family) -> String {
    format!("{} {}", backend_word(backend), family_word(family))
}

/// The `*-save` and `*-restore` binaries of one backend and family.
#[derive(Debug, Clone)]
struct Tools {
    backend: Backend,
    family: Family,
    save: PathBuf,
    restore: PathBuf,
}

/// Directories searched besides `$PATH` (a container's `$PATH` may lack the sbin ones).
const SBIN_DIRS: &[&str] = &["/usr/sbin", "/sbin", "/usr/local/sbin"];

impl Tools {
    fn prog(family: Family) -> &'static str {
        match family {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        }
    }

    /// The backend-specific names, e.g. `iptables-legacy-save`, `iptables-legacy-restore`.
    fn names(backend: Backend, family: Family) -> [String; 2] {
        let p = Self::prog(family);
        let b = backend_word(backend);
        [format!("{p}-{b}-save"), format!("{p}-{b}-restore")]
    }

    /// The backend's binaries: the backend-specific names, else the plain `iptables-save` /
    /// `iptables-restore` when `iptables-save --version` reports that backend (`(legacy)`, or
    /// no tag for releases before 1.8, or `(nf_tables)`).
    fn find(backend: Backend, family: Family) -> Option<Tools> {
        let [save, restore] = Self::names(backend, family);
        if let (Some(save), Some(restore)) = (find_program(&save), find_program(&restore)) {
            return Some(Tools {
                backend,
                family,
                save,
                restore,
            });
        }
        let p = Self::prog(family);
        let save = find_program(&format!("{p}-save"))?;
        let restore = find_program(&format!("{p}-restore"))?;
        let version = Command::new(&save)
            .arg("--version")
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()?;
        let version = String::from_utf8_lossy(&version.stdout);
        let is_nft = version.contains("nf_tables");
        let matches = match backend {
            Backend::Nft => is_nft,
            Backend::Legacy => !is_nft && version.contains(" v"),
        };
        matches.then_some(Tools {
            backend,
            family,
            save,
            restore,
        })
    }

    fn label(&self) -> String {
        backend_label(self.backend, self.family)
    }
}

fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(SBIN_DIRS.iter().map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// The legacy (x_tables) tables the kernel has instantiated in the calling thread's network
/// namespace. Reading a legacy table that does not exist yet would create it, so only these
/// are read.
fn legacy_tables(family: Family) -> HashSet<String> {
    let file = match family {
        Family::V4 => "ip_tables_names",
        Family::V6 => "ip6_tables_names",
    };
    // thread-self: the calling thread may have entered another namespace than the process.
    std::fs::read_to_string(format!("/proc/thread-self/net/{file}"))
        .map(|s| s.lines().map(|l| l.trim().to_string()).collect())
        .unwrap_or_default()
}

/// Runs `program args`, feeding `stdin`; stdout on success.
fn run(program: &Path, args: &[&str], stdin: Option<&str>) -> Result<String, MigrateError> {
    let err = |message: String| MigrateError::Iptables {
        program: format!("{} {}", program.display(), args.join(" ")),
        message,
    };
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| err(format!("cannot start: {e}")))?;
    // A program that fails early stops reading; its exit status and stderr then say more
    // than the broken pipe, so the write error is reported only if it exited successfully.
    let written = match stdin {
        Some(input) => {
            let mut pipe = child.stdin.take().expect("stdin is piped");
            pipe.write_all(input.as_bytes())
        }
        None => Ok(()),
    };
    let out = child
        .wait_with_output()
        .map_err(|e| err(format!("waiting for it: {e}")))?;
    if !out.status.success() {
        return Err(err(format!(
            "{}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    written.map_err(|e| err(format!("writing its input: {e}")))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Cleans `nat`, `filter` and `mangle` of one backend and family.
fn clean_backend(tools: &Tools, removed: &mut Removed, failures: &mut Vec<MigrateError>) {
    let legacy = (tools.backend == Backend::Legacy).then(|| legacy_tables(tools.family));
    for table in TABLES {
        if legacy.as_ref().is_some_and(|t| !t.contains(table)) {
            continue; // not instantiated: nothing of kube-proxy's can be there
        }
        match clean_table(tools, table) {
            Ok(plan) => {
                let label = format!("{} {table}", tools.label());
                removed
                    .notes
                    .extend(plan.kept.iter().map(|k| format!("{}: {k}", tools.label())));
                if !plan.is_empty() {
                    removed.iptables.push(format!(
                        "{label}: {} chains, {} jump rules",
                        plan.chain_count(),
                        plan.jumps.len()
                    ));
                }
            }
            Err(e) => failures.push(e),
        }
    }
}

/// Saves one table, plans, restores. A restore that fails is retried once from a fresh save
/// (the table may have changed in between, e.g. a rule deleted by someone else).
fn clean_table(tools: &Tools, table: &str) -> Result<TablePlan, MigrateError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let saved = run(&tools.save, &["-t", table], None)?;
        let plan = plan_table(table, &saved);
        if plan.is_empty() {
            return Ok(plan);
        }
        let script = plan.restore_script();
        // Only the legacy backend takes the xtables lock (as kube-proxy: `--wait=5`).
        let args: &[&str] = match tools.backend {
            Backend::Legacy => &["--noflush", "--wait=5"],
            Backend::Nft => &["--noflush"],
        };
        match run(&tools.restore, args, Some(&script)) {
            Ok(_) => return Ok(plan),
            Err(e) if attempt >= 2 => return Err(e),
            Err(_) => continue,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A kube-proxy 1.28 node (iptables mode, `iptables-save` of iptables 1.8.9): kube-proxy's
    /// chains, the kubelet's (`KUBE-FIREWALL`, `KUBE-KUBELET-CANARY`, `KUBE-IPTABLES-HINT`),
    /// and foreign ones (a firewall chain, kube-router's network policy chain, Docker's
    /// masquerade, a rule with kube-proxy's comment but another target).
    const KP_1_28: &str = r#"# Generated by iptables-save v1.8.9 on Wed Mar 13 10:02:11 2024
*mangle
:PREROUTING ACCEPT [90112:61239811]
:INPUT ACCEPT [88801:61002315]
:FORWARD ACCEPT [1311:237496]
:OUTPUT ACCEPT [86512:15790042]
:POSTROUTING ACCEPT [87823:16027538]
:KUBE-IPTABLES-HINT - [0:0]
:KUBE-KUBELET-CANARY - [0:0]
:KUBE-PROXY-CANARY - [0:0]
COMMIT
# Completed on Wed Mar 13 10:02:11 2024
# Generated by iptables-save v1.8.9 on Wed Mar 13 10:02:11 2024
*filter
:INPUT ACCEPT [88801:61002315]
:FORWARD ACCEPT [1311:237496]
:OUTPUT ACCEPT [86512:15790042]
:FW-INPUT - [0:0]
:KUBE-EXTERNAL-SERVICES - [0:0]
:KUBE-FIREWALL - [0:0]
:KUBE-FORWARD - [0:0]
:KUBE-KUBELET-CANARY - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-PROXY-CANARY - [0:0]
:KUBE-PROXY-FIREWALL - [0:0]
:KUBE-ROUTER-INPUT - [0:0]
:KUBE-SERVICES - [0:0]
-A INPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL
-A INPUT -m comment --comment "kubernetes health check service ports" -j KUBE-NODEPORTS
-A INPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals" -j KUBE-EXTERNAL-SERVICES
-A INPUT -j KUBE-FIREWALL
-A INPUT -m comment --comment "kube-router netpol - 4IA2OSFRMVNDXBVV" -j KUBE-ROUTER-INPUT
-A INPUT -j FW-INPUT
-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL
-A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD
-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals" -j KUBE-EXTERNAL-SERVICES
-A OUTPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL
-A OUTPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -j KUBE-FIREWALL
-A OUTPUT -m comment --comment "kubernetes service portals" -j ACCEPT
-A FW-INPUT -s 198.51.100.0/24 -p tcp -m tcp --dport 22 -j ACCEPT
-A KUBE-EXTERNAL-SERVICES -d 192.168.1.20/32 -p tcp -m comment --comment "shop/cart:http has no local endpoints" -m tcp --dport 30417 -j DROP
-A KUBE-FIREWALL ! -s 127.0.0.0/8 -d 127.0.0.0/8 -m comment --comment "block incoming localnet connections" -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP
-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark 0x4000/0x4000 -j ACCEPT
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A KUBE-NODEPORTS -p tcp -m comment --comment "shop/cart:http health check node port" -m tcp --dport 31544 -j ACCEPT
-A KUBE-PROXY-FIREWALL -d 203.0.113.50/32 -p tcp -m comment --comment "shop/front:https traffic not accepted by KUBE-FW-LZKC4QLKZBS5XA3E" -m tcp --dport 443 -j DROP
-A KUBE-ROUTER-INPUT -d 10.96.0.0/12 -m comment --comment "allow traffic to primary cluster IP range" -j RETURN
-A KUBE-SERVICES -d 10.96.211.9/32 -p tcp -m comment --comment "shop/payments:grpc has no endpoints" -m tcp --dport 9090 -j REJECT --reject-with icmp-port-unreachable
COMMIT
# Completed on Wed Mar 13 10:02:11 2024
# Generated by iptables-save v1.8.9 on Wed Mar 13 10:02:11 2024
*nat
:PREROUTING ACCEPT [402:24381]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [6131:368210]
:POSTROUTING ACCEPT [6203:372532]
:DOCKER - [0:0]
:KUBE-EXT-LZKC4QLKZBS5XA3E - [0:0]
:KUBE-EXT-UJ7IAW6DRGKUKXCH - [0:0]
:KUBE-FW-LZKC4QLKZBS5XA3E - [0:0]
:KUBE-KUBELET-CANARY - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-PROXY-CANARY - [0:0]
:KUBE-SEP-6E7XQMQ4RAYOWTTM - [0:0]
:KUBE-SEP-HDI3ZJ3CVIZPZ7DZ - [0:0]
:KUBE-SEP-IT2ZTR26TO4XFPTO - [0:0]
:KUBE-SEP-ZP3FB6NMPNCO4VBJ - [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-SVC-ERIFXISQEP7F7OF4 - [0:0]
:KUBE-SVC-LZKC4QLKZBS5XA3E - [0:0]
:KUBE-SVC-NPX46M4PTMTKRN6Y - [0:0]
:KUBE-SVC-UJ7IAW6DRGKUKXCH - [0:0]
:KUBE-SVL-UJ7IAW6DRGKUKXCH - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j DOCKER
-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING
-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE
-A DOCKER -i docker0 -j RETURN
-A KUBE-EXT-LZKC4QLKZBS5XA3E -m comment --comment "masquerade traffic for shop/front:https external destinations" -j KUBE-MARK-MASQ
-A KUBE-EXT-LZKC4QLKZBS5XA3E -j KUBE-SVC-LZKC4QLKZBS5XA3E
-A KUBE-EXT-UJ7IAW6DRGKUKXCH -s 10.244.0.0/16 -m comment --comment "pod traffic for shop/cart:http external destinations" -j KUBE-SVC-UJ7IAW6DRGKUKXCH
-A KUBE-EXT-UJ7IAW6DRGKUKXCH -m comment --comment "masquerade LOCAL traffic for shop/cart:http external destinations" -m addrtype --src-type LOCAL -j KUBE-MARK-MASQ
-A KUBE-EXT-UJ7IAW6DRGKUKXCH -m comment --comment "route LOCAL traffic for shop/cart:http external destinations" -m addrtype --src-type LOCAL -j KUBE-SVC-UJ7IAW6DRGKUKXCH
-A KUBE-EXT-UJ7IAW6DRGKUKXCH -j KUBE-SVL-UJ7IAW6DRGKUKXCH
-A KUBE-FW-LZKC4QLKZBS5XA3E -s 192.0.2.0/24 -m comment --comment "shop/front:https loadbalancer IP" -j KUBE-EXT-LZKC4QLKZBS5XA3E
-A KUBE-FW-LZKC4QLKZBS5XA3E -m comment --comment "other traffic to shop/front:https will be dropped by KUBE-PROXY-FIREWALL"
-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000
-A KUBE-NODEPORTS -p tcp -m comment --comment "shop/cart:http" -m tcp --dport 30417 -j KUBE-EXT-UJ7IAW6DRGKUKXCH
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0
-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully
-A KUBE-SEP-6E7XQMQ4RAYOWTTM -s 10.244.2.14/32 -m comment --comment "shop/front:https" -j KUBE-MARK-MASQ
-A KUBE-SEP-6E7XQMQ4RAYOWTTM -p tcp -m comment --comment "shop/front:https" -m tcp -j DNAT --to-destination 10.244.2.14:8443
-A KUBE-SEP-HDI3ZJ3CVIZPZ7DZ -s 10.244.1.9/32 -m comment --comment "shop/cart:http" -j KUBE-MARK-MASQ
-A KUBE-SEP-HDI3ZJ3CVIZPZ7DZ -p tcp -m comment --comment "shop/cart:http" -m tcp -j DNAT --to-destination 10.244.1.9:8080
-A KUBE-SEP-IT2ZTR26TO4XFPTO -s 10.244.0.2/32 -m comment --comment "kube-system/kube-dns:dns-tcp" -j KUBE-MARK-MASQ
-A KUBE-SEP-IT2ZTR26TO4XFPTO -p tcp -m comment --comment "kube-system/kube-dns:dns-tcp" -m tcp -j DNAT --to-destination 10.244.0.2:53
-A KUBE-SEP-ZP3FB6NMPNCO4VBJ -s 192.168.1.10/32 -m comment --comment "default/kubernetes:https" -j KUBE-MARK-MASQ
-A KUBE-SEP-ZP3FB6NMPNCO4VBJ -p tcp -m comment --comment "default/kubernetes:https" -m tcp -j DNAT --to-destination 192.168.1.10:6443
-A KUBE-SERVICES -d 10.96.0.1/32 -p tcp -m comment --comment "default/kubernetes:https cluster IP" -m tcp --dport 443 -j KUBE-SVC-NPX46M4PTMTKRN6Y
-A KUBE-SERVICES -d 10.96.0.10/32 -p tcp -m comment --comment "kube-system/kube-dns:dns-tcp cluster IP" -m tcp --dport 53 -j KUBE-SVC-ERIFXISQEP7F7OF4
-A KUBE-SERVICES -d 10.96.54.3/32 -p tcp -m comment --comment "shop/cart:http cluster IP" -m tcp --dport 80 -j KUBE-SVC-UJ7IAW6DRGKUKXCH
-A KUBE-SERVICES -d 10.96.70.18/32 -p tcp -m comment --comment "shop/front:https cluster IP" -m tcp --dport 443 -j KUBE-SVC-LZKC4QLKZBS5XA3E
-A KUBE-SERVICES -d 203.0.113.50/32 -p tcp -m comment --comment "shop/front:https loadbalancer IP" -m tcp --dport 443 -j KUBE-FW-LZKC4QLKZBS5XA3E
-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS
-A KUBE-SVC-ERIFXISQEP7F7OF4 ! -s 10.244.0.0/16 -d 10.96.0.10/32 -p tcp -m comment --comment "kube-system/kube-dns:dns-tcp cluster IP" -m tcp --dport 53 -j KUBE-MARK-MASQ
-A KUBE-SVC-ERIFXISQEP7F7OF4 -m comment --comment "kube-system/kube-dns:dns-tcp -> 10.244.0.2:53" -j KUBE-SEP-IT2ZTR26TO4XFPTO
-A KUBE-SVC-LZKC4QLKZBS5XA3E ! -s 10.244.0.0/16 -d 10.96.70.18/32 -p tcp -m comment --comment "shop/front:https cluster IP" -m tcp --dport 443 -j KUBE-MARK-MASQ
-A KUBE-SVC-LZKC4QLKZBS5XA3E -m comment --comment "shop/front:https -> 10.244.2.14:8443" -j KUBE-SEP-6E7XQMQ4RAYOWTTM
-A KUBE-SVC-NPX46M4PTMTKRN6Y ! -s 10.244.0.0/16 -d 10.96.0.1/32 -p tcp -m comment --comment "default/kubernetes:https cluster IP" -m tcp --dport 443 -j KUBE-MARK-MASQ
-A KUBE-SVC-NPX46M4PTMTKRN6Y -m comment --comment "default/kubernetes:https -> 192.168.1.10:6443" -j KUBE-SEP-ZP3FB6NMPNCO4VBJ
-A KUBE-SVC-UJ7IAW6DRGKUKXCH ! -s 10.244.0.0/16 -d 10.96.54.3/32 -p tcp -m comment --comment "shop/cart:http cluster IP" -m tcp --dport 80 -j KUBE-MARK-MASQ
-A KUBE-SVC-UJ7IAW6DRGKUKXCH -m comment --comment "shop/cart:http -> 10.244.1.9:8080" -j KUBE-SEP-HDI3ZJ3CVIZPZ7DZ
-A KUBE-SVL-UJ7IAW6DRGKUKXCH -m comment --comment "shop/cart:http -> 10.244.1.9:8080" -j KUBE-SEP-HDI3ZJ3CVIZPZ7DZ
COMMIT
# Completed on Wed Mar 13 10:02:11 2024
"#;

    /// A node that ran kube-proxy 1.22 (and 1.19 before it, without a reboot): `KUBE-XLB-`
    /// chains, `KUBE-MARK-DROP` and the kubelet's older `KUBE-FIREWALL` drop rule, and the
    /// 1.13-1.19 filter `INPUT` jump to `KUBE-SERVICES` that later releases only clean up.
    const KP_1_22: &str = r#"# Generated by iptables-save v1.8.7 on Thu Sep 16 14:20:31 2021
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:KUBE-EXTERNAL-SERVICES - [0:0]
:KUBE-FIREWALL - [0:0]
:KUBE-FORWARD - [0:0]
:KUBE-KUBELET-CANARY - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-PROXY-CANARY - [0:0]
:KUBE-SERVICES - [0:0]
-A INPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A INPUT -m comment --comment "kubernetes health check service ports" -j KUBE-NODEPORTS
-A INPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals" -j KUBE-EXTERNAL-SERVICES
-A INPUT -j KUBE-FIREWALL
-A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD
-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals" -j KUBE-EXTERNAL-SERVICES
-A OUTPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -j KUBE-FIREWALL
-A KUBE-FIREWALL -m comment --comment "kubernetes firewall for dropping marked packets" -m mark --mark 0x8000/0x8000 -j DROP
-A KUBE-FIREWALL ! -s 127.0.0.0/8 -d 127.0.0.0/8 -m comment --comment "block incoming localnet connections" -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP
-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark 0x4000/0x4000 -j ACCEPT
-A KUBE-FORWARD -s 10.244.0.0/16 -m comment --comment "kubernetes forwarding conntrack pod source rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A KUBE-FORWARD -d 10.244.0.0/16 -m comment --comment "kubernetes forwarding conntrack pod destination rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
COMMIT
# Completed on Thu Sep 16 14:20:31 2021
# Generated by iptables-save v1.8.7 on Thu Sep 16 14:20:31 2021
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-FW-3DU66DE6VORVEQVD - [0:0]
:KUBE-KUBELET-CANARY - [0:0]
:KUBE-MARK-DROP - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-PROXY-CANARY - [0:0]
:KUBE-SEP-4ZXWOF4N5ZYDYLMX - [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-SVC-3DU66DE6VORVEQVD - [0:0]
:KUBE-XLB-3DU66DE6VORVEQVD - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING
-A KUBE-FW-3DU66DE6VORVEQVD -m comment --comment "web/app:http loadbalancer IP" -j KUBE-XLB-3DU66DE6VORVEQVD
-A KUBE-FW-3DU66DE6VORVEQVD -m comment --comment "web/app:http loadbalancer IP" -j KUBE-MARK-DROP
-A KUBE-MARK-DROP -j MARK --set-xmark 0x8000/0x8000
-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000
-A KUBE-NODEPORTS -p tcp -m comment --comment "web/app:http" -m tcp --dport 31311 -j KUBE-XLB-3DU66DE6VORVEQVD
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0
-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully
-A KUBE-SEP-4ZXWOF4N5ZYDYLMX -s 10.244.3.4/32 -m comment --comment "web/app:http" -j KUBE-MARK-MASQ
-A KUBE-SEP-4ZXWOF4N5ZYDYLMX -p tcp -m comment --comment "web/app:http" -m tcp -j DNAT --to-destination 10.244.3.4:80
-A KUBE-SERVICES -d 10.96.33.200/32 -p tcp -m comment --comment "web/app:http cluster IP" -m tcp --dport 80 -j KUBE-SVC-3DU66DE6VORVEQVD
-A KUBE-SERVICES -d 192.0.2.10/32 -p tcp -m comment --comment "web/app:http loadbalancer IP" -m tcp --dport 80 -j KUBE-FW-3DU66DE6VORVEQVD
-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS
-A KUBE-SVC-3DU66DE6VORVEQVD ! -s 10.244.0.0/16 -d 10.96.33.200/32 -p tcp -m comment --comment "web/app:http cluster IP" -m tcp --dport 80 -j KUBE-MARK-MASQ
-A KUBE-SVC-3DU66DE6VORVEQVD -m comment --comment "web/app:http" -j KUBE-SEP-4ZXWOF4N5ZYDYLMX
-A KUBE-XLB-3DU66DE6VORVEQVD -s 10.244.0.0/16 -m comment --comment "Redirect pods trying to reach external loadbalancer VIP to clusterIP" -j KUBE-SVC-3DU66DE6VORVEQVD
-A KUBE-XLB-3DU66DE6VORVEQVD -m comment --comment "masquerade LOCAL traffic for web/app:http LB IP" -m addrtype --src-type LOCAL -j KUBE-MARK-MASQ
-A KUBE-XLB-3DU66DE6VORVEQVD -m comment --comment "route LOCAL traffic for web/app:http LB IP to service chain" -m addrtype --src-type LOCAL -j KUBE-SVC-3DU66DE6VORVEQVD
-A KUBE-XLB-3DU66DE6VORVEQVD -m comment --comment "Balancing rule 0 for web/app:http" -j KUBE-SEP-4ZXWOF4N5ZYDYLMX
COMMIT
# Completed on Thu Sep 16 14:20:31 2021
"#;

    /// A node without kube-proxy: the kubelet's chains (including the older `KUBE-MARK-DROP`
    /// and the 1.2x `KUBE-FIREWALL` drop rule), kube-router's and Calico-like chains whose
    /// names start with `KUBE-` but are not kube-proxy's, Docker, and rules that carry
    /// kube-proxy's comments but are not its jump rules (other targets, extra matches).
    const FOREIGN_ONLY: &str = r#"# Generated by iptables-save v1.8.9 on Wed Mar 13 10:02:11 2024
*mangle
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-IPTABLES-HINT - [0:0]
:KUBE-KUBELET-CANARY - [0:0]
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:DOCKER-USER - [0:0]
:KUBE-FIREWALL - [0:0]
:KUBE-KUBELET-CANARY - [0:0]
:KUBE-POD-FW-4BDGZEWEU32YM75H - [0:0]
:KUBE-ROUTER-FORWARD - [0:0]
-A INPUT -j KUBE-FIREWALL
-A INPUT -i eth0 -m comment --comment "kubernetes health check service ports" -j ACCEPT
-A FORWARD -m comment --comment "kube-router netpol - TEMCG2JMHZYE7H7T" -j KUBE-ROUTER-FORWARD
-A FORWARD -j DOCKER-USER
-A OUTPUT -j KUBE-FIREWALL
-A OUTPUT -m comment --comment "kubernetes service portals" -j ACCEPT
-A DOCKER-USER -j RETURN
-A KUBE-FIREWALL -m comment --comment "kubernetes firewall for dropping marked packets" -m mark --mark 0x8000/0x8000 -j DROP
-A KUBE-FIREWALL ! -s 127.0.0.0/8 -d 127.0.0.0/8 -m comment --comment "block incoming localnet connections" -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP
-A KUBE-ROUTER-FORWARD -m comment --comment "rule to jump traffic from POD name:web-0 namespace: shop to chain KUBE-POD-FW-4BDGZEWEU32YM75H" -d 10.244.1.9/32 -j KUBE-POD-FW-4BDGZEWEU32YM75H
-A KUBE-POD-FW-4BDGZEWEU32YM75H -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-KUBELET-CANARY - [0:0]
:KUBE-MARK-DROP - [0:0]
:KUBE-ROUTER-SVC - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-ROUTER-SVC
-A POSTROUTING -s 10.244.0.0/16 ! -d 10.244.0.0/16 -m comment --comment "kubernetes postrouting rules" -j MASQUERADE
-A KUBE-MARK-DROP -j MARK --set-xmark 0x8000/0x8000
COMMIT
"#;

    fn rules_of<'a>(dump: &'a str, table: &str) -> Vec<&'a str> {
        let mut in_table = false;
        dump.lines()
            .filter(|l| {
                if let Some(t) = l.strip_prefix('*') {
                    in_table = t == table;
                }
                in_table && l.starts_with("-A ")
            })
            .collect()
    }

    fn sorted(v: &[String]) -> Vec<String> {
        let mut v = v.to_vec();
        v.sort();
        v
    }

    fn strs(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn nat_1_28_removes_every_kube_proxy_chain_and_jump() {
        let plan = plan_table("nat", KP_1_28);
        assert_eq!(
            sorted(&plan.flush_delete),
            sorted(&strs(&[
                "KUBE-EXT-LZKC4QLKZBS5XA3E",
                "KUBE-EXT-UJ7IAW6DRGKUKXCH",
                "KUBE-FW-LZKC4QLKZBS5XA3E",
                "KUBE-MARK-MASQ",
                "KUBE-NODEPORTS",
                "KUBE-POSTROUTING",
                "KUBE-PROXY-CANARY",
                "KUBE-SEP-6E7XQMQ4RAYOWTTM",
                "KUBE-SEP-HDI3ZJ3CVIZPZ7DZ",
                "KUBE-SEP-IT2ZTR26TO4XFPTO",
                "KUBE-SEP-ZP3FB6NMPNCO4VBJ",
                "KUBE-SERVICES",
                "KUBE-SVC-ERIFXISQEP7F7OF4",
                "KUBE-SVC-LZKC4QLKZBS5XA3E",
                "KUBE-SVC-NPX46M4PTMTKRN6Y",
                "KUBE-SVC-UJ7IAW6DRGKUKXCH",
                "KUBE-SVL-UJ7IAW6DRGKUKXCH",
            ]))
        );
        assert!(plan.delete_only.is_empty());
        assert!(plan.kept.is_empty(), "{:?}", plan.kept);
        let jumps: Vec<String> = plan
            .jumps
            .iter()
            .map(|(c, s)| format!("-A {c} {s}"))
            .collect();
        assert_eq!(
            jumps,
            strs(&[
                r#"-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES"#,
                r#"-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES"#,
                r#"-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING"#,
            ])
        );
        // The kubelet's canary and Docker's chain stay.
        for c in ["KUBE-KUBELET-CANARY", "DOCKER"] {
            assert!(!plan.flush_delete.iter().any(|x| x == c), "{c} removed");
        }
    }

    #[test]
    fn filter_1_28_removes_kube_proxy_and_keeps_kubelet_and_foreign() {
        let plan = plan_table("filter", KP_1_28);
        assert_eq!(
            plan.flush_delete,
            strs(&[
                "KUBE-SERVICES",
                "KUBE-EXTERNAL-SERVICES",
                "KUBE-FORWARD",
                "KUBE-NODEPORTS",
                "KUBE-PROXY-FIREWALL",
                "KUBE-PROXY-CANARY",
            ])
        );
        assert!(plan.kept.is_empty(), "{:?}", plan.kept);
        // Every rule that jumps to a removed chain from a chain that stays is a deleted jump,
        // and nothing else is deleted: the result is exactly the foreign and kubelet rules.
        let deleted: Vec<String> = plan
            .jumps
            .iter()
            .map(|(c, s)| format!("-A {c} {s}"))
            .collect();
        assert_eq!(deleted.len(), 9);
        let left: Vec<&str> = rules_of(KP_1_28, "filter")
            .into_iter()
            .filter(|r| !deleted.iter().any(|d| d == r))
            .filter(|r| {
                let chain = r.split_whitespace().nth(1).unwrap();
                !plan.flush_delete.iter().any(|c| c == chain)
            })
            .collect();
        assert_eq!(
            left,
            vec![
                "-A INPUT -j KUBE-FIREWALL",
                r#"-A INPUT -m comment --comment "kube-router netpol - 4IA2OSFRMVNDXBVV" -j KUBE-ROUTER-INPUT"#,
                "-A INPUT -j FW-INPUT",
                "-A OUTPUT -j KUBE-FIREWALL",
                r#"-A OUTPUT -m comment --comment "kubernetes service portals" -j ACCEPT"#,
                "-A FW-INPUT -s 198.51.100.0/24 -p tcp -m tcp --dport 22 -j ACCEPT",
                r#"-A KUBE-FIREWALL ! -s 127.0.0.0/8 -d 127.0.0.0/8 -m comment --comment "block incoming localnet connections" -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP"#,
                r#"-A KUBE-ROUTER-INPUT -d 10.96.0.0/12 -m comment --comment "allow traffic to primary cluster IP range" -j RETURN"#,
            ]
        );
    }

    #[test]
    fn mangle_canary_is_deleted_without_a_flush() {
        let plan = plan_table("mangle", KP_1_28);
        assert_eq!(plan.delete_only, strs(&["KUBE-PROXY-CANARY"]));
        assert!(plan.flush_delete.is_empty() && plan.jumps.is_empty());
        assert_eq!(
            plan.restore_script(),
            "*mangle\n-X KUBE-PROXY-CANARY\nCOMMIT\n"
        );
    }

    #[test]
    fn mangle_canary_with_rules_is_left_alone() {
        let dump = "*mangle\n:PREROUTING ACCEPT [0:0]\n:KUBE-PROXY-CANARY - [0:0]\n\
                    -A KUBE-PROXY-CANARY -j RETURN\nCOMMIT\n";
        let plan = plan_table("mangle", dump);
        assert!(plan.is_empty());
        assert_eq!(plan.kept.len(), 1);
        assert!(plan.kept[0].contains("not empty"), "{:?}", plan.kept);
    }

    #[test]
    fn release_1_22_leftovers_xlb_and_cleanup_only_jump() {
        let nat = plan_table("nat", KP_1_22);
        assert_eq!(
            sorted(&nat.flush_delete),
            sorted(&strs(&[
                "KUBE-SERVICES",
                "KUBE-NODEPORTS",
                "KUBE-POSTROUTING",
                "KUBE-MARK-MASQ",
                "KUBE-PROXY-CANARY",
                "KUBE-FW-3DU66DE6VORVEQVD",
                "KUBE-SEP-4ZXWOF4N5ZYDYLMX",
                "KUBE-SVC-3DU66DE6VORVEQVD",
                "KUBE-XLB-3DU66DE6VORVEQVD",
            ]))
        );
        // KUBE-MARK-DROP is the kubelet's (kube-proxy never deletes it): only kube-proxy's own
        // KUBE-FW chain jumped to it, and that goes, so nothing needs keeping.
        assert!(!nat.flush_delete.iter().any(|c| c == "KUBE-MARK-DROP"));
        assert!(nat.kept.is_empty(), "{:?}", nat.kept);
        assert_eq!(nat.jumps.len(), 3);

        let filter = plan_table("filter", KP_1_22);
        assert!(filter.jumps.iter().any(|(c, s)| c == "INPUT"
            && s == r#"-m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES"#));
        assert_eq!(filter.jumps.len(), 7);
        assert!(!filter.flush_delete.iter().any(|c| c == "KUBE-FIREWALL"));
        assert!(filter.kept.is_empty(), "{:?}", filter.kept);
    }

    #[test]
    fn a_node_without_kube_proxy_gets_an_empty_plan() {
        for table in TABLES {
            let plan = plan_table(table, FOREIGN_ONLY);
            assert!(plan.is_empty(), "{table}: {plan:?}");
            assert!(plan.kept.is_empty(), "{table}: {plan:?}");
            assert_eq!(plan.restore_script(), "");
        }
    }

    #[test]
    fn absent_tables_and_empty_dumps_give_empty_plans() {
        assert!(plan_table("nat", "").is_empty());
        assert!(plan_table("raw", KP_1_28).is_empty());
        // `iptables-nft-save -t nat` of a namespace without the table.
        let empty = "# Generated by iptables-nft-save v1.8.9 (nf_tables)\n*nat\n\
                     :PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\
                     :POSTROUTING ACCEPT [0:0]\nCOMMIT\n";
        assert!(plan_table("nat", empty).is_empty());
    }

    #[test]
    fn a_foreign_rule_jumping_to_a_kube_proxy_chain_keeps_it_and_what_it_uses() {
        // A hostport chain of the old dockershim jumps to KUBE-MARK-MASQ; someone's chain jumps
        // to a service chain, which jumps to an endpoint chain.
        let dump = r#"*nat
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-HP-ABCDEFGHIJKLMNOP - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-SEP-AAAAAAAAAAAAAAAA - [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-SVC-BBBBBBBBBBBBBBBB - [0:0]
:MY-SHORTCUT - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A PREROUTING -j MY-SHORTCUT
-A KUBE-HP-ABCDEFGHIJKLMNOP -s 10.244.0.7/32 -m comment --comment "web_default_hostport" -j KUBE-MARK-MASQ
-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000
-A KUBE-SEP-AAAAAAAAAAAAAAAA -s 10.244.0.9/32 -j KUBE-MARK-MASQ
-A KUBE-SEP-AAAAAAAAAAAAAAAA -p tcp -m tcp -j DNAT --to-destination 10.244.0.9:80
-A KUBE-SERVICES -d 10.96.0.50/32 -p tcp -m tcp --dport 80 -j KUBE-SVC-BBBBBBBBBBBBBBBB
-A KUBE-SVC-BBBBBBBBBBBBBBBB -j KUBE-SEP-AAAAAAAAAAAAAAAA
-A MY-SHORTCUT -d 192.0.2.1/32 -g KUBE-SVC-BBBBBBBBBBBBBBBB
COMMIT
"#;
        let plan = plan_table("nat", dump);
        assert_eq!(plan.flush_delete, strs(&["KUBE-SERVICES"]));
        assert_eq!(plan.jumps.len(), 1);
        let kept: Vec<&str> = plan
            .kept
            .iter()
            .map(|k| k.split(':').next().unwrap())
            .collect();
        assert_eq!(
            kept,
            vec![
                "nat KUBE-MARK-MASQ",
                "nat KUBE-SVC-BBBBBBBBBBBBBBBB",
                "nat KUBE-SEP-AAAAAAAAAAAAAAAA",
            ]
        );
        assert!(plan.kept[0].contains("-A KUBE-HP-ABCDEFGHIJKLMNOP"));
        assert!(plan.kept[1].contains("-g KUBE-SVC-BBBBBBBBBBBBBBBB"));
    }

    #[test]
    fn duplicate_jump_rules_are_all_deleted() {
        let dump = r#"*nat
:PREROUTING ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
COMMIT
"#;
        let plan = plan_table("nat", dump);
        assert_eq!(plan.jumps.len(), 2);
        assert_eq!(
            plan.restore_script(),
            "*nat\n:KUBE-SERVICES - [0:0]\n\
             -D PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
             -D PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
             -X KUBE-SERVICES\nCOMMIT\n"
        );
    }

    #[test]
    fn restore_script_flushes_then_deletes_jumps_then_chains() {
        let plan = plan_table("filter", KP_1_22);
        let script = plan.restore_script();
        let lines: Vec<&str> = script.lines().collect();
        assert_eq!(lines.first(), Some(&"*filter"));
        assert_eq!(lines.last(), Some(&"COMMIT"));
        let first = |p: &str| lines.iter().position(|l| l.starts_with(p)).unwrap();
        let last = |p: &str| lines.iter().rposition(|l| l.starts_with(p)).unwrap();
        assert!(last(":") < first("-D "));
        assert!(last("-D ") < first("-X "));
        assert_eq!(lines.iter().filter(|l| l.starts_with(':')).count(), 5);
        assert_eq!(lines.iter().filter(|l| l.starts_with("-X ")).count(), 5);
    }

    #[test]
    fn split_args_follows_iptables_restore_quoting() {
        assert_eq!(
            split_args(r#"-m comment --comment "a \"quoted\" one" -j X"#),
            strs(&["-m", "comment", "--comment", r#"a "quoted" one"#, "-j", "X"])
        );
        assert_eq!(
            split_args("-m comment --comment kubernetes  -j KUBE-SERVICES"),
            strs(&[
                "-m",
                "comment",
                "--comment",
                "kubernetes",
                "-j",
                "KUBE-SERVICES"
            ])
        );
        assert_eq!(split_args(r#"--comment """#), strs(&["--comment", ""]));
    }

    #[test]
    fn incomplete_says_what_was_removed_and_what_failed() {
        let e = MigrateError::Incomplete {
            removed: Removed {
                nft_tables: vec!["ip kube-proxy".into()],
                ..Removed::default()
            },
            failures: vec![MigrateError::Iptables {
                program: "/usr/sbin/iptables-nft-restore --noflush".into(),
                message: "exit status: 4: line 6: CHAIN_DEL failed".into(),
            }],
        };
        assert_eq!(
            e.to_string(),
            "kube-proxy's leftovers were only partly removed (removed: nftables: ip kube-proxy); \
             /usr/sbin/iptables-nft-restore --noflush: exit status: 4: line 6: CHAIN_DEL failed"
        );
    }

    #[test]
    fn removed_prints_one_line() {
        let mut r = Removed::default();
        assert!(r.is_empty());
        assert_eq!(r.to_string(), "nothing");
        r.notes.push("nft ip6: no binaries".into());
        assert!(r.is_empty());
        r.nft_tables.push("ip kube-proxy".into());
        r.iptables
            .push("legacy ip nat: 17 chains, 3 jump rules".into());
        assert!(!r.is_empty());
        assert_eq!(
            r.to_string(),
            "nftables: ip kube-proxy; iptables: legacy ip nat: 17 chains, 3 jump rules"
        );
    }
}
