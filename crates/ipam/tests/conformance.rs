//! Runs every table of `conformance/ipam_cases.json` (except `ippool_validation`,
//! which belongs to the API crate) against the IPAM crate, on the in-memory store and on
//! SQLite. The file is read as data at test time; failures are collected and reported
//! together.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use common::{Backend, TestStore};
use ipnet::IpNet;
use serde_json::Value;
use tabby_ipam::random_block::RandomBlocks;
use tabby_ipam::{
    AffinityState, AllocationBlock, AllowedUse, AssignIpArgs, AutoAssignArgs, BlockAffinity,
    IpFamily, Ipam, IpamAssignments, IpamConfig, IpamError, PoolInfo, ReleaseOptions, StaticPools,
    keys, pool,
};

const SKIPPED_TABLES: &[&str] = &["_source", "ippool_validation"];

fn cases_path() -> PathBuf {
    match std::env::var_os("TABBY_CONFORMANCE_DIR") {
        Some(dir) => PathBuf::from(dir).join("ipam_cases.json"),
        None => PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../conformance/ipam_cases.json"
        )),
    }
}

fn load_cases() -> Value {
    let path = cases_path();
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read the IPAM conformance tables at {}: {e} (set TABBY_CONFORMANCE_DIR to a directory holding it)",
            path.display()
        )
    });
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: invalid JSON: {e}", path.display()))
}

#[derive(Default)]
struct Report {
    counts: BTreeMap<String, (usize, usize)>,
    failures: Vec<String>,
}

impl Report {
    fn record(&mut self, table: &str, case: &str, result: Result<(), String>) {
        let entry = self.counts.entry(table.to_owned()).or_default();
        match result {
            Ok(()) => entry.0 += 1,
            Err(why) => {
                entry.1 += 1;
                self.failures.push(format!("{table} / {case}: {why}"));
            }
        }
    }

    fn finish(self, backend: Backend) {
        let (mut pass, mut fail) = (0, 0);
        for (table, (p, f)) in &self.counts {
            eprintln!("[{backend:?}] {table}: {p} passed, {f} failed");
            pass += p;
            fail += f;
        }
        eprintln!("[{backend:?}] conformance: {pass} passed, {fail} failed");
        assert!(
            self.failures.is_empty(),
            "{} of {} IPAM conformance cases failed on {backend:?}:\n{}",
            fail,
            pass + fail,
            self.failures.join("\n")
        );
        assert!(pass > 0, "no conformance case ran");
    }
}

/// One IPAM client over a fresh store, with its in-memory pool source.
struct Harness {
    ipam: Ipam,
    pools: Arc<StaticPools>,
    _store: TestStore,
}

impl Harness {
    async fn new(backend: Backend) -> Harness {
        let store = backend.open().await;
        let pools = Arc::new(StaticPools::default());
        Harness {
            ipam: Ipam::new(store.store.clone(), pools.clone()),
            pools,
            _store: store,
        }
    }
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_default()
}

fn n(v: &Value) -> usize {
    v.as_u64().unwrap_or(0) as usize
}

fn net(text: &str) -> Result<IpNet, String> {
    text.parse().map_err(|e| format!("bad CIDR {text:?}: {e}"))
}

fn ip(text: &str) -> Result<IpAddr, String> {
    text.parse().map_err(|e| format!("bad IP {text:?}: {e}"))
}

fn parse_use(text: &str) -> Result<AllowedUse, String> {
    match text.to_ascii_lowercase().as_str() {
        "workload" => Ok(AllowedUse::Workload),
        "tunnel" => Ok(AllowedUse::Tunnel),
        "loadbalancer" => Ok(AllowedUse::LoadBalancer),
        other => Err(format!("unknown allowed use {other:?}")),
    }
}

fn error_kind(e: &IpamError) -> &'static str {
    match e {
        IpamError::NoQualifiedPool { .. } => "ErrNoQualifiedPool",
        IpamError::BlockLimit { .. } => "ErrBlockLimit",
        _ => "other",
    }
}

// ---- random_block_generator -------------------------------------------------------------

fn random_block_case(c: &Value) -> Result<(), String> {
    let pool = net(s(&c["pool_cidr"]))?;
    let block_size = c["block_size"].as_u64().ok_or("block_size missing")? as u8;
    let expected = n(&c["expected_block_count"]);
    let mut reference: Option<BTreeSet<IpNet>> = None;
    for host in ["test-host", "host-a", "another.host.example"] {
        let generator = RandomBlocks::new(&pool, block_size, host).map_err(|e| e.to_string())?;
        let blocks: Vec<IpNet> = generator.collect();
        if blocks.len() != expected {
            return Err(format!(
                "{host}: {} blocks, expected {expected}",
                blocks.len()
            ));
        }
        let set: BTreeSet<IpNet> = blocks.iter().copied().collect();
        if set.len() != blocks.len() {
            return Err(format!("{host}: a block was yielded twice"));
        }
        for b in &blocks {
            if b.prefix_len() != block_size
                || !pool.trunc().contains(&b.network())
                || b.trunc() != *b
            {
                return Err(format!(
                    "{host}: {b} is not a /{block_size} block of {pool}"
                ));
            }
        }
        match &reference {
            Some(r) if *r != set => return Err(format!("{host}: different block set")),
            _ => reference = Some(set),
        }
    }
    Ok(())
}

// ---- partial_fulfillment_error ----------------------------------------------------------

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| a.iter().map(|x| s(x).to_owned()).collect())
        .unwrap_or_default()
}

fn partial_case(c: &Value) -> Result<(), String> {
    let family = if n(&c["ip_version"]) == 6 {
        IpFamily::V6
    } else {
        IpFamily::V4
    };
    let mut ia = IpamAssignments::new(family, n(&c["num_requested"]));
    for i in 0..n(&c["num_ips"]) {
        let base: IpNet = if family == IpFamily::V4 {
            "10.0.0.0/8"
        } else {
            "fd00::/64"
        }
        .parse()
        .unwrap();
        ia.ips.push(
            base.hosts()
                .nth(i)
                .map(|a| IpNet::new(a, 26).unwrap())
                .unwrap(),
        );
    }
    ia.msgs = strings(&c["msgs"]);
    ia.host_reserved_handle = c["host_reserved_handle"].as_str().map(str::to_owned);
    let got = ia.partial_fulfillment_error().map(|e| e.to_string());
    let want = c["expected_error"].as_str().map(str::to_owned);
    if got != want {
        return Err(format!("got {got:?}, expected {want:?}"));
    }
    Ok(())
}

// ---- determine_pools --------------------------------------------------------------------

fn determine_case(c: &Value) -> Result<(), String> {
    let family = if n(&c["ip_version"]) == 6 {
        IpFamily::V6
    } else {
        IpFamily::V4
    };
    let pools: Vec<PoolInfo> = c["pools"]
        .as_array()
        .ok_or("pools missing")?
        .iter()
        .map(|p| {
            let cidr_text = s(&p["cidr"]);
            let mut pool = PoolInfo::new(cidr_text, net(cidr_text)?);
            pool.disabled = !p["enabled"].as_bool().unwrap_or(true);
            pool.node_selector = s(&p["nodeSelector"]).to_owned();
            Ok(pool)
        })
        .collect::<Result<_, String>>()?;
    let labels: BTreeMap<String, String> = c["node_labels"]
        .as_object()
        .map(|o| {
            o.iter()
                .map(|(k, v)| (k.clone(), s(v).to_owned()))
                .collect()
        })
        .unwrap_or_default();
    let requested = strings(&c["requested_pools"]);
    let result = pool::determine_pools(&pools, &requested, family, &labels, None);
    let expect_error = c["expect_error"].as_bool().unwrap_or(false);
    match (result, expect_error) {
        (Err(_), true) => Ok(()),
        (Err(e), false) => Err(format!("unexpected error: {e}")),
        (Ok(d), true) => Err(format!(
            "expected an error, got {:?}",
            d.selected.iter().map(|p| &p.name).collect::<Vec<_>>()
        )),
        (Ok(d), false) => {
            let got: Vec<String> = d.selected.iter().map(|p| p.name.clone()).collect();
            let want = strings(&c["expected_pools"]);
            if got == want {
                Ok(())
            } else {
                Err(format!("got {got:?}, expected {want:?}"))
            }
        }
    }
}

// ---- auto_assign ------------------------------------------------------------------------

fn compare_assignments(
    family: &str,
    expected: &Value,
    got: Option<&IpamAssignments>,
    pool_nets: &[IpNet],
) -> Result<(), String> {
    match (expected.is_null(), got) {
        (true, None) => Ok(()),
        (true, Some(g)) => Err(format!(
            "{family}: expected no assignments, got {} IPs {:?}",
            g.ips.len(),
            g.msgs
        )),
        (false, None) => Err(format!("{family}: expected assignments, got none")),
        (false, Some(g)) => {
            let want = (
                n(&expected["num_ips"]),
                n(&expected["ip_version"]),
                n(&expected["num_requested"]),
            );
            let have = (g.ips.len(), g.ip_version as usize, g.num_requested);
            if want != have {
                return Err(format!(
                    "{family}: got (ips, version, requested) = {have:?}, expected {want:?}; msgs {:?}",
                    g.msgs
                ));
            }
            let msgs = strings(&expected["msgs"]);
            if g.msgs != msgs {
                return Err(format!("{family}: msgs {:?}, expected {msgs:?}", g.msgs));
            }
            let unique: BTreeSet<IpAddr> = g.ips.iter().map(IpNet::addr).collect();
            if unique.len() != g.ips.len() {
                return Err(format!("{family}: an address was returned twice"));
            }
            if let Some(bad) = g
                .ips
                .iter()
                .find(|a| !pool_nets.iter().any(|p| p.contains(&a.addr())))
            {
                return Err(format!("{family}: {bad} is outside the allowed pools"));
            }
            Ok(())
        }
    }
}

async fn auto_assign_case(h: &Harness, c: &Value, index: usize) -> Result<(), String> {
    let mut pools = Vec::new();
    for p in c["pools"].as_array().ok_or("pools missing")? {
        let cidr = s(&p["cidr"]);
        let mut pool = PoolInfo::new(cidr, net(cidr)?).with_block_size(n(&p["blockSize"]) as u8);
        pool.disabled = !p["enabled"].as_bool().unwrap_or(true);
        if let Some(uses) = p["allowedUses"].as_array() {
            pool.allowed_uses = uses
                .iter()
                .map(|u| parse_use(s(u)))
                .collect::<Result<_, _>>()?;
        }
        pools.push(pool);
    }
    h.pools.set_pools(pools.clone());
    let cfg = IpamConfig {
        strict_affinity: c["strict_affinity"].as_bool().unwrap_or(false),
        ..IpamConfig::default()
    };
    h.ipam
        .set_ipam_config(&cfg)
        .await
        .map_err(|e| e.to_string())?;

    let host = s(&c["host"]);
    let mut args = AutoAssignArgs::new(host, n(&c["num_v4"]), n(&c["num_v6"]))
        .with_handle(format!("conformance-{index}"));
    args.max_blocks_per_host = n(&c["max_blocks_per_host_request"]) as u32;
    let use_pool = s(&c["use_pool"]);
    let (pool_part, use_part) = match use_pool.split_once('+') {
        Some((p, u)) => (p, Some(u)),
        None => (use_pool, None),
    };
    if let Some(u) = use_part {
        args.intended_use = parse_use(u)?;
    }
    let mut v4_nets: Vec<IpNet> = pools
        .iter()
        .filter(|p| p.family() == IpFamily::V4)
        .map(|p| p.network())
        .collect();
    let v6_nets: Vec<IpNet> = pools
        .iter()
        .filter(|p| p.family() == IpFamily::V6)
        .map(|p| p.network())
        .collect();
    if pool_part != "any" {
        let requested = net(pool_part)?;
        if IpFamily::of_net(&requested) == IpFamily::V4 {
            args.ipv4_pools = vec![pool_part.to_owned()];
            v4_nets = vec![requested.trunc()];
        } else {
            args.ipv6_pools = vec![pool_part.to_owned()];
        }
    }

    let expected_error = c["expected_error"].as_str();
    let (v4, v6) = match (h.ipam.auto_assign(&args).await, expected_error) {
        (Ok(r), None) => (r.v4, r.v6),
        (Ok(_), Some(kind)) => return Err(format!("expected {kind}, got success")),
        (Err(e), None) => return Err(format!("unexpected error: {e}")),
        (Err(e), Some(kind)) => {
            if error_kind(&e.error) != kind {
                return Err(format!("expected {kind}, got {}", e.error));
            }
            (e.v4, e.v6)
        }
    };
    compare_assignments("v4", &c["expected_v4"], v4.as_ref(), &v4_nets)?;
    compare_assignments("v6", &c["expected_v6"], v6.as_ref(), &v6_nets)?;
    let report = h.ipam.check().await.map_err(|e| e.to_string())?;
    if !report.is_clean() {
        return Err(format!("check after assign: {report}"));
    }
    Ok(())
}

// ---- claim_affinity ---------------------------------------------------------------------

fn default_pools(cidrs: &[String]) -> Result<Vec<PoolInfo>, String> {
    cidrs
        .iter()
        .map(|c| Ok(PoolInfo::new(c.as_str(), net(c)?)))
        .collect()
}

async fn claim_affinity_case(h: &Harness, c: &Value) -> Result<(), String> {
    h.pools.set_pools(default_pools(&strings(&c["pools"]))?);
    if let Some(a) = c["assign_ip"].as_str() {
        h.ipam
            .assign_ip(&AssignIpArgs::new(ip(a)?, "host-a"))
            .await
            .map_err(|e| format!("assign_ip {a}: {e}"))?;
    }
    let cidr = net(s(&c["cidr"]))?;
    let result = h.ipam.claim_affinity(cidr, s(&c["host"])).await;
    match (result, c["expected_error"].as_str()) {
        (Err(e), Some(want)) if e.to_string() == want => Ok(()),
        (Err(e), Some(want)) => Err(format!("error {:?}, expected {want:?}", e.to_string())),
        (Err(e), None) => Err(format!("unexpected error: {e}")),
        (Ok(_), Some(want)) => Err(format!("expected error {want:?}")),
        (Ok((claimed, failed)), None) => {
            let want = (n(&c["expected_claimed"]), n(&c["expected_failed"]));
            if (claimed.len(), failed.len()) != want {
                return Err(format!(
                    "claimed {claimed:?} failed {failed:?}, expected counts {want:?}"
                ));
            }
            let report = h.ipam.check().await.map_err(|e| e.to_string())?;
            if !report.is_clean() {
                return Err(format!("check after claim: {report}"));
            }
            Ok(())
        }
    }
}

// ---- release_ips ------------------------------------------------------------------------

async fn release_ips_case(h: &Harness, c: &Value, index: usize) -> Result<(), String> {
    h.pools.set_pools(default_pools(&[
        "192.168.1.0/24".into(),
        "fd80:24e2:f998:72d6::/120".into(),
    ])?);
    let host = "host-release";
    let mut assigned: Option<IpAddr> = None;
    if let Some(a) = c["assign_ip"].as_str() {
        let mut args = AssignIpArgs::new(ip(a)?, host);
        args.handle = Some(format!("release-{index}"));
        assigned = Some(
            h.ipam
                .assign_ip(&args)
                .await
                .map_err(|e| e.to_string())?
                .addr(),
        );
    }
    let mut auto: Vec<IpAddr> = Vec::new();
    let num = n(&c["auto_assign_v4"]);
    if num > 0 {
        let args = AutoAssignArgs::new(host, num, 0).with_handle(format!("release-auto-{index}"));
        let r = h.ipam.auto_assign(&args).await.map_err(|e| e.to_string())?;
        let v4 = r.v4.ok_or("no v4 result")?;
        if v4.ips.len() != num {
            return Err(format!("auto-assigned {} of {num}", v4.ips.len()));
        }
        auto = v4.ips.iter().map(IpNet::addr).collect();
    }
    let mut release = Vec::new();
    for r in strings(&c["release"]) {
        match r.as_str() {
            "<assigned>" => release.push(assigned.ok_or("<assigned> without assign_ip")?),
            "<all auto-assigned>" => release.extend(auto.iter().copied()),
            literal => release.push(ip(literal)?),
        }
    }
    let opts: Vec<ReleaseOptions> = release.iter().map(|a| ReleaseOptions::new(*a)).collect();
    let result = h.ipam.release_ips(&opts).await;
    let expect_error = c["expect_error"].as_bool().unwrap_or(false);
    let unallocated = match (result, expect_error) {
        (Ok(u), false) => u,
        (Err(_), true) => return Ok(()),
        (Ok(u), true) => return Err(format!("expected an error, got unallocated {u:?}")),
        (Err(e), false) => return Err(format!("unexpected error: {e}")),
    };
    let got: BTreeSet<IpAddr> = unallocated.into_iter().collect();
    let want: BTreeSet<IpAddr> = strings(&c["expected_unallocated"])
        .iter()
        .map(|a| ip(a))
        .collect::<Result<_, _>>()?;
    if got != want {
        return Err(format!("unallocated {got:?}, expected {want:?}"));
    }
    for a in &release {
        if h.ipam
            .get_assignment_attributes(*a)
            .await
            .map_err(|e| e.to_string())?
            .is_some()
        {
            return Err(format!("{a} is still assigned after release"));
        }
    }
    let report = h.ipam.check().await.map_err(|e| e.to_string())?;
    if !report.is_clean() {
        return Err(format!("check after release: {report}"));
    }
    Ok(())
}

// ---- release_sequence_number ------------------------------------------------------------

async fn release_sequence_case(h: &Harness, c: &Value) -> Result<(), String> {
    let host = "test-host";
    h.pools.set_pools(vec![PoolInfo::new(
        "192.168.0.0/16",
        net("192.168.0.0/16")?,
    )]);
    // The block exists with sequence number 0, affine to the host.
    let cidr = net("192.168.0.0/26")?;
    let block = AllocationBlock::new_for_host(cidr, host, "2024-01-01T00:00:00Z".into(), 0)
        .map_err(|e| e.to_string())?;
    let store = h.ipam.store();
    store
        .create(
            &keys::block_key(&cidr),
            &serde_json::to_vec(&block).unwrap(),
        )
        .await
        .map_err(|e| e.to_string())?;
    store
        .create(
            &keys::affinity_key(host, &cidr),
            &serde_json::to_vec(&BlockAffinity::new(AffinityState::Confirmed)).unwrap(),
        )
        .await
        .map_err(|e| e.to_string())?;
    for a in strings(&c["allocate"]) {
        let mut args = AssignIpArgs::new(ip(&a)?, host);
        args.handle = Some("test-handle".into());
        h.ipam
            .assign_ip(&args)
            .await
            .map_err(|e| format!("assign {a}: {e}"))?;
    }
    let expect: Vec<bool> = c["expect_error"]
        .as_array()
        .ok_or("expect_error missing")?
        .iter()
        .map(|v| v.as_bool().unwrap_or(false))
        .collect();
    for (i, r) in c["release"]
        .as_array()
        .ok_or("release missing")?
        .iter()
        .enumerate()
    {
        let address = ip(s(&r["address"]))?;
        let opts = ReleaseOptions {
            address,
            handle: r["handle"].as_str().map(str::to_owned),
            sequence_number: r["sequence_number"].as_u64(),
        };
        let result = h.ipam.release_ips(&[opts]).await;
        let still = h
            .ipam
            .get_assignment_attributes(address)
            .await
            .map_err(|e| e.to_string())?;
        match (result, expect.get(i).copied().unwrap_or(false)) {
            (Ok(u), false) if u.is_empty() && still.is_none() => {}
            (Ok(u), false) => {
                return Err(format!(
                    "release #{i}: unallocated {u:?}, still assigned: {}",
                    still.is_some()
                ));
            }
            (Err(e), true) if e.is_release_conflict() && still.is_some() => {}
            (Err(e), true) => {
                return Err(format!(
                    "release #{i}: error {e} (conflict: {}), still assigned: {}",
                    e.is_release_conflict(),
                    still.is_some()
                ));
            }
            (Ok(_), true) => return Err(format!("release #{i}: expected an error")),
            (Err(e), false) => return Err(format!("release #{i}: unexpected error {e}")),
        }
    }
    Ok(())
}

// ---- utilization_with_reservations ------------------------------------------------------

fn usage_matches(what: &str, want: &Value, got: &tabby_ipam::Usage) -> Result<(), String> {
    let w = (
        n(&want["capacity"]),
        n(&want["inUse"]),
        n(&want["reserved"]),
        n(&want["available"]),
    );
    let g = (
        got.capacity as usize,
        got.in_use as usize,
        got.reserved as usize,
        got.available as usize,
    );
    if w == g {
        Ok(())
    } else {
        Err(format!(
            "{what}: (capacity, inUse, reserved, available) = {g:?}, expected {w:?}"
        ))
    }
}

async fn utilization_case(h: &Harness, c: &Value) -> Result<(), String> {
    h.pools
        .set_pools(vec![PoolInfo::new("10.0.0.0/24", net("10.0.0.0/24")?)]);
    h.ipam
        .assign_ip(&AssignIpArgs::new(ip("10.0.0.5")?, "test-host"))
        .await
        .map_err(|e| e.to_string())?;
    h.pools.set_reservations(
        strings(&c["reserved_cidrs"])
            .iter()
            .map(|r| net(r))
            .collect::<Result<_, _>>()?,
    );
    let util = h
        .ipam
        .get_utilization(&[])
        .await
        .map_err(|e| e.to_string())?;
    let pool = util.first().ok_or("no pool in utilization")?;
    usage_matches("pool", &c["pool"], &pool.usage)?;
    let block = pool
        .blocks
        .iter()
        .find(|b| b.cidr.to_string() == "10.0.0.0/26")
        .ok_or("block 10.0.0.0/26 missing")?;
    usage_matches("block", &c["block"], &block.usage)
}

// ---- ipam_config_rules ------------------------------------------------------------------

async fn config_defaults(h: &Harness, d: &Value) -> Result<(), String> {
    let stored = h.ipam.ipam_config().await.map_err(|e| e.to_string())?;
    for cfg in [IpamConfig::default(), stored] {
        let got = (
            cfg.strict_affinity,
            cfg.auto_allocate_blocks,
            cfg.max_blocks_per_host as u64,
            cfg.effective_max_blocks(0) as u64,
            cfg.ip_cooldown_seconds,
            format!("{:?}", cfg.kube_virt_vm_address_persistence),
        );
        let want = (
            d["strictAffinity"].as_bool().unwrap_or(true),
            d["autoAllocateBlocks"].as_bool().unwrap_or(false),
            d["maxBlocksPerHost"].as_u64().unwrap_or(99),
            d["effective_max_blocks_per_host_when_0"]
                .as_u64()
                .unwrap_or(0),
            d["ipCooldownSeconds"].as_u64().unwrap_or(99),
            s(&d["kubeVirtVMAddressPersistence"]).to_owned(),
        );
        if got != want {
            return Err(format!("defaults {got:?}, expected {want:?}"));
        }
    }
    Ok(())
}

async fn config_case(h: &Harness, c: &Value) -> Result<(), String> {
    let cfg = IpamConfig {
        strict_affinity: c["strictAffinity"].as_bool().unwrap_or(false),
        auto_allocate_blocks: c["autoAllocateBlocks"].as_bool().unwrap_or(false),
        max_blocks_per_host: n(&c["maxBlocksPerHost"]) as u32,
        ..IpamConfig::default()
    };
    let before = h.ipam.ipam_config().await.map_err(|e| e.to_string())?;
    let result = h.ipam.set_ipam_config(&cfg).await;
    let after = h.ipam.ipam_config().await.map_err(|e| e.to_string())?;
    match (result, c["valid"].as_bool().unwrap_or(false)) {
        (Ok(()), true) if after == cfg => Ok(()),
        (Ok(()), true) => Err(format!("stored {after:?}, expected {cfg:?}")),
        (Err(e), false) => {
            let want = s(&c["error"]);
            if e.to_string() != want {
                return Err(format!("error {:?}, expected {want:?}", e.to_string()));
            }
            if after != before {
                return Err("an invalid config was stored".into());
            }
            Ok(())
        }
        (Ok(()), false) => Err("invalid config accepted".into()),
        (Err(e), true) => Err(format!("valid config refused: {e}")),
    }
}

// ---- driver -----------------------------------------------------------------------------

async fn run(backend: Backend) {
    let data = load_cases();
    let tables = data.as_object().expect("top level is an object");
    let mut report = Report::default();
    for (name, table) in tables {
        if SKIPPED_TABLES.contains(&name.as_str()) {
            continue;
        }
        let cases = table["cases"].as_array().cloned().unwrap_or_default();
        let mut harness: Option<Harness> = None;
        for (i, c) in cases.iter().enumerate() {
            let label = c["name"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| format!("#{i}"));
            // Tables with environments reuse the store only when clean_env is false.
            if harness.is_none() || c["clean_env"].as_bool() != Some(false) {
                harness = Some(Harness::new(backend).await);
            }
            let h = harness.as_ref().expect("set above");
            let result = match name.as_str() {
                "random_block_generator" => random_block_case(c),
                "partial_fulfillment_error" => partial_case(c),
                "determine_pools" => determine_case(c),
                "auto_assign" => auto_assign_case(h, c, i).await,
                "claim_affinity" => claim_affinity_case(h, c).await,
                "release_ips" => release_ips_case(h, c, i).await,
                "release_sequence_number" => release_sequence_case(h, c).await,
                "utilization_with_reservations" => utilization_case(h, c).await,
                "ipam_config_rules" => config_case(h, c).await,
                other => Err(format!("no runner for table {other}")),
            };
            report.record(name, &label, result);
        }
        if name == "ipam_config_rules" {
            let h = Harness::new(backend).await;
            report.record(
                name,
                "defaults",
                config_defaults(&h, &table["defaults"]).await,
            );
        }
    }
    report.finish(backend);
}

#[tokio::test]
async fn conformance_memory_store() {
    run(Backend::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_sqlite_store() {
    run(Backend::Sqlite).await;
}
