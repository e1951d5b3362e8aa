//! The IR as nft text, written in the form `nft list table` prints it back, so a rendered
//! file and a listing of the kernel compare after sorting set elements only.

use std::fmt::Write;
use std::net::IpAddr;

use crate::ruleset::ir::{
    write_concat, BaseChain, Chain, ChainType, CmpOp, Element, ElementData, Expr, Family, FibAddr,
    Field, Hook, KeyType, MapData, Rule, Ruleset, Set, Table, Value, Verdict,
};

/// The whole script for `nft -f`: for each table, create-if-missing, delete and recreate,
/// all in the one transaction `nft -f` makes of a file, so applying it over an older copy
/// replaces the table atomically.
pub fn script(rs: &Ruleset) -> String {
    let mut out = Out::string(estimate(rs));
    script_to(&mut out, rs);
    out.buf
}

/// [`script`] written to `w` as it is produced, through a small buffer: the whole text of
/// a 10,000-Service ruleset (tens of MB) never exists at once.
pub fn write_script(rs: &Ruleset, w: &mut dyn std::io::Write) -> std::io::Result<()> {
    let mut out = Out::writer(w);
    script_to(&mut out, rs);
    out.finish()
}

fn script_to(out: &mut Out, rs: &Ruleset) {
    for t in &rs.tables {
        let fam = family_name(t.family);
        let _ = writeln!(out, "table {fam} {} {{}}", t.name);
        let _ = writeln!(out, "delete table {fam} {}", t.name);
    }
    for t in &rs.tables {
        table(out, t);
    }
}

/// Text being produced: kept whole in a `String`, or passed on to an `io::Write` whenever
/// more than `FLUSH_AT` bytes are pending (at element, rule and line boundaries). Derefs
/// to the pending `String`, so the formatting functions write into it directly.
struct Out<'w> {
    buf: String,
    w: Option<&'w mut dyn std::io::Write>,
    err: Option<std::io::Error>,
}

const FLUSH_AT: usize = 64 * 1024;

impl<'w> Out<'w> {
    fn string(capacity: usize) -> Out<'static> {
        Out {
            buf: String::with_capacity(capacity),
            w: None,
            err: None,
        }
    }

    fn writer(w: &'w mut dyn std::io::Write) -> Out<'w> {
        Out {
            buf: String::with_capacity(2 * FLUSH_AT),
            w: Some(w),
            err: None,
        }
    }

    /// Passes the pending text on if there is enough of it (never for a `String`).
    fn step(&mut self) {
        if self.buf.len() >= FLUSH_AT {
            self.flush();
        }
    }

    fn flush(&mut self) {
        if let Some(w) = self.w.as_mut() {
            if self.err.is_none() {
                if let Err(e) = w.write_all(self.buf.as_bytes()) {
                    self.err = Some(e);
                }
            }
            self.buf.clear();
        }
    }

    /// Writes what is pending; the first write error, if any.
    fn finish(mut self) -> std::io::Result<()> {
        self.flush();
        match self.err.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

impl std::ops::Deref for Out<'_> {
    type Target = String;
    fn deref(&self) -> &String {
        &self.buf
    }
}

impl std::ops::DerefMut for Out<'_> {
    fn deref_mut(&mut self) -> &mut String {
        &mut self.buf
    }
}

fn estimate(rs: &Ruleset) -> usize {
    rs.tables
        .iter()
        .map(|t| {
            t.sets.iter().map(|s| s.elements.len() * 64).sum::<usize>()
                + t.chains
                    .iter()
                    .map(|c| 64 + c.rules.len() * 96)
                    .sum::<usize>()
        })
        .sum()
}

/// One table block, exactly as `nft list table` prints it (set elements one per line).
pub fn table_text(t: &Table) -> String {
    let mut out = Out::string(0);
    table(&mut out, t);
    out.buf
}

fn table(out: &mut Out, t: &Table) {
    let _ = writeln!(out, "table {} {} {{", family_name(t.family), t.name);
    if let Some(c) = &t.comment {
        let _ = writeln!(out, "\tcomment {}", quote(c));
    }
    let mut first = true;
    for s in &t.sets {
        if !first {
            out.push('\n');
        }
        first = false;
        set(out, t.family, s);
    }
    for c in &t.chains {
        if !first {
            out.push('\n');
        }
        first = false;
        chain(out, t.family, c);
    }
    out.push_str("}\n");
}

pub fn family_name(f: Family) -> &'static str {
    match f {
        Family::V4 => "ip",
        Family::V6 => "ip6",
    }
}

fn key_type(f: Family, k: KeyType) -> &'static str {
    match (k, f) {
        (KeyType::Addr, Family::V4) => "ipv4_addr",
        (KeyType::Addr, Family::V6) => "ipv6_addr",
        (KeyType::Proto, _) => "inet_proto",
        (KeyType::Service, _) => "inet_service",
        (KeyType::Slot, _) => "integer",
    }
}

/// The expression a key component is declared by in `typeof` form: the fields the
/// endpoint maps are looked up with.
fn typeof_expr(f: Family, k: KeyType) -> &'static str {
    match k {
        KeyType::Addr => field(f, Field::Daddr),
        KeyType::Proto => field(f, Field::L4Proto),
        KeyType::Service => field(f, Field::Dport),
        KeyType::Slot => "numgen random mod 1",
    }
}

/// Whether a set is declared with `typeof`: nft has no type name for an endpoint slot.
pub fn uses_typeof(s: &Set) -> bool {
    s.key.contains(&KeyType::Slot)
}

fn join_types(f: Family, ks: &[KeyType]) -> String {
    ks.iter()
        .map(|k| key_type(f, *k))
        .collect::<Vec<_>>()
        .join(" . ")
}

fn set(out: &mut Out, f: Family, s: &Set) {
    let kw = if s.is_map() { "map" } else { "set" };
    let _ = writeln!(out, "\t{kw} {} {{", s.name);
    if uses_typeof(s) {
        let exprs = |ks: &[KeyType]| -> String {
            let v: Vec<&str> = ks.iter().map(|k| typeof_expr(f, *k)).collect();
            v.join(" . ")
        };
        let _ = write!(out, "\t\ttypeof {}", exprs(&s.key));
        match &s.data {
            Some(MapData::Verdict) => out.push_str(" : verdict"),
            Some(MapData::Values(v)) => {
                let _ = write!(out, " : {}", exprs(v));
            }
            None => {}
        }
    } else {
        let _ = write!(out, "\t\ttype {}", join_types(f, &s.key));
        match &s.data {
            Some(MapData::Verdict) => out.push_str(" : verdict"),
            Some(MapData::Values(v)) => {
                let _ = write!(out, " : {}", join_types(f, v));
            }
            None => {}
        }
    }
    out.push('\n');
    let flags: Vec<&str> = [(s.flags.dynamic, "dynamic"), (s.flags.timeout, "timeout")]
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, n)| *n)
        .collect();
    if !flags.is_empty() {
        let _ = writeln!(out, "\t\tflags {}", flags.join(","));
    }
    if let Some(t) = s.timeout {
        let _ = writeln!(out, "\t\ttimeout {}", duration(t));
    }
    if let Some(c) = &s.comment {
        let _ = writeln!(out, "\t\tcomment {}", quote(c));
    }
    if !s.elements.is_empty() {
        out.push_str("\t\telements = { ");
        for (i, (key, data)) in s.elements.iter().enumerate() {
            if i > 0 {
                out.push_str(",\n\t\t\t     ");
                out.step();
            }
            element_parts(out, key, data.as_ref());
        }
        out.push_str(" }\n");
    }
    out.push_str("\t}\n");
}

pub fn element_text(e: &Element) -> String {
    let mut s = String::new();
    element(&mut s, e);
    s
}

pub fn element(out: &mut String, e: &Element) {
    element_parts(out, &e.key, e.data.as_ref());
}

fn element_parts(out: &mut String, key: &[Value], data: Option<&ElementData>) {
    values(out, key);
    match data {
        Some(ElementData::Verdict(v)) => {
            out.push_str(" : ");
            verdict(out, Family::V4, v);
        }
        Some(ElementData::Values(v)) => {
            out.push_str(" : ");
            values(out, v);
        }
        None => {}
    }
}

fn values(out: &mut String, vs: &[Value]) {
    let _ = write_concat(out, vs);
}

/// nft prints timeouts in the largest units that divide them: `3h`, `10m`, `1h30m`, `45s`.
pub fn duration(secs: u32) -> String {
    if secs == 0 {
        return "0s".into();
    }
    let (d, h, m, s) = (secs / 86400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    let mut out = String::new();
    for (n, unit) in [(d, "d"), (h, "h"), (m, "m"), (s, "s")] {
        if n > 0 {
            let _ = write!(out, "{n}{unit}");
        }
    }
    out
}

fn chain(out: &mut Out, f: Family, c: &Chain) {
    let _ = writeln!(out, "\tchain {} {{", c.name);
    if let Some(cm) = &c.comment {
        let _ = writeln!(out, "\t\tcomment {}", quote(cm));
    }
    if let Some(b) = &c.base {
        let _ = writeln!(
            out,
            "\t\ttype {} hook {} priority {}; policy accept;",
            match b.kind {
                ChainType::Filter => "filter",
                ChainType::Nat => "nat",
            },
            hook_name(b.hook),
            priority(b)
        );
    }
    for r in &c.rules {
        out.push_str("\t\t");
        rule(out, f, r);
        out.push('\n');
        out.step();
    }
    out.push_str("\t}\n");
}

fn hook_name(h: Hook) -> &'static str {
    match h {
        Hook::Prerouting => "prerouting",
        Hook::Input => "input",
        Hook::Forward => "forward",
        Hook::Output => "output",
        Hook::Postrouting => "postrouting",
    }
}

/// nft names a priority only where the name is standard for that hook.
fn priority(b: &BaseChain) -> String {
    let named = match b.hook {
        Hook::Prerouting => Some(("dstnat", -100)),
        Hook::Postrouting => Some(("srcnat", 100)),
        _ => None,
    };
    if b.priority == 0 {
        return "filter".into();
    }
    if let Some((name, base)) = named {
        let d = b.priority - base;
        return match d {
            0 => name.to_string(),
            d if d < 0 => format!("{name} - {}", -d),
            d => format!("{name} + {d}"),
        };
    }
    b.priority.to_string()
}

/// One rule, as nft lists it.
pub fn rule(out: &mut String, f: Family, r: &Rule) {
    let mut parts: Vec<String> = r.exprs.iter().map(|e| expr(f, e)).collect();
    if let Some(v) = &r.verdict {
        let mut s = String::new();
        verdict(&mut s, f, v);
        parts.push(s);
    }
    if let Some(c) = &r.comment {
        parts.push(format!("comment {}", quote(c)));
    }
    out.push_str(&parts.join(" "));
}

pub fn rule_text(f: Family, r: &Rule) -> String {
    let mut s = String::new();
    rule(&mut s, f, r);
    s
}

fn field(f: Family, fl: Field) -> &'static str {
    match (fl, f) {
        (Field::Saddr, Family::V4) => "ip saddr",
        (Field::Saddr, Family::V6) => "ip6 saddr",
        (Field::Daddr, Family::V4) => "ip daddr",
        (Field::Daddr, Family::V6) => "ip6 daddr",
        (Field::L4Proto, _) => "meta l4proto",
        (Field::Dport, _) => "th dport",
        (Field::Random(_), _) => "numgen random",
    }
}

fn key(f: Family, k: &[Field]) -> String {
    let mut out = String::new();
    for (i, x) in k.iter().enumerate() {
        if i > 0 {
            out.push_str(" . ");
        }
        out.push_str(field(f, *x));
        if let Field::Random(n) = x {
            let _ = write!(out, " mod {n}");
        }
    }
    out
}

pub fn prefix(addr: &IpAddr, len: u8) -> String {
    let full = if addr.is_ipv4() { 32 } else { 128 };
    if len >= full {
        addr.to_string()
    } else {
        format!("{addr}/{len}")
    }
}

fn mark(m: u32) -> String {
    format!("0x{m:08x}")
}

fn expr(f: Family, e: &Expr) -> String {
    match e {
        Expr::AddrCmp {
            field: fl,
            op,
            addr,
            prefix_len,
        } => {
            let op = match op {
                CmpOp::Eq => "",
                CmpOp::Neq => "!= ",
            };
            format!("{} {op}{}", field(f, *fl), prefix(addr, *prefix_len))
        }
        Expr::Iifname { op, name, prefix } => {
            let op = match op {
                CmpOp::Eq => "",
                CmpOp::Neq => "!= ",
            };
            let star = if *prefix { "*" } else { "" };
            format!("iifname {op}\"{name}{star}\"")
        }
        Expr::L4Proto(p) => format!("meta l4proto {}", p.name()),
        Expr::Lookup { key: k, set } => format!("{} @{set}", key(f, k)),
        Expr::CtStateNew => "ct state new".into(),
        Expr::CtStatusDnat => "ct status dnat".into(),
        Expr::FibLocal(FibAddr::Saddr) => "fib saddr type local".into(),
        Expr::FibLocal(FibAddr::Daddr) => "fib daddr type local".into(),
        Expr::Numgen { modulus, value } => format!("numgen random mod {modulus} {value}"),
        Expr::MarkSet(m) => format!("meta mark & {} != {}", mark(*m), mark(0)),
        Expr::MarkOr(m) => format!("meta mark set meta mark | {}", mark(*m)),
        Expr::MarkXor(m) => format!("meta mark set meta mark ^ {}", mark(*m)),
        Expr::Counter => "counter packets 0 bytes 0".into(),
        Expr::Update { set, key: k } => format!("update @{set} {{ {} }}", key(f, k)),
    }
}

fn verdict(out: &mut String, f: Family, v: &Verdict) {
    match v {
        Verdict::Accept => out.push_str("accept"),
        Verdict::Drop => out.push_str("drop"),
        Verdict::Return => out.push_str("return"),
        Verdict::Reject => out.push_str("reject"),
        Verdict::Masquerade => out.push_str("masquerade fully-random"),
        Verdict::Jump(c) => {
            let _ = write!(out, "jump {c}");
        }
        Verdict::Goto(c) => {
            let _ = write!(out, "goto {c}");
        }
        Verdict::Vmap { key: k, map } => {
            let _ = write!(out, "{} vmap @{map}", key(f, k));
        }
        Verdict::Dnat { proto, addr, port } => {
            let target = match addr {
                IpAddr::V4(a) => format!("{a}:{port}"),
                IpAddr::V6(a) => format!("[{a}]:{port}"),
            };
            let _ = write!(out, "meta l4proto {} dnat to {target}", proto.name());
        }
        Verdict::DnatMap { proto, key: k, map } => {
            // nft folds the protocol match into the port field when listing (`tcp dport`),
            // so this is written the way it lists.
            let k = match proto {
                Some(p) => key(f, k).replace("th dport", &format!("{} dport", p.name())),
                None => key(f, k),
            };
            let _ = write!(out, "dnat {} to {k} map @{map}", family_name(f));
        }
    }
}

/// nft comments are double-quoted strings without escapes; the builder never puts a quote
/// in one, but a stray one must not break the script.
fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "'"))
}

/// A transaction for people: `full sync` with totals for a wholesale replace, otherwise
/// `partial sync` and one line per changed object (`+`/`-` chain, `~` rewritten chain,
/// `+`/`-` element). `apply` and `run --dry-run` print this.
pub fn describe(tx: &crate::ruleset::tx::Transaction) -> String {
    let mut out = Out::string(0);
    describe_to(&mut out, tx);
    out.buf
}

/// [`describe`] written to `w` as it is produced (a partial sync that changes 100k
/// elements describes each of them).
pub fn write_describe(
    tx: &crate::ruleset::tx::Transaction,
    w: &mut dyn std::io::Write,
) -> std::io::Result<()> {
    let mut out = Out::writer(w);
    describe_to(&mut out, tx);
    out.finish()
}

fn describe_to(out: &mut Out, tx: &crate::ruleset::tx::Transaction) {
    use crate::ruleset::tx::Op;
    if tx.is_empty() {
        out.push_str("partial sync: no changes\n");
        return;
    }
    let full = tx.is_full();
    let count = |f: &dyn Fn(&Op) -> usize| tx.ops.iter().map(f).sum::<usize>();
    let chains = count(&|o| matches!(o, Op::AddChain { .. }) as usize);
    let rules = count(&|o| matches!(o, Op::AddRule { .. }) as usize);
    let added = count(&|o| match o {
        Op::AddElements { elements, .. } => elements.len(),
        _ => 0,
    });
    let removed = count(&|o| match o {
        Op::DeleteElements { elements, .. } => elements.len(),
        _ => 0,
    });
    let filled = count(&|o| matches!(o, Op::FillSet { .. }) as usize);
    let kind = if full { "full sync" } else { "partial sync" };
    let _ = write!(
        out,
        "{kind}: {} operations; {chains} chains added, {rules} rules added, {added} elements added, {removed} elements removed",
        tx.ops.len()
    );
    if filled > 0 {
        let _ = write!(out, ", {filled} sets filled with all their elements");
    }
    out.push('\n');
    if full {
        for o in &tx.ops {
            if let Op::DeleteTable { family, name } = o {
                let _ = writeln!(out, "= table {} {name} replaced", family_name(*family));
            }
        }
        let mut rewritten = Vec::new();
        for o in &tx.ops {
            if let Op::FlushChain {
                family,
                table,
                chain,
            } = o
            {
                let base = crate::ruleset::skeleton().chain(chain).map(|c| c.base);
                if matches!(base, Some(Some(_))) && !rewritten.contains(&(family, table)) {
                    rewritten.push((family, table));
                }
            }
        }
        for (family, name) in rewritten {
            let _ = writeln!(
                out,
                "= table {} {name} rewritten in place (dynamic sets kept)",
                family_name(*family)
            );
        }
        return;
    }
    for o in &tx.ops {
        match o {
            Op::AddChain { chain, .. } => {
                let _ = writeln!(out, "+ chain {}", chain.name);
            }
            Op::FlushChain { chain, .. } => {
                let _ = writeln!(out, "~ chain {chain} (rules replaced)");
            }
            Op::DeleteChain { chain, .. } => {
                let _ = writeln!(out, "- chain {chain}");
            }
            Op::AddRule {
                family,
                chain,
                rule: r,
                ..
            } => {
                let _ = write!(out, "+ rule {chain}: ");
                rule(out, *family, r);
                out.push('\n');
                out.step();
            }
            Op::AddElements { set, elements, .. } => {
                for e in elements {
                    out.push_str("+ element ");
                    out.push_str(set);
                    out.push_str(" { ");
                    element(out, e);
                    out.push_str(" }\n");
                    out.step();
                }
            }
            Op::DeleteElements { set, elements, .. } => {
                for e in elements {
                    out.push_str("- element ");
                    out.push_str(set);
                    out.push_str(" { ");
                    element(out, e);
                    out.push_str(" }\n");
                    out.step();
                }
            }
            Op::FillSet { set, .. } => {
                let _ = writeln!(out, "+ every element of {set}");
            }
            Op::FlushSet { set, .. } => {
                let _ = writeln!(out, "~ set {set} flushed");
            }
            Op::DeleteSet { set, .. } => {
                let _ = writeln!(out, "- set {set}");
            }
            Op::AddTable { .. } | Op::DeleteTable { .. } | Op::AddSet { .. } => {}
        }
        out.step();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objects::tests::FULL;
    use crate::ruleset::diff;

    /// The ruleset of `services` ClusterIP Services with three endpoints each.
    fn synthetic(services: usize) -> Ruleset {
        let mut yaml = String::new();
        for i in 0..services {
            let (hi, lo) = (i / 250, i % 250 + 1);
            yaml += &format!(
                "---\napiVersion: v1\nkind: Service\nmetadata: {{name: s{i}, namespace: default}}\n\
                 spec: {{clusterIP: 10.96.{hi}.{lo}, ports: [{{name: http, port: 80, protocol: TCP}}]}}\n\
                 ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\naddressType: IPv4\n\
                 metadata: {{name: s{i}-1, namespace: default, labels: {{kubernetes.io/service-name: s{i}}}}}\n\
                 ports: [{{name: http, port: 8080, protocol: TCP}}]\nendpoints:\n"
            );
            for e in 1..=3 {
                yaml += &format!(
                    "- {{addresses: [10.244.{hi}.{}], conditions: {{ready: true}}}}\n",
                    lo * 3 % 250 + e
                );
            }
        }
        let objects =
            crate::ruleset::render::read_sources([("synthetic", yaml.as_str())], &mut vec![])
                .expect("synthetic input reads");
        let opts = crate::model::Options {
            hostname: "node-a".into(),
            ..Default::default()
        };
        crate::ruleset::render::ruleset(&objects, &opts).0
    }

    /// Counts the writes, to show that the text went out in pieces.
    struct Pieces(Vec<u8>, usize);

    impl std::io::Write for Pieces {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.extend_from_slice(b);
            self.1 += 1;
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn streamed(f: impl FnOnce(&mut Pieces) -> std::io::Result<()>) -> (String, usize) {
        let mut p = Pieces(Vec::new(), 0);
        f(&mut p).unwrap();
        (String::from_utf8(p.0).unwrap(), p.1)
    }

    #[test]
    fn streamed_script_and_description_equal_the_strings() {
        let small = synthetic(3);
        let (text, _) = streamed(|w| write_script(&small, w));
        assert_eq!(text, script(&small));
        let big = synthetic(1500);
        let (text, writes) = streamed(|w| write_script(&big, w));
        assert_eq!(text, script(&big));
        assert!(writes > 5, "{} bytes in {writes} writes", text.len());

        let full = diff::full(&big);
        let (text, _) = streamed(|w| write_describe(&full, w));
        assert_eq!(text, describe(&full));
        assert!(text.starts_with("full sync: "), "{text}");
        let partial = diff::diff(&big, &synthetic(600));
        let (text, writes) = streamed(|w| write_describe(&partial, w));
        assert_eq!(text, describe(&partial));
        assert!(text.starts_with("partial sync: "), "{text}");
        assert!(writes > 1, "{} bytes in {writes} writes", text.len());
        let none = diff::diff(&big, &big);
        let (text, _) = streamed(|w| write_describe(&none, w));
        assert_eq!(text, "partial sync: no changes\n");
    }

    #[test]
    fn a_write_error_is_returned() {
        struct Broken;
        impl std::io::Write for Broken {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                Err(std::io::Error::from(std::io::ErrorKind::BrokenPipe))
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let err = write_script(&synthetic(1500), &mut Broken).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::BrokenPipe);
    }

    /// Every field of a fully populated cluster the model reads reaches the script.
    #[test]
    fn a_full_cluster_renders_every_field() {
        let objects = crate::ruleset::render::read_sources([("full.yaml", FULL)], &mut Vec::new())
            .expect("input reads");
        for (cluster_cidrs, hostname) in [(vec![], "node-a"), (vec!["10.244.0.0/16"], "node-b")] {
            let opts = crate::model::Options {
                hostname: hostname.into(),
                cluster_cidrs: cluster_cidrs.iter().map(|c| c.parse().unwrap()).collect(),
                ..Default::default()
            };
            let (rs, _) = crate::ruleset::render::ruleset(&objects, &opts);
            let script = script(&rs);
            for want in [
                "10.244.0.5",
                "192.0.2.10",
                "198.51.100.7",
                "203.0.113.0/24",
                "10.244.0.8",
            ] {
                assert!(script.contains(want), "{want} missing:\n{script}");
            }
            assert!(!script.contains("192.0.2.11"), "{script}");
        }
    }
}
