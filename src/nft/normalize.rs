//! A canonical form of nft text for comparing a rendered script with `nft list` output:
//! set elements sorted one per line (the kernel lists hash sets in its own order and nft
//! wraps them as it likes), the atomic-replace preamble dropped, blank lines ignored, and
//! `size 65535` dropped: the kernel lists its default size for a set that an `update`
//! statement writes, which render does not declare (a declared size is also the kernel's
//! initial hash table size, 1.5 MB per affinity set at 65,535; see `nft::netlink::decl`).

pub fn normalize(text: &str) -> String {
    let mut out = Vec::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let t = line.trim();
        if t.is_empty()
            || t.starts_with("delete table ")
            || (t.starts_with("table ") && t.ends_with("{}"))
            || t == "size 65535"
        {
            continue;
        }
        if let Some(rest) = t.strip_prefix("elements = {") {
            let mut body = rest.to_string();
            while !body.trim_end().ends_with('}') {
                match lines.next() {
                    Some(l) => {
                        body.push(' ');
                        body.push_str(l.trim());
                    }
                    None => break,
                }
            }
            let body = body.trim_end().trim_end_matches('}');
            let mut elems: Vec<String> = body
                .split(',')
                .map(|e| e.split_whitespace().collect::<Vec<_>>().join(" "))
                .filter(|e| !e.is_empty())
                .collect();
            elems.sort();
            out.push("elements = {".to_string());
            out.extend(elems.into_iter().map(|e| format!("  {e}")));
            out.push("}".to_string());
            continue;
        }
        out.push(t.split_whitespace().collect::<Vec<_>>().join(" "));
    }
    out.join("\n") + "\n"
}

#[cfg(test)]
mod tests {
    use super::normalize;

    #[test]
    fn element_order_and_wrapping_do_not_matter() {
        let a = "table ip t {\n\tset s {\n\t\ttype ipv4_addr\n\t\telements = { 10.0.0.2, 10.0.0.1,\n\t\t\t     10.0.0.3 }\n\t}\n}\n";
        let b = "table ip t {}\ndelete table ip t\ntable ip t {\n\tset s {\n\t\ttype ipv4_addr\n\t\telements = { 10.0.0.1,\n\t\t\t     10.0.0.2,\n 10.0.0.3 }\n\t}\n}\n";
        assert_eq!(normalize(a), normalize(b));
        let c = b.replace("10.0.0.3", "10.0.0.4");
        assert_ne!(normalize(a), normalize(&c));
    }
}
