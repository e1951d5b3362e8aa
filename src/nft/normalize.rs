//! A canonical form of nft text for comparing a rendered script with `nft list` output:
//! set elements sorted one per line (the kernel lists hash sets in its own order and nft
//! wraps them as it likes), the atomic-replace preamble dropped, blank lines ignored, and
//! the counts of every `counter` zeroed (render prints zeros, the kernel what it counted).
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
        let mut words: Vec<&str> = t.split_whitespace().collect();
        for i in 0..words.len() {
            if words[i] == "counter"
                && words.get(i + 1) == Some(&"packets")
                && words.get(i + 3) == Some(&"bytes")
                && i + 4 < words.len()
            {
                words[i + 2] = "0";
                words[i + 4] = "0";
            }
        }
        out.push(words.join(" "));
    }
    out.join("\n") + "\n"
}

/// `normalized` (the output of [`normalize`]) with the slots under each key of every
/// endpoint map (`service-endpoints-N`, `local-nodeport-endpoints-N`, ...) renumbered in
/// the order of their values: the agent keeps endpoints in stable slots where `render`
/// numbers them in address order, and both put the same endpoints under every key.
pub fn normalize_slots(normalized: &str) -> String {
    let is_endpoint_map = |name: &str| {
        let kind = name.trim_end_matches(|c: char| c.is_ascii_digit());
        kind != name
            && ["service-endpoints-", "nodeport-endpoints-"]
                .iter()
                .any(|k| kind.strip_prefix("local-").unwrap_or(kind) == *k)
    };
    let mut out: Vec<String> = Vec::new();
    let mut in_map = false;
    let mut lines = normalized.lines();
    while let Some(line) = lines.next() {
        if let Some(rest) = line.strip_prefix("map ") {
            in_map = is_endpoint_map(rest.trim_end_matches('{').trim());
        }
        out.push(line.to_string());
        if !(in_map && line == "elements = {") {
            continue;
        }
        let mut by_key: std::collections::BTreeMap<String, Vec<(String, String)>> =
            Default::default();
        for l in lines.by_ref() {
            if l == "}" {
                break;
            }
            let (key, value) = l.trim().split_once(" : ").unwrap_or((l.trim(), ""));
            let (prefix, slot) = key.rsplit_once(" . ").unwrap_or((key, ""));
            by_key
                .entry(prefix.to_string())
                .or_default()
                .push((slot.to_string(), value.to_string()));
        }
        let mut elems: Vec<String> = Vec::new();
        for (prefix, mut values) in by_key {
            // Renumbered only when the slots are 0..k-1: a key with a hole stays as listed,
            // so it differs from render's.
            let mut slots: Vec<&str> = values.iter().map(|v| v.0.as_str()).collect();
            slots.sort_by_key(|s| s.parse::<u64>().unwrap_or(u64::MAX));
            let dense = (slots.iter().enumerate()).all(|(i, s)| s.parse() == Ok(i));
            if dense {
                values.sort_by(|a, b| a.1.cmp(&b.1));
                for (i, v) in values.iter_mut().enumerate() {
                    v.0 = i.to_string();
                }
            }
            for (slot, v) in values {
                elems.push(format!("  {prefix} . {slot} : {v}"));
            }
        }
        elems.sort();
        out.extend(elems);
        out.push("}".to_string());
        in_map = false;
    }
    out.join("\n") + "\n"
}

#[cfg(test)]
mod tests {
    use super::{normalize, normalize_slots};

    #[test]
    fn counts_are_zeroed_and_endpoint_slots_sorted() {
        let listed = "chain c {\n\tcounter packets 3 bytes 180 drop comment \"x\"\n}\n";
        let rendered = "chain c {\n\tcounter packets 0 bytes 0 drop comment \"x\"\n}\n";
        assert_eq!(normalize(listed), normalize(rendered));
        let map = |elems: &str| {
            normalize_slots(&normalize(&format!(
                "map service-endpoints-2 {{\n\telements = {{ {elems} }}\n}}\n"
            )))
        };
        let a = map(
            "10.0.0.1 . tcp . 80 . 0 : 10.1.0.1 . 8080, 10.0.0.1 . tcp . 80 . 1 : 10.1.0.2 . 8080",
        );
        let b = map(
            "10.0.0.1 . tcp . 80 . 1 : 10.1.0.1 . 8080, 10.0.0.1 . tcp . 80 . 0 : 10.1.0.2 . 8080",
        );
        assert_eq!(a, b);
        let c = map(
            "10.0.0.1 . tcp . 80 . 1 : 10.1.0.1 . 8080, 10.0.0.1 . tcp . 80 . 0 : 10.1.0.3 . 8080",
        );
        assert_ne!(a, c);
        // A key with a hole is left as it is.
        let holed = map(
            "10.0.0.1 . tcp . 80 . 2 : 10.1.0.1 . 8080, 10.0.0.1 . tcp . 80 . 0 : 10.1.0.2 . 8080",
        );
        assert_ne!(a, holed);
        // Other sets keep their slots as they are.
        let other = "map x {\n\telements = { 1 . 0 : 2, 1 . 1 : 1 }\n}\n";
        assert_eq!(normalize_slots(&normalize(other)), normalize(other));
        assert_ne!(
            normalize_slots(&normalize(other)),
            normalize("map x {\n\telements = { 1 . 0 : 1, 1 . 1 : 2 }\n}\n")
        );
    }

    #[test]
    fn element_order_and_wrapping_do_not_matter() {
        let a = "table ip t {\n\tset s {\n\t\ttype ipv4_addr\n\t\telements = { 10.0.0.2, 10.0.0.1,\n\t\t\t     10.0.0.3 }\n\t}\n}\n";
        let b = "table ip t {}\ndelete table ip t\ntable ip t {\n\tset s {\n\t\ttype ipv4_addr\n\t\telements = { 10.0.0.1,\n\t\t\t     10.0.0.2,\n 10.0.0.3 }\n\t}\n}\n";
        assert_eq!(normalize(a), normalize(b));
        let c = b.replace("10.0.0.3", "10.0.0.4");
        assert_ne!(normalize(a), normalize(&c));
    }
}
