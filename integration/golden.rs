//! Golden files: every `testdata/<scenario>/` renders byte for byte to its `expected.nft`
//! (stdout) and `expected.stderr` (the skip notes). `UPDATE_GOLDEN=1 cargo test` rewrites
//! them. When nft is installed and we are root, each expected script is also loaded twice
//! into a throwaway network namespace and the kernel's listing must equal the rendered text.

use std::path::Path;
use std::process::Command;

use kube_nftproxy::nft::normalize::normalize;

mod support;
use support::{scenario_args, scenario_dirs, TempDir};

fn render(dir: &Path) -> (String, String, bool) {
    let mut args: Vec<String> = vec!["render".into()];
    args.extend(scenario_args(dir));
    // Relative to the repository root, as the README runs it: notes name the file, and the
    // golden stderr must not depend on where the checkout lives.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let file = dir.join("cluster.yaml");
    let file = file.strip_prefix(root).unwrap_or(&file);
    args.push(file.to_string_lossy().into_owned());
    let out = Command::new(env!("CARGO_BIN_EXE_kube-nftproxy"))
        .args(&args)
        .current_dir(root)
        .env("RUST_LOG", "off")
        .output()
        .expect("run kube-nftproxy");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.status.success(),
    )
}

fn check_golden(path: &Path, actual: &str, failures: &mut Vec<String>) {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let expected = std::fs::read_to_string(path).unwrap_or_default();
    if expected == actual {
        return;
    }
    if update {
        if actual.is_empty() {
            let _ = std::fs::remove_file(path);
        } else {
            std::fs::write(path, actual).expect("write golden file");
        }
        eprintln!("updated {}", path.display());
    } else {
        failures.push(format!(
            "{} differs from the render output (UPDATE_GOLDEN=1 cargo test --test golden rewrites it; read the diff)",
            path.display()
        ));
    }
}

#[test]
fn golden_scenarios_render_exactly() {
    let dirs = scenario_dirs();
    assert!(
        dirs.len() >= 20,
        "expected at least 20 scenarios, found {}",
        dirs.len()
    );
    let mut failures = Vec::new();
    for dir in &dirs {
        let (stdout, stderr, ok) = render(dir);
        assert!(ok, "render failed for {}: {stderr}", dir.display());
        check_golden(&dir.join("expected.nft"), &stdout, &mut failures);
        check_golden(&dir.join("expected.stderr"), &stderr, &mut failures);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn render_is_deterministic_whatever_the_input_order() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/demo");
    let text = std::fs::read_to_string(dir.join("cluster.yaml")).unwrap();
    let mut docs: Vec<&str> = text.split("\n---\n").collect();
    docs.reverse();
    let tmp = TempDir::new("shuffled");
    let shuffled = tmp.write("cluster.yaml", &docs.join("\n---\n"));
    let a = render(&dir).0;
    let out = Command::new(env!("CARGO_BIN_EXE_kube-nftproxy"))
        .arg("render")
        .args(scenario_args(&dir))
        .arg(&shuffled)
        .output()
        .unwrap();
    assert_eq!(a, String::from_utf8_lossy(&out.stdout));
}

fn kernel_checks_possible() -> bool {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout == b"0\n")
        .unwrap_or(false);
    let nft = Command::new("nft").arg("--version").output().is_ok();
    let unshare = Command::new("unshare").arg("--version").output().is_ok();
    let ok = root && nft && unshare;
    if !ok {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("CI must run the kernel checks: needs root, nft and unshare");
        }
        eprintln!("skipping kernel checks of golden files: needs root, nft and unshare");
    }
    ok
}

/// Loads the script twice (the second load replaces the first atomically) into a fresh
/// network namespace made by `unshare -n`, and returns `nft list ruleset`.
fn load_in_namespace(script: &Path) -> Result<String, String> {
    let s = script.display();
    let out = Command::new("unshare")
        .args([
            "-n",
            "sh",
            "-c",
            &format!("nft -f '{s}' && nft -f '{s}' && nft list ruleset"),
        ])
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[test]
fn golden_files_load_into_a_real_kernel_and_list_back_identically() {
    if !kernel_checks_possible() {
        return;
    }
    let mut failures = Vec::new();
    for dir in scenario_dirs() {
        let path = dir.join("expected.nft");
        let Ok(expected) = std::fs::read_to_string(&path) else {
            failures.push(format!("{}: missing", path.display()));
            continue;
        };
        match load_in_namespace(&path) {
            Ok(listing) => {
                if normalize(&listing) != normalize(&expected) {
                    failures.push(format!(
                        "{}: nft list differs from the rendered text\n--- listed ---\n{listing}",
                        path.display()
                    ));
                }
            }
            Err(e) => failures.push(format!("{}: nft -f refused it: {e}", path.display())),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
