//! nft text -> IR: the inverse of `nft::text`. It reads exactly the constructs the printer
//! writes (and a little more of nft's surface syntax: `#` comments, `;` between
//! statements, one-line blocks), so a rendered script can be checked without the kernel,
//! the rule skeleton can be loaded from text, and a tracer can walk the rules.
//!
//! `parse_script(&text::script(&rs)) == rs` for every ruleset the builder makes.

use std::net::IpAddr;

use crate::ruleset::ir::{
    BaseChain, Chain, ChainType, CmpOp, ElementData, Elements, Expr, Family, FibAddr, Field, Hook,
    KeyType, MapData, Proto, Rule, Ruleset, Set, SetFlags, Table, Value, Verdict,
};

/// A syntax or type error, with the 1-based line it was found on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct ParseError {
    pub line: usize,
    pub message: String,
}

type Result<T> = std::result::Result<T, ParseError>;

fn err<T>(line: usize, message: impl Into<String>) -> Result<T> {
    Err(ParseError {
        line,
        message: message.into(),
    })
}

/// A whole `nft -f` script as `text::script` writes it: `table <fam> <name> {}` /
/// `delete table <fam> <name>` commands and table blocks, applied in order. The result
/// holds the tables that exist at the end, in the order they were (last) created.
pub fn parse_script(text: &str) -> Result<Ruleset> {
    let toks = tokenize(text)?;
    let mut p = Parser::new(&toks, text);
    let mut rs = Ruleset::default();
    loop {
        p.skip_seps();
        let Some(tok) = p.peek() else { break };
        let line = tok.line;
        if tok.kind == Kind::Close {
            return err(line, "unbalanced '}': no block is open");
        }
        match p.word()?.as_str() {
            "table" => {
                let t = p.table_block()?;
                match rs
                    .tables
                    .iter_mut()
                    .find(|x| x.family == t.family && x.name == t.name)
                {
                    Some(old) => merge(old, t, line)?,
                    None => rs.tables.push(t),
                }
            }
            "delete" => {
                p.keyword("table")?;
                let (family, name) = p.table_head()?;
                p.end_statement()?;
                let Some(i) = rs
                    .tables
                    .iter()
                    .position(|x| x.family == family && x.name == name)
                else {
                    return err(line, format!("delete table {name}: no such table"));
                };
                rs.tables.remove(i);
            }
            other => return err(line, format!("unknown command {other:?}")),
        }
    }
    Ok(rs)
}

/// One `table <fam> <name> { ... }` block, as `text::table_text` writes it.
pub fn parse_table(text: &str) -> Result<Table> {
    let toks = tokenize(text)?;
    let mut p = Parser::new(&toks, text);
    p.skip_seps();
    let Some(first) = p.peek() else {
        return err(1, "expected a table block, found nothing");
    };
    let line = first.line;
    if p.word()? != "table" {
        return err(line, "expected a table block");
    }
    let t = p.table_block()?;
    p.skip_seps();
    if let Some(tok) = p.peek() {
        return err(tok.line, "unexpected text after the table block");
    }
    Ok(t)
}

/// A second block for a table that exists adds to it, as in nft.
fn merge(old: &mut Table, new: Table, line: usize) -> Result<()> {
    if new.comment.is_some() {
        old.comment = new.comment;
    }
    for s in new.sets {
        if old.set(&s.name).is_some() {
            return err(line, format!("set {} is defined twice", s.name));
        }
        old.sets.push(s);
    }
    for c in new.chains {
        if old.chain(&c.name).is_some() {
            return err(line, format!("chain {} is defined twice", c.name));
        }
        old.chains.push(c);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Tokens

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Word(String),
    Str(String),
    Open,
    Close,
    Comma,
    /// A newline or `;`: the end of a statement.
    Sep,
}

#[derive(Debug, Clone)]
struct Tok {
    kind: Kind,
    line: usize,
}

fn tokenize(text: &str) -> Result<Vec<Tok>> {
    let mut out = Vec::new();
    let mut line = 1;
    let mut chars = text.char_indices().peekable();
    while let Some(&(i, c)) = chars.peek() {
        let single = match c {
            '\n' => Some(Kind::Sep),
            ';' => Some(Kind::Sep),
            '{' => Some(Kind::Open),
            '}' => Some(Kind::Close),
            ',' => Some(Kind::Comma),
            _ => None,
        };
        if let Some(kind) = single {
            out.push(Tok { kind, line });
            chars.next();
            if c == '\n' {
                line += 1;
            }
            continue;
        }
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        if c == '#' {
            while chars.peek().is_some_and(|(_, c)| *c != '\n') {
                chars.next();
            }
            continue;
        }
        if c == '"' {
            chars.next();
            let start = line;
            let mut s = String::new();
            loop {
                match chars.next() {
                    Some((_, '"')) => break,
                    Some((_, ch)) => {
                        if ch == '\n' {
                            line += 1;
                        }
                        s.push(ch);
                    }
                    None => return err(start, "unterminated string"),
                }
            }
            out.push(Tok {
                kind: Kind::Str(s),
                line: start,
            });
            continue;
        }
        let mut end = i;
        while let Some(&(j, ch)) = chars.peek() {
            if ch.is_whitespace() || matches!(ch, ';' | '{' | '}' | ',' | '"') {
                break;
            }
            end = j + ch.len_utf8();
            chars.next();
        }
        out.push(Tok {
            kind: Kind::Word(text[i..end].to_string()),
            line,
        });
    }
    Ok(out)
}

fn describe(k: &Kind) -> String {
    match k {
        Kind::Word(w) => format!("{w:?}"),
        Kind::Str(s) => format!("\"{s}\""),
        Kind::Open => "'{'".into(),
        Kind::Close => "'}'".into(),
        Kind::Comma => "','".into(),
        Kind::Sep => "end of statement".into(),
    }
}

// ---------------------------------------------------------------------------------------
// Parser

struct Parser<'t> {
    toks: &'t [Tok],
    pos: usize,
    /// The line of the last token, for errors at the end of input.
    last_line: usize,
}

impl<'t> Parser<'t> {
    fn new(toks: &'t [Tok], text: &str) -> Self {
        Parser {
            toks,
            pos: 0,
            last_line: text.lines().count().max(1),
        }
    }

    fn peek(&self) -> Option<&'t Tok> {
        self.toks.get(self.pos)
    }

    fn peek_kind(&self) -> Option<&'t Kind> {
        self.peek().map(|t| &t.kind)
    }

    fn peek_word(&self) -> Option<&'t str> {
        match self.peek_kind() {
            Some(Kind::Word(w)) => Some(w),
            _ => None,
        }
    }

    fn peek_word_at(&self, ahead: usize) -> Option<&'t str> {
        match self.toks.get(self.pos + ahead).map(|t| &t.kind) {
            Some(Kind::Word(w)) => Some(w),
            _ => None,
        }
    }

    fn line(&self) -> usize {
        self.peek().map(|t| t.line).unwrap_or(self.last_line)
    }

    fn next(&mut self, what: &str) -> Result<&'t Tok> {
        match self.toks.get(self.pos) {
            Some(t) => {
                self.pos += 1;
                Ok(t)
            }
            None => err(
                self.last_line,
                format!("unexpected end of input, expected {what}"),
            ),
        }
    }

    fn word(&mut self) -> Result<String> {
        let t = self.next("a word")?;
        match &t.kind {
            Kind::Word(w) => Ok(w.clone()),
            k => err(t.line, format!("expected a word, found {}", describe(k))),
        }
    }

    fn keyword(&mut self, kw: &str) -> Result<()> {
        let t = self.next(kw)?;
        match &t.kind {
            Kind::Word(w) if w == kw => Ok(()),
            k => err(t.line, format!("expected {kw:?}, found {}", describe(k))),
        }
    }

    fn eat(&mut self, kw: &str) -> bool {
        if self.peek_word() == Some(kw) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn string(&mut self) -> Result<String> {
        let t = self.next("a quoted string")?;
        match &t.kind {
            Kind::Str(s) => Ok(s.clone()),
            k => err(
                t.line,
                format!("expected a quoted string, found {}", describe(k)),
            ),
        }
    }

    fn open(&mut self) -> Result<usize> {
        let t = self.next("'{'")?;
        match &t.kind {
            Kind::Open => Ok(t.line),
            k => err(t.line, format!("expected '{{', found {}", describe(k))),
        }
    }

    fn skip_seps(&mut self) {
        while matches!(self.peek_kind(), Some(Kind::Sep)) {
            self.pos += 1;
        }
    }

    fn skip_newlines(&mut self) {
        self.skip_seps();
    }

    /// A statement ends at a newline, `;`, a closing brace (left in place) or the input.
    fn end_statement(&mut self) -> Result<()> {
        match self.peek_kind() {
            None | Some(Kind::Close) => Ok(()),
            Some(Kind::Sep) => {
                self.pos += 1;
                Ok(())
            }
            Some(k) => err(
                self.line(),
                format!("expected end of statement, found {}", describe(k)),
            ),
        }
    }

    fn at_statement_end(&self) -> bool {
        matches!(self.peek_kind(), None | Some(Kind::Sep) | Some(Kind::Close))
    }

    fn name(&mut self, what: &str) -> Result<String> {
        let line = self.line();
        let w = self.word()?;
        if w.is_empty() {
            return err(line, format!("empty {what} name"));
        }
        Ok(w)
    }

    fn table_head(&mut self) -> Result<(Family, String)> {
        let line = self.line();
        let family = match self.word()?.as_str() {
            "ip" => Family::V4,
            "ip6" => Family::V6,
            other => return err(line, format!("unsupported table family {other:?}")),
        };
        Ok((family, self.name("table")?))
    }

    /// After `table`: `<fam> <name> { ... }`.
    fn table_block(&mut self) -> Result<Table> {
        let (family, name) = self.table_head()?;
        let opened = self.open()?;
        let mut t = Table {
            family,
            name,
            comment: None,
            sets: vec![],
            chains: vec![],
        };
        loop {
            self.skip_seps();
            let Some(tok) = self.peek() else {
                return err(opened, format!("'{{' of table {} is never closed", t.name));
            };
            let line = tok.line;
            if tok.kind == Kind::Close {
                self.pos += 1;
                break;
            }
            match self.word()?.as_str() {
                "comment" => {
                    t.comment = Some(self.string()?);
                    self.end_statement()?;
                }
                kw @ ("set" | "map") => {
                    let s = self.set_block(family, kw == "map")?;
                    if t.set(&s.name).is_some() {
                        return err(line, format!("set {} is defined twice", s.name));
                    }
                    t.sets.push(s);
                }
                "chain" => {
                    let c = self.chain_block(family)?;
                    if t.chain(&c.name).is_some() {
                        return err(line, format!("chain {} is defined twice", c.name));
                    }
                    t.chains.push(c);
                }
                other => return err(line, format!("unknown statement {other:?} in a table")),
            }
        }
        self.end_statement()?;
        Ok(t)
    }

    fn key_types(&mut self, f: Family) -> Result<Vec<KeyType>> {
        let mut out = Vec::new();
        loop {
            let line = self.line();
            let k = match self.word()?.as_str() {
                "ipv4_addr" if f == Family::V4 => KeyType::Addr,
                "ipv6_addr" if f == Family::V6 => KeyType::Addr,
                t @ ("ipv4_addr" | "ipv6_addr") => {
                    return err(line, format!("type {t} in a table of the other family"))
                }
                "inet_proto" => KeyType::Proto,
                "inet_service" => KeyType::Service,
                other => return err(line, format!("unsupported data type {other:?}")),
            };
            out.push(k);
            if !self.eat(".") {
                return Ok(out);
            }
        }
    }

    /// `typeof <field> . <field> ...`: the key or data of an endpoint map, declared by the
    /// expressions it is looked up with (`numgen random mod 1` stands for the slot).
    fn typeof_types(&mut self, f: Family) -> Result<Vec<KeyType>> {
        Ok(self
            .fields(f, None)?
            .into_iter()
            .map(|fl| match fl {
                Field::Saddr | Field::Daddr => KeyType::Addr,
                Field::L4Proto => KeyType::Proto,
                Field::Dport => KeyType::Service,
                Field::Random(_) => KeyType::Slot,
            })
            .collect())
    }

    /// After `set` / `map`: `<name> { type ...; flags ...; elements = { ... } }`.
    fn set_block(&mut self, f: Family, is_map: bool) -> Result<Set> {
        let name = self.name("set")?;
        let opened = self.open()?;
        let mut typed: Option<(Vec<KeyType>, Option<MapData>)> = None;
        let mut s = Set {
            name,
            key: vec![],
            data: None,
            flags: SetFlags::default(),
            timeout: None,
            comment: None,
            elements: Elements::new(),
        };
        loop {
            self.skip_seps();
            let Some(tok) = self.peek() else {
                return err(opened, format!("'{{' of set {} is never closed", s.name));
            };
            let line = tok.line;
            if tok.kind == Kind::Close {
                self.pos += 1;
                break;
            }
            match self.word()?.as_str() {
                kw @ ("type" | "typeof") => {
                    let by_expr = kw == "typeof";
                    let key = if by_expr {
                        self.typeof_types(f)?
                    } else {
                        self.key_types(f)?
                    };
                    let data = if self.eat(":") {
                        if self.eat("verdict") {
                            Some(MapData::Verdict)
                        } else if by_expr {
                            Some(MapData::Values(self.typeof_types(f)?))
                        } else {
                            Some(MapData::Values(self.key_types(f)?))
                        }
                    } else {
                        None
                    };
                    if by_expr != key.contains(&KeyType::Slot) {
                        return err(
                            line,
                            "typeof declares endpoint maps (with a numgen slot) and only those",
                        );
                    }
                    if data.is_some() != is_map {
                        return err(
                            line,
                            if is_map {
                                "a map needs a data type (`type K : D`)"
                            } else {
                                "a set has no data type; use `map`"
                            },
                        );
                    }
                    typed = Some((key, data));
                }
                "size" => {
                    // Only the kernel's default for dynamic sets is ever listed (we never
                    // declare one, see `nft::netlink::decl`); the IR does not keep a size.
                    self.number::<u32>()?;
                }
                "flags" => loop {
                    let line = self.line();
                    match self.word()?.as_str() {
                        "dynamic" => s.flags.dynamic = true,
                        "timeout" => s.flags.timeout = true,
                        other => return err(line, format!("unsupported set flag {other:?}")),
                    }
                    if !matches!(self.peek_kind(), Some(Kind::Comma)) {
                        break;
                    }
                    self.pos += 1;
                },
                "timeout" => s.timeout = Some(self.duration()?),
                "comment" => s.comment = Some(self.string()?),
                "elements" => {
                    let Some((key, data)) = &typed else {
                        return err(line, "elements before the set's type");
                    };
                    self.keyword("=")?;
                    s.elements = self.elements(f, key, data.as_ref())?;
                }
                other => return err(line, format!("unknown statement {other:?} in a set")),
            }
            self.end_statement()?;
        }
        let Some((key, data)) = typed else {
            return err(opened, format!("set {} has no type", s.name));
        };
        s.key = key;
        s.data = data;
        self.end_statement()?;
        Ok(s)
    }

    /// `{ e, e, ... }`, newlines allowed anywhere inside.
    fn elements(&mut self, f: Family, key: &[KeyType], data: Option<&MapData>) -> Result<Elements> {
        let opened = self.open()?;
        let mut out = Elements::new();
        loop {
            self.skip_newlines();
            match self.peek_kind() {
                None => return err(opened, "'{' of the element list is never closed"),
                Some(Kind::Close) => {
                    self.pos += 1;
                    return Ok(out);
                }
                _ => {}
            }
            let k = self.values(f, key)?;
            let d = match data {
                None => None,
                Some(MapData::Verdict) => {
                    self.keyword(":")?;
                    let line = self.line();
                    // The printer writes element verdicts with the ip family.
                    match self.item(Family::V4)? {
                        Item::Verdict(v) => Some(ElementData::Verdict(v)),
                        Item::Expr(_) => return err(line, "expected a verdict"),
                    }
                }
                Some(MapData::Values(types)) => {
                    self.keyword(":")?;
                    Some(ElementData::Values(self.values(f, types)?.into()))
                }
            };
            let line = self.line();
            if out.insert(k, d).is_some() {
                return err(line, "an element is listed twice");
            }
            self.skip_newlines();
            match self.peek_kind() {
                Some(Kind::Comma) => self.pos += 1,
                Some(Kind::Close) => {}
                None => return err(opened, "'{' of the element list is never closed"),
                Some(k) => {
                    return err(
                        self.line(),
                        format!(
                            "expected ',' or '}}' after an element, found {}",
                            describe(k)
                        ),
                    )
                }
            }
        }
    }

    /// `v . v . v`, typed by the set's key.
    fn values(&mut self, f: Family, types: &[KeyType]) -> Result<Vec<Value>> {
        let mut out = Vec::with_capacity(types.len());
        for (i, t) in types.iter().enumerate() {
            if i > 0 {
                self.keyword(".")?;
            }
            let line = self.line();
            let w = self.word()?;
            out.push(match t {
                KeyType::Addr => Value::Addr(addr(&w, f, line)?),
                KeyType::Proto => Value::Proto(proto(&w, line)?),
                KeyType::Service => Value::Port(parse_num(&w, line)?),
                KeyType::Slot => Value::Slot(parse_num(&w, line)?),
            });
        }
        if self.peek_word() == Some(".") {
            return err(
                self.line(),
                format!("too many values for a key of {} components", types.len()),
            );
        }
        Ok(out)
    }

    fn number<T: std::str::FromStr>(&mut self) -> Result<T> {
        let line = self.line();
        let w = self.word()?;
        parse_num(&w, line)
    }

    fn duration(&mut self) -> Result<u32> {
        let line = self.line();
        let w = self.word()?;
        parse_duration(&w).ok_or_else(|| ParseError {
            line,
            message: format!("invalid duration {w:?}"),
        })
    }

    /// After `chain`: `<name> { comment; type ... hook ... priority ...; policy accept; rules }`.
    fn chain_block(&mut self, f: Family) -> Result<Chain> {
        let name = self.name("chain")?;
        let opened = self.open()?;
        let mut c = Chain::regular(name);
        loop {
            self.skip_seps();
            let Some(tok) = self.peek() else {
                return err(opened, format!("'{{' of chain {} is never closed", c.name));
            };
            let line = tok.line;
            if tok.kind == Kind::Close {
                self.pos += 1;
                break;
            }
            match self.peek_word() {
                Some("comment") if c.rules.is_empty() => {
                    self.pos += 1;
                    c.comment = Some(self.string()?);
                }
                Some("type") => {
                    self.pos += 1;
                    if !c.rules.is_empty() || c.base.is_some() {
                        return err(line, "the chain type must come first, once");
                    }
                    c.base = Some(self.base_chain()?);
                }
                Some("policy") => {
                    self.pos += 1;
                    if c.base.is_none() {
                        return err(line, "policy without a chain type");
                    }
                    let pl = self.line();
                    let p = self.word()?;
                    if p != "accept" {
                        return err(pl, format!("unsupported policy {p:?} (only accept)"));
                    }
                }
                _ => c.rules.push(self.rule(f)?),
            }
            self.end_statement()?;
        }
        self.end_statement()?;
        Ok(c)
    }

    fn base_chain(&mut self) -> Result<BaseChain> {
        let line = self.line();
        let kind = match self.word()?.as_str() {
            "filter" => ChainType::Filter,
            "nat" => ChainType::Nat,
            other => return err(line, format!("unsupported chain type {other:?}")),
        };
        self.keyword("hook")?;
        let line = self.line();
        let hook = match self.word()?.as_str() {
            "prerouting" => Hook::Prerouting,
            "input" => Hook::Input,
            "forward" => Hook::Forward,
            "output" => Hook::Output,
            "postrouting" => Hook::Postrouting,
            other => return err(line, format!("unsupported hook {other:?}")),
        };
        self.keyword("priority")?;
        let line = self.line();
        let w = self.word()?;
        let base = match w.as_str() {
            "raw" => -300,
            "mangle" => -150,
            "dstnat" => -100,
            "filter" => 0,
            "security" => 50,
            "srcnat" => 100,
            other => parse_num::<i32>(other, line)?,
        };
        let sign = match self.peek_word() {
            Some("+") => 1,
            Some("-") => -1,
            _ => 0,
        };
        let priority = if sign != 0 {
            self.pos += 1;
            let d: i32 = self.number()?;
            base + sign * d
        } else {
            base
        };
        Ok(BaseChain {
            kind,
            hook,
            priority,
        })
    }

    /// One rule: expressions, at most one verdict (last), then an optional comment.
    fn rule(&mut self, f: Family) -> Result<Rule> {
        let mut r = Rule::new(vec![], None);
        while !self.at_statement_end() {
            let line = self.line();
            if self.eat("comment") {
                r.comment = Some(self.string()?);
                if !self.at_statement_end() {
                    return err(self.line(), "the comment must end the rule");
                }
                break;
            }
            if r.verdict.is_some() {
                return err(line, "nothing but a comment may follow a verdict");
            }
            match self.item(f)? {
                Item::Expr(e) => r.exprs.push(e),
                Item::Verdict(v) => r.verdict = Some(v),
            }
        }
        Ok(r)
    }

    /// A field expression: `ip saddr`, `meta l4proto`, `th dport`, and in a dnat map key
    /// `tcp dport` (whose protocol is returned alongside).
    fn field(&mut self, f: Family) -> Result<(Field, Option<Proto>)> {
        let line = self.line();
        let a = self.word()?;
        let b = self.word()?;
        let fam = |want: Family| -> Result<()> {
            if want == f {
                Ok(())
            } else {
                err(line, format!("{a} {b} in a table of the other family"))
            }
        };
        Ok(match (a.as_str(), b.as_str()) {
            ("ip", "saddr") => (fam(Family::V4).map(|_| Field::Saddr)?, None),
            ("ip", "daddr") => (fam(Family::V4).map(|_| Field::Daddr)?, None),
            ("ip6", "saddr") => (fam(Family::V6).map(|_| Field::Saddr)?, None),
            ("ip6", "daddr") => (fam(Family::V6).map(|_| Field::Daddr)?, None),
            ("meta", "l4proto") => (Field::L4Proto, None),
            ("th", "dport") => (Field::Dport, None),
            ("numgen", "random") => {
                self.keyword("mod")?;
                (Field::Random(self.number()?), None)
            }
            (p @ ("tcp" | "udp" | "sctp"), "dport") => (Field::Dport, Some(proto(p, line)?)),
            _ => return err(line, format!("unknown field {a:?} {b:?}")),
        })
    }

    /// `field . field ...`; a protocol-specific port only where `dnat_proto` collects it.
    fn fields(
        &mut self,
        f: Family,
        mut dnat_proto: Option<&mut Option<Proto>>,
    ) -> Result<Vec<Field>> {
        let mut out = Vec::new();
        loop {
            let line = self.line();
            let (fl, p) = self.field(f)?;
            if let Some(p) = p {
                match dnat_proto.as_deref_mut() {
                    Some(slot) => {
                        if slot.is_some_and(|q| q != p) {
                            return err(line, "two different protocols in one key");
                        }
                        *slot = Some(p);
                    }
                    None => return err(line, format!("{} dport outside a dnat map key", p.name())),
                }
            }
            out.push(fl);
            if !self.eat(".") {
                return Ok(out);
            }
        }
    }

    fn set_ref(&mut self) -> Result<String> {
        let line = self.line();
        let w = self.word()?;
        match w.strip_prefix('@') {
            Some(n) if !n.is_empty() => Ok(n.to_string()),
            _ => err(line, format!("expected @set, found {w:?}")),
        }
    }

    fn mark_value(&mut self) -> Result<u32> {
        let line = self.line();
        let w = self.word()?;
        let v = match w.strip_prefix("0x") {
            Some(h) => u32::from_str_radix(h, 16).ok(),
            None => w.parse().ok(),
        };
        v.ok_or_else(|| ParseError {
            line,
            message: format!("invalid mark {w:?}"),
        })
    }

    /// One expression or verdict of a rule.
    fn item(&mut self, f: Family) -> Result<Item> {
        let line = self.line();
        let Some(w) = self.peek_word() else {
            let k = self.peek_kind().map(describe).unwrap_or_default();
            return err(line, format!("expected a statement, found {k}"));
        };
        match w {
            "ip" | "ip6" | "th" => {}
            "meta" if self.peek_word_at(1) == Some("mark") => {
                self.pos += 2;
                return self.mark_item(line);
            }
            "meta" => {
                if self.peek_word_at(1) == Some("l4proto") {
                    if let Some(p) = self.peek_word_at(2).and_then(|p| proto(p, line).ok()) {
                        self.pos += 3;
                        if self.peek_word() == Some("dnat") && self.peek_word_at(1) == Some("to") {
                            self.pos += 2;
                            let tl = self.line();
                            let t = self.word()?;
                            let (addr, port) = dnat_target(&t, f, tl)?;
                            return Ok(Item::Verdict(Verdict::Dnat {
                                proto: p,
                                addr,
                                port,
                            }));
                        }
                        return Ok(Item::Expr(Expr::L4Proto(p)));
                    }
                }
            }
            _ => {
                self.pos += 1;
                return self.keyword_item(w, f, line);
            }
        }
        // A field expression: lookup, vmap or address comparison.
        let key = self.fields(f, None)?;
        if self.peek_word().is_some_and(|w| w.starts_with('@')) {
            let set = self.set_ref()?;
            return Ok(Item::Expr(Expr::Lookup { key, set }));
        }
        if self.eat("vmap") {
            let map = self.set_ref()?;
            return Ok(Item::Verdict(Verdict::Vmap { key, map }));
        }
        let field = match key.as_slice() {
            [fl @ (Field::Saddr | Field::Daddr)] => *fl,
            _ => return err(line, "expected @set or vmap after a concatenation"),
        };
        let op = if self.eat("!=") {
            CmpOp::Neq
        } else {
            CmpOp::Eq
        };
        let pl = self.line();
        let w = self.word()?;
        let (addr, prefix_len) = prefix(&w, f, pl)?;
        Ok(Item::Expr(Expr::AddrCmp {
            field,
            op,
            addr,
            prefix_len,
        }))
    }

    /// After `meta mark`.
    fn mark_item(&mut self, line: usize) -> Result<Item> {
        if self.eat("&") {
            let m = self.mark_value()?;
            self.keyword("!=")?;
            let zl = self.line();
            if self.mark_value()? != 0 {
                return err(zl, "only `meta mark & M != 0` is supported");
            }
            return Ok(Item::Expr(Expr::MarkSet(m)));
        }
        if self.eat("set") {
            self.keyword("meta")?;
            self.keyword("mark")?;
            let ol = self.line();
            let op = self.word()?;
            let m = self.mark_value()?;
            return match op.as_str() {
                "|" => Ok(Item::Expr(Expr::MarkOr(m))),
                "^" => Ok(Item::Expr(Expr::MarkXor(m))),
                _ => err(ol, format!("unsupported mark operation {op:?}")),
            };
        }
        err(line, "unsupported meta mark expression")
    }

    /// Statements introduced by a keyword (already consumed).
    fn keyword_item(&mut self, w: &str, f: Family, line: usize) -> Result<Item> {
        Ok(match w {
            "accept" => Item::Verdict(Verdict::Accept),
            "drop" => Item::Verdict(Verdict::Drop),
            "return" => Item::Verdict(Verdict::Return),
            "reject" => Item::Verdict(Verdict::Reject),
            "masquerade" => {
                self.keyword("fully-random")?;
                Item::Verdict(Verdict::Masquerade)
            }
            "jump" => Item::Verdict(Verdict::Jump(self.name("chain")?)),
            "goto" => Item::Verdict(Verdict::Goto(self.name("chain")?)),
            "ct" => {
                let l = self.line();
                match (self.word()?.as_str(), self.word()?.as_str()) {
                    ("state", "new") => Item::Expr(Expr::CtStateNew),
                    ("status", "dnat") => Item::Expr(Expr::CtStatusDnat),
                    (a, b) => return err(l, format!("unsupported ct expression {a:?} {b:?}")),
                }
            }
            "iifname" => {
                let op = if self.eat("!=") {
                    CmpOp::Neq
                } else {
                    CmpOp::Eq
                };
                let l = self.line();
                let s = self.string()?;
                // nft's wildcard: a trailing `*` matches any rest of the name.
                let (name, prefix) = match s.strip_suffix('*') {
                    Some(p) => (p.to_string(), true),
                    None => (s, false),
                };
                if name.is_empty() || name.len() >= 16 {
                    return err(l, format!("invalid interface name {name:?}"));
                }
                Item::Expr(Expr::Iifname { op, name, prefix })
            }
            "fib" => {
                let l = self.line();
                let a = match self.word()?.as_str() {
                    "saddr" => FibAddr::Saddr,
                    "daddr" => FibAddr::Daddr,
                    other => return err(l, format!("unsupported fib input {other:?}")),
                };
                self.keyword("type")?;
                self.keyword("local")?;
                Item::Expr(Expr::FibLocal(a))
            }
            "counter" => {
                // As nft lists it, with counts (ignored: the IR holds none), or bare.
                if self.eat("packets") {
                    self.number::<u64>()?;
                    self.keyword("bytes")?;
                    self.number::<u64>()?;
                }
                Item::Expr(Expr::Counter)
            }
            "numgen" => {
                self.keyword("random")?;
                self.keyword("mod")?;
                let modulus = self.number()?;
                let value = self.number()?;
                Item::Expr(Expr::Numgen { modulus, value })
            }
            "update" => {
                let set = self.set_ref()?;
                let opened = self.open()?;
                let key = self.fields(f, None)?;
                match self.peek_kind() {
                    Some(Kind::Close) => self.pos += 1,
                    _ => return err(opened, "'{' of update is not closed after the key"),
                }
                Item::Expr(Expr::Update { set, key })
            }
            "dnat" => {
                let fl = self.line();
                let fam = self.word()?;
                let want = crate::nft::text::family_name(f);
                if fam != want {
                    return err(fl, format!("dnat {fam} in a table of family {want}"));
                }
                self.keyword("to")?;
                let mut p = None;
                let key = self.fields(f, Some(&mut p))?;
                self.keyword("map")?;
                let map = self.set_ref()?;
                if p.is_none() && !key.contains(&Field::Dport) {
                    return err(fl, "dnat map key needs a port (th dport or tcp dport)");
                }
                Item::Verdict(Verdict::DnatMap { proto: p, key, map })
            }
            other => return err(line, format!("unknown statement {other:?}")),
        })
    }
}

enum Item {
    Expr(Expr),
    Verdict(Verdict),
}

fn parse_num<T: std::str::FromStr>(w: &str, line: usize) -> Result<T> {
    w.parse().map_err(|_| ParseError {
        line,
        message: format!("invalid number {w:?}"),
    })
}

fn proto(w: &str, line: usize) -> Result<Proto> {
    match w {
        "tcp" => Ok(Proto::Tcp),
        "udp" => Ok(Proto::Udp),
        "sctp" => Ok(Proto::Sctp),
        _ => err(line, format!("unknown protocol {w:?}")),
    }
}

fn addr(w: &str, f: Family, line: usize) -> Result<IpAddr> {
    let a: IpAddr = w.parse().map_err(|_| ParseError {
        line,
        message: format!("invalid address {w:?}"),
    })?;
    if Family::of(&a) != f {
        return err(line, format!("address {a} in a table of the other family"));
    }
    Ok(a)
}

/// `addr` or `addr/len`.
fn prefix(w: &str, f: Family, line: usize) -> Result<(IpAddr, u8)> {
    let (a, len) = match w.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (w, None),
    };
    let a = addr(a, f, line)?;
    let full = if a.is_ipv4() { 32 } else { 128 };
    let len = match len {
        None => full,
        Some(l) => match l.parse::<u8>() {
            Ok(n) if n <= full => n,
            _ => return err(line, format!("invalid prefix length in {w:?}")),
        },
    };
    Ok((a, len))
}

/// `1.2.3.4:80` or `[fd00::1]:80`.
fn dnat_target(w: &str, f: Family, line: usize) -> Result<(IpAddr, u16)> {
    let bad = || ParseError {
        line,
        message: format!("invalid dnat target {w:?} (expected addr:port or [addr]:port)"),
    };
    let (a, p) = match w.strip_prefix('[') {
        Some(rest) => rest.split_once("]:").ok_or_else(bad)?,
        None => w.rsplit_once(':').ok_or_else(bad)?,
    };
    if f == Family::V6 && !w.starts_with('[') {
        return Err(bad());
    }
    Ok((addr(a, f, line)?, parse_num(p, line)?))
}

/// `3h`, `10m`, `1h30m`, `45s`, `1d`: numbers with units d, h, m, s, largest first.
pub fn parse_duration(w: &str) -> Option<u32> {
    let mut total: u64 = 0;
    let mut num = String::new();
    let mut last_unit = u64::MAX;
    for c in w.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let unit = match c {
            'd' => 86400,
            'h' => 3600,
            'm' => 60,
            's' => 1,
            _ => return None,
        };
        if num.is_empty() || unit >= last_unit {
            return None;
        }
        last_unit = unit;
        total = total.checked_add(num.parse::<u64>().ok()?.checked_mul(unit)?)?;
        num.clear();
    }
    if !num.is_empty() || last_unit == u64::MAX {
        return None;
    }
    u32::try_from(total).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nft::text;
    use std::path::Path;

    fn expected_files() -> Vec<std::path::PathBuf> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata");
        let mut out: Vec<_> = std::fs::read_dir(&root)
            .expect("testdata exists")
            .filter_map(|e| e.ok().map(|e| e.path().join("expected.nft")))
            .filter(|p| p.is_file())
            .collect();
        out.sort();
        out
    }

    #[test]
    fn every_golden_file_round_trips() {
        let files = expected_files();
        assert!(
            files.len() >= 10,
            "found only {} expected.nft files",
            files.len()
        );
        for path in files {
            let text = std::fs::read_to_string(&path).unwrap();
            let rs = parse_script(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert_eq!(
                text::script(&rs),
                text,
                "{} re-prints differently",
                path.display()
            );
            for t in &rs.tables {
                let block = text::table_text(t);
                assert_eq!(&parse_table(&block).unwrap(), t, "{}", path.display());
            }
        }
    }

    #[test]
    fn durations() {
        for (s, v) in [
            ("3h", 10800),
            ("10m", 600),
            ("1h30m", 5400),
            ("45s", 45),
            ("1d", 86400),
            ("0s", 0),
        ] {
            assert_eq!(parse_duration(s), Some(v), "{s}");
        }
        for secs in [1, 59, 60, 61, 3599, 3601, 5400, 10800, 86399, 86400, 90061] {
            assert_eq!(parse_duration(&text::duration(secs)), Some(secs));
        }
        for bad in ["", "3", "h", "3x", "30m1h", "1h1h", "-1s"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn ipv6_prefixes_and_dnat_targets() {
        let t = parse_table(
            "table ip6 t {\n\tchain c {\n\t\tip6 saddr != fd00:244::/64 ip6 daddr ::1 meta l4proto udp dnat to [fd00::1:0:32]:53\n\t}\n}\n",
        )
        .unwrap();
        let r = &t.chains[0].rules[0];
        assert_eq!(
            r.exprs,
            vec![
                Expr::AddrCmp {
                    field: Field::Saddr,
                    op: CmpOp::Neq,
                    addr: "fd00:244::".parse().unwrap(),
                    prefix_len: 64
                },
                Expr::AddrCmp {
                    field: Field::Daddr,
                    op: CmpOp::Eq,
                    addr: "::1".parse().unwrap(),
                    prefix_len: 128
                },
            ]
        );
        assert_eq!(
            r.verdict,
            Some(Verdict::Dnat {
                proto: Proto::Udp,
                addr: "fd00::1:0:32".parse().unwrap(),
                port: 53
            })
        );
    }

    #[test]
    fn dnat_map_takes_its_protocol_from_the_port_field() {
        let t = parse_table(
            "table ip t {\n\tchain c {\n\t\tdnat ip to ip saddr . ip daddr . meta l4proto . sctp dport map @affinity comment \"x\"\n\t}\n}\n",
        )
        .unwrap();
        let r = &t.chains[0].rules[0];
        assert_eq!(
            r.verdict,
            Some(Verdict::DnatMap {
                proto: Some(Proto::Sctp),
                key: vec![Field::Saddr, Field::Daddr, Field::L4Proto, Field::Dport],
                map: "affinity".into()
            })
        );
        assert_eq!(text::table_text(&t).lines().nth(2).unwrap().trim(), "dnat ip to ip saddr . ip daddr . meta l4proto . sctp dport map @affinity comment \"x\"");
    }

    #[test]
    fn every_construct_round_trips() {
        use Field::*;
        let a4: IpAddr = "10.0.0.1".parse().unwrap();
        let rules = vec![
            Rule::new(
                vec![
                    Expr::AddrCmp {
                        field: Saddr,
                        op: CmpOp::Eq,
                        addr: "10.0.0.0".parse().unwrap(),
                        prefix_len: 8,
                    },
                    Expr::L4Proto(Proto::Sctp),
                    Expr::Lookup {
                        key: vec![Daddr, L4Proto, Dport],
                        set: "s".into(),
                    },
                    Expr::CtStateNew,
                    Expr::CtStatusDnat,
                    Expr::Iifname {
                        op: CmpOp::Eq,
                        name: "cni0".into(),
                        prefix: false,
                    },
                    Expr::Iifname {
                        op: CmpOp::Neq,
                        name: "veth".into(),
                        prefix: true,
                    },
                    Expr::FibLocal(FibAddr::Saddr),
                    Expr::FibLocal(FibAddr::Daddr),
                    Expr::Numgen {
                        modulus: 3,
                        value: 0,
                    },
                    Expr::MarkSet(0x4000),
                    Expr::MarkOr(1),
                    Expr::MarkXor(0x8000_0000),
                    Expr::Counter,
                    Expr::Update {
                        set: "m".into(),
                        key: vec![Saddr, Dport],
                    },
                ],
                Some(Verdict::Accept),
            ),
            Rule::new(
                vec![Expr::L4Proto(Proto::Tcp)],
                Some(Verdict::Dnat {
                    proto: Proto::Tcp,
                    addr: a4,
                    port: 8080,
                }),
            ),
            Rule::new(
                vec![Expr::L4Proto(Proto::Udp)],
                Some(Verdict::DnatMap {
                    proto: Some(Proto::Udp),
                    key: vec![Saddr, Dport],
                    map: "m".into(),
                }),
            ),
            Rule::new(vec![], Some(Verdict::Drop)).with_comment("a: b . c { }"),
            Rule::new(vec![], Some(Verdict::Return)),
            Rule::new(vec![], Some(Verdict::Reject)),
            Rule::new(vec![], Some(Verdict::Masquerade)),
            Rule::new(vec![], Some(Verdict::Jump("x/y/tcp/...".into()))),
            Rule::new(vec![], Some(Verdict::Goto("c".into()))),
            Rule::new(
                vec![],
                Some(Verdict::Vmap {
                    key: vec![L4Proto, Dport],
                    map: "v".into(),
                }),
            ),
            Rule::new(vec![Expr::MarkOr(2)], None).with_comment("only a comment"),
        ];
        let set = Set {
            name: "v".into(),
            key: vec![KeyType::Proto, KeyType::Service],
            data: Some(MapData::Verdict),
            flags: SetFlags {
                dynamic: false,
                timeout: true,
            },
            timeout: Some(90061),
            comment: None,
            elements: [
                (
                    vec![Value::Proto(Proto::Tcp), Value::Port(1)],
                    Some(ElementData::Verdict(Verdict::Goto("c".into()))),
                ),
                (
                    vec![Value::Proto(Proto::Udp), Value::Port(65535)],
                    Some(ElementData::Verdict(Verdict::Drop)),
                ),
            ]
            .into(),
        };
        let map = Set {
            name: "m".into(),
            key: vec![KeyType::Addr],
            data: Some(MapData::Values(vec![KeyType::Addr, KeyType::Service])),
            flags: SetFlags {
                dynamic: true,
                timeout: true,
            },
            timeout: None,
            comment: Some("c".into()),
            elements: [(
                vec![Value::Addr(a4)],
                Some(ElementData::Values(
                    vec![Value::Addr(a4), Value::Port(9)].into(),
                )),
            )]
            .into(),
        };
        let mut chains = vec![Chain {
            rules,
            ..Chain::regular("c")
        }];
        for (i, (hook, prio)) in [
            (Hook::Prerouting, -110),
            (Hook::Prerouting, -90),
            (Hook::Postrouting, 100),
            (Hook::Postrouting, 0),
            (Hook::Input, -5),
            (Hook::Forward, 7),
            (Hook::Output, -100),
        ]
        .into_iter()
        .enumerate()
        {
            chains.push(Chain {
                name: format!("b{i}"),
                base: Some(BaseChain {
                    kind: ChainType::Nat,
                    hook,
                    priority: prio,
                }),
                comment: Some("base".into()),
                rules: vec![],
            });
        }
        let rs = Ruleset {
            tables: vec![
                Table {
                    family: Family::V4,
                    name: "t".into(),
                    comment: None,
                    sets: vec![set, map],
                    chains,
                },
                Table {
                    family: Family::V6,
                    name: "t".into(),
                    comment: Some("six".into()),
                    sets: vec![],
                    chains: vec![],
                },
            ],
        };
        let text = text::script(&rs);
        assert_eq!(parse_script(&text).unwrap(), rs, "{text}");
    }

    #[test]
    fn errors_carry_line_numbers() {
        let e =
            parse_table("table ip t {\n\tchain c {\n\t\tct state new\n\t\tfrobnicate 3\n\t}\n}\n")
                .unwrap_err();
        assert_eq!(e.line, 4);
        assert!(
            e.message.contains("unknown statement \"frobnicate\""),
            "{e}"
        );
        assert_eq!(e.to_string(), format!("line 4: {}", e.message));

        // Missing close: reported at the brace that is never closed.
        let e = parse_table("table ip t {\n\tchain c {\n\t\taccept\n}\n").unwrap_err();
        assert_eq!(e.line, 1, "{e}");
        assert!(e.message.contains("never closed"), "{e}");

        // An extra close.
        let e = parse_script("table ip t {\n}\n}\n").unwrap_err();
        assert_eq!(e.line, 3, "{e}");
        assert!(e.message.contains("unbalanced"), "{e}");

        let e = parse_table("table ip t {\n\tset s {\n\t\ttype ipv4_addr\n\t\telements = { 10.0.0.1,\n\t\t\t     fd00::1 }\n\t}\n}\n").unwrap_err();
        assert_eq!(e.line, 5, "{e}");

        let e = parse_table("table ip t {\n\tset s {\n\t\ttype ipv4_addr . inet_service\n\t\telements = { 10.0.0.1 }\n\t}\n}\n").unwrap_err();
        assert_eq!(e.line, 4, "{e}");

        let e = parse_script("table ip t {}\ndelete table ip u\n").unwrap_err();
        assert_eq!(e.line, 2, "{e}");

        let e = parse_table("table ip t {\n\tchain c {\n\t\tdrop accept\n\t}\n}\n").unwrap_err();
        assert_eq!(e.line, 3, "{e}");

        let e = parse_table("table ip t {\n\tcomment \"unterminated\n}\n").unwrap_err();
        assert_eq!(e.line, 2, "{e}");
    }

    #[test]
    fn script_applies_deletes_and_one_line_blocks() {
        let rs = parse_script(
            "# comment\ntable ip a {}\ntable ip6 b {}\ndelete table ip a\ntable ip a { chain c { type filter hook input priority filter; policy accept; accept; } }\n",
        )
        .unwrap();
        assert_eq!(rs.tables.len(), 2);
        assert_eq!(rs.tables[0].family, Family::V6);
        assert_eq!(
            rs.tables[1].chains[0].rules,
            vec![Rule::new(vec![], Some(Verdict::Accept))]
        );
        assert_eq!(rs.tables[1].chains[0].base.unwrap().priority, 0);
    }

    /// The documented skeleton and the one the builder uses are the same table.
    #[test]
    fn rules_skeleton_nft_reads_as_the_builders_skeleton() {
        let text = include_str!("../../rules/skeleton.nft");
        let rs = parse_script(text).expect("rules/skeleton.nft parses");
        assert_eq!(rs.tables.len(), 1);
        assert_eq!(&rs.tables[0], crate::ruleset::skeleton());
    }
}
