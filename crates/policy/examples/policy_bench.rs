//! Policy benchmark driver (bench/policy/run.sh runs it): builds a synthetic
//! model of E workload endpoints and P NetworkPolicies on one node, times
//! model building, compilation, rendering and `nft -j -f` into a network
//! namespace, then one changed policy applied incrementally (model, compile,
//! render and diff timed apart, then `nft` apply, then the whole end to end);
//! then the full and the changed batch through a long-lived libnftables context,
//! as the agent applies them.
//! Prints Markdown rows.
//!
//!   policy_bench NETNS ENDPOINTS POLICIES [ROUNDS]
//!
//! NETNS `-` runs `nft` in this process's own namespace (run the driver under
//! `ip netns exec`, as bench/policy/run.sh does: the agent calls nft directly).
//!
//! Endpoint i: namespace `ns<i%10>`, label `app=app<i%100>`, interface
//! `cali<i>` (zero-padded), address 100.64.<i/250>.<i%250+1>. Policy j: namespace
//! `ns<j%10>`, order j, selecting `app == 'app<j%100>'` (10 endpoints each),
//! ingress Allow TCP from `app == 'app<(7j)%100>'` to port 1000 + j%1000. Endpoints
//! 0 and 1 are `cali-ipa` / `cali-ipb` with 100.64.200.1 / .2 (the iperf3 pods of
//! run.sh), and a last GlobalNetworkPolicy lets app0 reach app1 on TCP 5201.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tabby_api::Resource;
use tabby_api::load::parse_documents;
use tabby_policy::compile::compile_for_node;
use tabby_policy::model::Model;
use tabby_policy::nft::{batch, diff, ruleset};

fn endpoint(i: usize) -> String {
    let (iface, ip) = match i {
        0 => ("cali-ipa".to_string(), "100.64.200.1".to_string()),
        1 => ("cali-ipb".to_string(), "100.64.200.2".to_string()),
        _ => (
            format!("cali{i:011}"),
            format!("100.64.{}.{}", i / 250, i % 250 + 1),
        ),
    };
    format!(
        "apiVersion: projectcalico.org/v3\nkind: WorkloadEndpoint\n\
         metadata: {{name: ep{i}, namespace: ns{}, labels: {{app: app{}}}}}\n\
         spec: {{node: bench, interfaceName: {iface}, ipNetworks: [{ip}/32], profiles: [kns.ns{}]}}\n---\n",
        i % 10,
        i % 100,
        i % 10
    )
}

fn policy(j: usize, port_shift: usize) -> String {
    format!(
        "apiVersion: projectcalico.org/v3\nkind: NetworkPolicy\n\
         metadata: {{name: p{j}, namespace: ns{}}}\n\
         spec: {{order: {j}, selector: app == 'app{}', ingress: [{{action: Allow, protocol: TCP, \
         source: {{selector: app == 'app{}'}}, destination: {{ports: [{}]}}}}]}}\n---\n",
        j % 10,
        j % 100,
        (7 * j) % 100,
        1000 + (j + port_shift) % 1000
    )
}

const IPERF: &str = "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\n\
metadata: {name: allow-iperf}\nspec: {order: 1000000, selector: app == 'app1', \
ingress: [{action: Allow, protocol: TCP, source: {selector: app == 'app0'}, destination: {ports: [5201]}}]}\n";

/// The resources, parsed one document at a time (a file holds at most 1,024).
fn resources(endpoints: usize, policies: usize, changed: Option<usize>) -> Vec<Resource> {
    let docs = (0..endpoints)
        .map(endpoint)
        .chain((0..policies).map(|j| policy(j, usize::from(changed == Some(j)))))
        .chain(std::iter::once(IPERF.to_string()));
    docs.flat_map(|d| parse_documents(&d, "bench").expect("load"))
        .collect()
}

fn resources_changed(endpoints: usize, policies: usize) -> Vec<Resource> {
    resources(endpoints, policies, Some(policies / 2))
}

fn nft(netns: &str, v: &Value) -> Duration {
    let body = v.to_string();
    let started = Instant::now();
    // `-`: this process already runs in the node's namespace (as the agent does)
    // and calls nft directly, without the cost of `ip netns exec`.
    let mut cmd = if netns == "-" {
        Command::new("nft")
    } else {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", netns, "nft"]);
        c
    };
    let mut child = cmd
        .args(["-j", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("nft");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(body.as_bytes())
        .expect("write");
    let status = child.wait().expect("nft");
    assert!(status.success(), "nft -j -f failed");
    started.elapsed()
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        eprintln!("usage: policy_bench NETNS ENDPOINTS POLICIES [ROUNDS]");
        std::process::exit(2);
    }
    let netns = &args[1];
    let endpoints: usize = args[2].parse().expect("ENDPOINTS");
    let policies: usize = args[3].parse().expect("POLICIES");
    let rounds: usize = args.get(4).map_or(3, |r| r.parse().expect("ROUNDS"));
    let (mut t_model, mut t_compile, mut t_render, mut t_apply) = (vec![], vec![], vec![], vec![]);
    let (mut t_inc_compute, mut t_inc_apply, mut t_noop) = (vec![], vec![], vec![]);
    let (mut t_inc_steps, mut t_inc_total) = (Vec::new(), vec![]);
    let (mut t_lib_full, mut t_lib_inc) = (vec![], vec![]);
    // The agent's way when libnftables loads: one context kept open (NETNS `-`
    // only: the context belongs to this process's namespace).
    let mut session = (netns == "-").then(|| {
        tabby_sys::nftables::Session::open().expect("libnftables (apt-get install libnftables1)")
    });
    let mut lib = |v: &Value| -> Option<Duration> {
        let s = session.as_mut()?;
        let body = v.to_string();
        let started = Instant::now();
        s.run(&body, true).expect("libnftables batch");
        Some(started.elapsed())
    };
    let mut rules = 0;
    let mut inc_cmds = 0;
    let resources = resources(endpoints, policies, None);
    let changed = resources_changed(endpoints, policies);
    for _ in 0..rounds {
        let s = Instant::now();
        let model = Model::from_resources(&resources).expect("model");
        t_model.push(s.elapsed());
        let s = Instant::now();
        let compiled = compile_for_node(&model, "bench");
        t_compile.push(s.elapsed());
        let s = Instant::now();
        let rs = ruleset(&compiled);
        let full = batch(rs.commands());
        t_render.push(s.elapsed());
        rules = rs
            .tables
            .iter()
            .flat_map(|t| t.chains.values())
            .map(|c| c.rules.len())
            .sum();
        t_apply.push(nft(netns, &full));

        // One policy changed: rebuild, recompile, render, diff, apply; each step
        // timed, and the whole (model change to kernel) end to end.
        let s = Instant::now();
        let model2 = Model::from_resources(&changed).expect("model");
        let a = s.elapsed();
        let compiled2 = compile_for_node(&model2, "bench");
        let b = s.elapsed();
        let rs2 = ruleset(&compiled2);
        let c = s.elapsed();
        let update = diff(&rs, &rs2);
        let d = s.elapsed();
        t_inc_steps.push([a, b - a, c - b, d - c]);
        t_inc_compute.push(d);
        inc_cmds = update.len();
        t_inc_apply.push(nft(netns, &batch(update.clone())));
        t_inc_total.push(s.elapsed());
        // Back to the first state for the next round (not timed).
        nft(netns, &batch(diff(&rs2, &rs)));
        // The same through the long-lived libnftables context: the full state,
        // then the one changed policy, then back (not timed).
        if let Some(t) = lib(&full) {
            t_lib_full.push(t);
            t_lib_inc.push(lib(&batch(update.clone())).expect("session"));
            lib(&batch(diff(&rs2, &rs)));
        }
        // What any nft run costs with this table loaded: process start, netns
        // entry, nft's cache of the kernel's tables; the batch only adds the
        // table that is already there.
        t_noop.push(nft(
            netns,
            &batch(vec![
                serde_json::json!({"add": {"table": {"family": "ip", "name": "tabby"}}}),
            ]),
        ));
    }
    let total = median(t_model.clone())
        + median(t_compile.clone())
        + median(t_render.clone())
        + median(t_apply.clone());
    let step = |i: usize| {
        ms(median(
            t_inc_steps.iter().map(|s: &[Duration; 4]| s[i]).collect(),
        ))
    };
    let lib_ms = |v: Vec<Duration>| {
        if v.is_empty() {
            "n/a".to_string()
        } else {
            ms(median(v))
        }
    };
    println!(
        "| {endpoints} | {policies} | {rules} | {} | {} | {} | {} | {} | {} / {} / {} / {} = {} ({inc_cmds} cmds) | {} | {} | {} | {} | {} |",
        ms(median(t_model)),
        ms(median(t_compile)),
        ms(median(t_render)),
        ms(median(t_apply)),
        ms(total),
        step(0),
        step(1),
        step(2),
        step(3),
        ms(median(t_inc_compute)),
        ms(median(t_inc_apply)),
        ms(median(t_inc_total)),
        ms(median(t_noop)),
        lib_ms(t_lib_full),
        lib_ms(t_lib_inc),
    );
}
