//! Live heap by stage at 10,000 Services × 10 endpoints (issue figures, not a pass/fail
//! test; run with `cargo test --release --test memory -- --ignored --nocapture`). A
//! counting allocator gives exact live bytes, which RSS does not (allocators keep freed
//! pages).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use kube_nftproxy::agent::desired;
use kube_nftproxy::cli::synthetic;
use kube_nftproxy::model::options;
use kube_nftproxy::objects::input;
use kube_nftproxy::ruleset;

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator and only counts sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size(), Ordering::Relaxed);
        System.alloc(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        System.dealloc(p, l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        LIVE.fetch_add(n, Ordering::Relaxed);
        System.realloc(p, l, n)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn live_mib() -> f64 {
    LIVE.load(Ordering::Relaxed) as f64 / 1048576.0
}

#[test]
#[ignore = "a benchmark; run explicitly with --release --ignored --nocapture"]
fn live_heap_by_stage_10k_services() {
    let spec = synthetic::Spec {
        services: 10_000,
        endpoints: 10,
        node: "node-a".into(),
    };
    let json = serde_json::to_string(&synthetic::cluster(&spec)).unwrap();
    let base = live_mib();
    let mut objects = input::ClusterObjects::default();
    objects.add_text("synthetic", &json, &mut vec![]).unwrap();
    objects.sort();
    let after_objects = live_mib();
    let opts = options::Options {
        hostname: "node-a".into(),
        cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
        ..Default::default()
    };
    let mut state = desired::Desired::new(opts);
    let update = state.update(&objects, true);
    let with_tx = live_mib();
    drop(update);
    let kept = live_mib();
    let agent_tx = with_tx - kept;
    let ir = state.ruleset().clone();
    let ir_size = live_mib() - kept;
    drop(ir);
    let tx = ruleset::diff::full(state.ruleset());
    let copying_tx = live_mib() - kept;
    drop(tx);
    println!(
        "10,000 Services x 10 endpoints, live heap: objects (as the reflector stores hold them) {:.0} MiB; \
         kept sync state (IR, per-Service ports, claims, inputs) {:.0} MiB, of which the IR {:.0} MiB; \
         the agent's full-sync transaction {:.1} MiB more (elements read from the IR; a copying one, as `apply` builds, {:.0} MiB); \
         peak during the first sync {:.0} MiB",
        after_objects - base,
        kept - after_objects,
        ir_size,
        agent_tx,
        copying_tx,
        with_tx - base
    );
    assert!(state.services() == 10_000);
}
