//! The planner's figures against hand-computed ones for every model, the block-size
//! rule, capacities, every input error, and the JSON, table and SVG outputs.

use tabby_lab::plan::{
    Capacities, IpNet, Model, ModelPlan, Plan, PlanInput, Role, RolePlan, blocks_per_node, plan,
    render_svg, render_table, suggest_block_size,
};

/// 100 nodes in 4 racks of 25, 110 pods each, every other setting its default.
fn hundred() -> PlanInput {
    PlanInput {
        nodes: 100,
        racks: 4,
        pods_per_node: 110,
        ..PlanInput::default()
    }
}

fn model(p: &Plan, m: Model) -> &ModelPlan {
    p.models.iter().find(|x| x.model == m).unwrap()
}

fn role(p: &Plan, m: Model, r: Role) -> &RolePlan {
    model(p, m).roles.iter().find(|x| x.role == r).unwrap()
}

/// (count, sessions, routes, paths) of one role.
fn figures(p: &Plan, m: Model, r: Role) -> (u32, u64, u64, u64) {
    let x = role(p, m, r);
    (x.count, x.sessions, x.routes, x.paths)
}

fn roles(p: &Plan, m: Model) -> Vec<Role> {
    model(p, m).roles.iter().map(|r| r.role).collect()
}

#[test]
fn block_size_rule_is_the_smallest_block_holding_pods_plus_two() {
    assert_eq!(suggest_block_size(110, false), 25); // 112 <= 128
    assert_eq!(suggest_block_size(62, false), 26); // 64 <= 64
    assert_eq!(suggest_block_size(63, false), 25); // 65 > 64
    assert_eq!(suggest_block_size(250, false), 24); // 252 <= 256
    assert_eq!(suggest_block_size(254, false), 24); // 256
    assert_eq!(suggest_block_size(255, false), 23); // 257
    assert_eq!(suggest_block_size(1, false), 30); // 3 <= 4
    assert_eq!(suggest_block_size(2, false), 30); // 4
    assert_eq!(suggest_block_size(3, false), 29); // 5 <= 8
    // Clamped to Calico's range: /20 at most, several blocks per node beyond.
    assert_eq!(suggest_block_size(5000, false), 20);
    assert_eq!(suggest_block_size(u32::MAX, false), 20);
    assert_eq!(suggest_block_size(110, true), 121);
    assert_eq!(suggest_block_size(1, true), 126);
    assert_eq!(suggest_block_size(62, true), 122);
    assert_eq!(suggest_block_size(100_000, true), 116);
}

#[test]
fn blocks_per_node_rounds_up() {
    assert_eq!(blocks_per_node(110, 25), 1);
    assert_eq!(blocks_per_node(110, 26), 2);
    assert_eq!(blocks_per_node(64, 26), 1);
    assert_eq!(blocks_per_node(65, 26), 2);
    assert_eq!(blocks_per_node(5000, 20), 2); // 4096 per block
    assert_eq!(blocks_per_node(1, 32), 1);
    assert_eq!(blocks_per_node(110, 32), 110);
    assert_eq!(blocks_per_node(100, 122), 2); // IPv6: 64 per block
    assert_eq!(blocks_per_node(100, 128), 100);
}

#[test]
fn hundred_nodes_in_four_racks() {
    let p = plan(&hundred()).unwrap();
    assert!(p.block_size_suggested);
    assert_eq!(p.input.block_size, Some(25));
    assert_eq!(p.input.planes_per_host, Some(4));
    assert_eq!(p.input.models, Model::ALL.to_vec());
    assert_eq!(p.blocks_per_node, 1);
    assert_eq!(p.total_blocks, 100);
    assert_eq!(p.fabric_routes, 100);
    assert_eq!(p.largest_rack, 25);
    assert_eq!(
        p.models.iter().map(|m| m.model).collect::<Vec<_>>(),
        Model::ALL.to_vec()
    );
    for m in &p.models {
        assert_eq!(m.total_blocks, 100, "{}", m.model);
        assert!(m.fits, "{} fits with no capacities", m.model);
        let node = role(&p, m.model, Role::Node);
        assert_eq!(node.count, 100);
        assert_eq!(node.local_workload_routes, 110);
    }

    // mesh: N-1 sessions each, N(N-1)/2 in all, every block on every node.
    assert_eq!(roles(&p, Model::Mesh), [Role::Node]);
    assert_eq!(figures(&p, Model::Mesh, Role::Node), (100, 99, 100, 100));
    assert_eq!(model(&p, Model::Mesh).total_sessions, 4950);
    assert!(model(&p, Model::Mesh).notes.is_empty(), "100 nodes is fine");

    // route-reflector, 2 RRs: a node peers with both and hears each remote block twice.
    assert_eq!(
        roles(&p, Model::RouteReflector),
        [Role::Node, Role::RouteReflector]
    );
    assert_eq!(
        figures(&p, Model::RouteReflector, Role::Node),
        (100, 2, 100, 1 + 99 * 2)
    );
    assert_eq!(
        figures(&p, Model::RouteReflector, Role::RouteReflector),
        (2, 101, 100, 100)
    );
    assert_eq!(model(&p, Model::RouteReflector).total_sessions, 200 + 1);

    // l2-planes, 4 planes, hosts in all: one RR per plane serving every host.
    assert_eq!(
        figures(&p, Model::L2Planes, Role::Node),
        (100, 4, 100, 1 + 99 * 4)
    );
    assert_eq!(
        figures(&p, Model::L2Planes, Role::RouteReflector),
        (4, 100, 100, 100)
    );
    assert_eq!(model(&p, Model::L2Planes).total_sessions, 400);
    assert!(model(&p, Model::L2Planes).notes.is_empty());

    // AS per rack, Ethernet spine: 4 ToRs in a full mesh, 25 nodes each.
    assert_eq!(roles(&p, Model::AsPerRackL2Spine), [Role::Node, Role::Tor]);
    assert_eq!(
        figures(&p, Model::AsPerRackL2Spine, Role::Node),
        (100, 1, 100, 100)
    );
    assert_eq!(
        figures(&p, Model::AsPerRackL2Spine, Role::Tor),
        (4, 25 + 3, 100, 25 + 75 * 3)
    );
    assert_eq!(model(&p, Model::AsPerRackL2Spine).total_sessions, 100 + 6);

    // AS per rack, routed spine: ToRs peer the 2 spines instead of each other.
    let l3 = Model::AsPerRackL3Spine;
    assert_eq!(roles(&p, l3), [Role::Node, Role::Tor, Role::Spine]);
    assert_eq!(figures(&p, l3, Role::Node), (100, 1, 100, 100));
    assert_eq!(figures(&p, l3, Role::Tor), (4, 25 + 2, 100, 25 + 75 * 2));
    assert_eq!(figures(&p, l3, Role::Spine), (2, 4, 100, 100));
    assert_eq!(model(&p, l3).total_sessions, 100 + 4 * 2);

    // AS per server: the same shape, every session eBGP.
    let ps = Model::AsPerServer;
    for r in [Role::Node, Role::Tor, Role::Spine] {
        assert_eq!(figures(&p, ps, r), figures(&p, l3, r), "{r}");
    }
    assert_eq!(model(&p, ps).total_sessions, 108);
    assert!(model(&p, ps).notes[0].contains("105 private 4-octet ASNs"));

    // Downward default: own block + default on a node, rack + default on a ToR.
    let dd = Model::DownwardDefault;
    assert_eq!(figures(&p, dd, Role::Node), (100, 1, 1 + 1, 1 + 1));
    assert_eq!(figures(&p, dd, Role::Tor), (4, 27, 25 + 1, 25 + 2));
    assert_eq!(figures(&p, dd, Role::Spine), (2, 4, 100, 100));
    assert!(role(&p, dd, Role::Node).default_route);
    assert!(role(&p, dd, Role::Tor).default_route);
    assert!(!role(&p, dd, Role::Spine).default_route);
    assert!(!role(&p, l3, Role::Node).default_route);
    assert_eq!(model(&p, dd).total_sessions, 108);
}

#[test]
fn thousand_nodes_matches_the_landscape_example() {
    // landscape.md §4.1: 1000 nodes, 20 racks × 50, 110 pods/node, 2 × /26 per node,
    // 4 spines.
    let p = plan(&PlanInput {
        nodes: 1000,
        racks: 20,
        pods_per_node: 110,
        block_size: Some(26),
        spines: 4,
        ..PlanInput::default()
    })
    .unwrap();
    assert!(!p.block_size_suggested);
    assert_eq!(p.total_blocks, 2000);
    let mesh = model(&p, Model::Mesh);
    assert_eq!(mesh.total_sessions, 499_500);
    assert_eq!(
        figures(&p, Model::Mesh, Role::Node),
        (1000, 999, 2000, 2000)
    );
    assert!(
        mesh.notes[0].contains("route reflectors"),
        "{:?}",
        mesh.notes
    );
    assert_eq!(role(&p, Model::RouteReflector, Role::Node).sessions, 2);
    assert_eq!(
        role(&p, Model::RouteReflector, Role::RouteReflector).sessions,
        1001
    );
    assert_eq!(
        figures(&p, Model::AsPerRackL3Spine, Role::Tor),
        (20, 54, 2000, 100 + 1900 * 4)
    );
    assert_eq!(
        figures(&p, Model::AsPerRackL3Spine, Role::Spine),
        (4, 20, 2000, 2000)
    );
    assert_eq!(role(&p, Model::DownwardDefault, Role::Tor).routes, 101);
    assert_eq!(role(&p, Model::DownwardDefault, Role::Node).routes, 3);
}

#[test]
fn borrowed_addresses_uneven_racks_two_tors_and_partial_planes() {
    // 10 nodes over 3 racks (4, 3, 3); /26 blocks for 30 pods: 1 per node, 10 blocks;
    // 7 borrowed /32s: F = 17; the largest rack holds ceil(7·4/10) = 3 of them: r = 7.
    let p = plan(&PlanInput {
        nodes: 10,
        racks: 3,
        pods_per_node: 30,
        block_size: Some(26),
        borrowed: 7,
        tors_per_rack: 2,
        spines: 3,
        planes_per_host: Some(2),
        ..PlanInput::default()
    })
    .unwrap();
    assert_eq!(p.fabric_routes, 17);
    assert_eq!(p.largest_rack, 4);

    assert_eq!(figures(&p, Model::Mesh, Role::Node), (10, 9, 17, 17));
    assert_eq!(model(&p, Model::Mesh).total_sessions, 45);

    // 6 ToRs, 2 per rack; a node peers with both of its rack's.
    let l3 = Model::AsPerRackL3Spine;
    assert_eq!(figures(&p, l3, Role::Node), (10, 2, 17, 1 + 16 * 2));
    assert_eq!(figures(&p, l3, Role::Tor), (6, 4 + 3, 17, 7 + 10 * 3));
    assert_eq!(figures(&p, l3, Role::Spine), (3, 6, 17, 17 * 2));
    assert_eq!(model(&p, l3).total_sessions, 10 * 2 + 6 * 3);
    assert!(
        model(&p, l3)
            .notes
            .iter()
            .any(|n| n.contains("racks of 4 and 3") && n.contains("largest rack")),
        "{:?}",
        model(&p, l3).notes
    );

    let l2 = Model::AsPerRackL2Spine;
    assert_eq!(figures(&p, l2, Role::Tor), (6, 4 + 5, 17, 7 * 2 + 10 * 5));
    assert_eq!(model(&p, l2).total_sessions, 10 * 2 + 6 * 5 / 2);

    let dd = Model::DownwardDefault;
    assert_eq!(figures(&p, dd, Role::Node), (10, 2, 1 + 1, 1 + 2));
    assert_eq!(figures(&p, dd, Role::Tor), (6, 7, 7 + 1, 7 + 3));
    assert_eq!(figures(&p, dd, Role::Spine), (3, 6, 17, 34));
    assert!(
        model(&p, dd)
            .notes
            .iter()
            .any(|n| n.contains("borrowed") && n.contains("strictAffinity"))
    );

    // 2 of 4 planes per host: 5 hosts per plane, 5 blocks + ceil(7·5/10) = 4 /32s.
    let planes = Model::L2Planes;
    assert_eq!(figures(&p, planes, Role::Node), (10, 2, 17, 1 + 16 * 2));
    assert_eq!(figures(&p, planes, Role::RouteReflector), (4, 5, 9, 9));
    assert_eq!(model(&p, planes).total_sessions, 20);
    assert_eq!(
        model(&p, planes).notes.len(),
        2,
        "upper bound, no shared plane"
    );

    // Models that ignore racks say nothing about them.
    assert!(
        model(&p, Model::Mesh)
            .notes
            .iter()
            .all(|n| !n.contains("racks"))
    );
}

#[test]
fn sessions_add_up_from_both_ends() {
    // With even racks and hosts in every plane, every session has two ends among the
    // listed devices: sum(count × sessions) = 2 × total.
    for input in [
        hundred(),
        PlanInput {
            nodes: 240,
            racks: 12,
            pods_per_node: 250,
            tors_per_rack: 2,
            spines: 4,
            route_reflectors: 3,
            planes: 2,
            ..PlanInput::default()
        },
        PlanInput {
            nodes: 1,
            pods_per_node: 1,
            route_reflectors: 1,
            spines: 1,
            planes: 1,
            ..PlanInput::default()
        },
    ] {
        let p = plan(&input).unwrap();
        for m in &p.models {
            let ends: u64 = m
                .roles
                .iter()
                .map(|r| u64::from(r.count) * r.sessions)
                .sum();
            assert_eq!(ends, 2 * m.total_sessions, "{} for {input:?}", m.model);
        }
    }
}

#[test]
fn capacities_decide_what_fits() {
    let p = plan(&PlanInput {
        capacity: Capacities {
            node: Some(100),
            tor: Some(99),
            spine: Some(100),
            rr: Some(50),
        },
        ..hundred()
    })
    .unwrap();
    // Nodes hold 100 routes: exactly the limit fits.
    assert!(role(&p, Model::Mesh, Role::Node).fits);
    assert!(model(&p, Model::Mesh).fits);
    assert_eq!(role(&p, Model::Mesh, Role::Node).capacity, Some(100));
    // 100 routes on RRs with room for 50.
    let rr = role(&p, Model::RouteReflector, Role::RouteReflector);
    assert_eq!((rr.capacity, rr.fits), (Some(50), false));
    assert!(!model(&p, Model::RouteReflector).fits);
    // ToRs holding every block (100) overflow 99; downward-default ToRs hold 26.
    assert!(!role(&p, Model::AsPerRackL3Spine, Role::Tor).fits);
    assert!(role(&p, Model::AsPerRackL3Spine, Role::Spine).fits);
    assert!(role(&p, Model::DownwardDefault, Role::Tor).fits);
    assert!(model(&p, Model::DownwardDefault).fits);
    let misfits: Vec<(Model, Vec<Role>)> = p
        .misfits()
        .map(|(m, rs)| (m.model, rs.iter().map(|r| r.role).collect()))
        .collect();
    assert_eq!(
        misfits,
        [
            (Model::RouteReflector, vec![Role::RouteReflector]),
            (Model::L2Planes, vec![Role::RouteReflector]),
            (Model::AsPerRackL2Spine, vec![Role::Tor]),
            (Model::AsPerRackL3Spine, vec![Role::Tor]),
            (Model::AsPerServer, vec![Role::Tor]),
        ]
    );
    let table = render_table(&p);
    assert!(table.contains("DOES NOT FIT:"), "{table}");
    assert!(
        table.contains("  as-per-rack-l3-spine: ToR needs 100 routes, capacity 99"),
        "{table}"
    );
}

#[test]
fn models_are_chosen_by_name_in_the_given_order() {
    let p = plan(&PlanInput {
        models: vec![Model::DownwardDefault, Model::Mesh],
        ..hundred()
    })
    .unwrap();
    assert_eq!(
        p.models.iter().map(|m| m.model).collect::<Vec<_>>(),
        [Model::DownwardDefault, Model::Mesh]
    );
    for m in Model::ALL {
        assert_eq!(m.name().parse::<Model>(), Ok(m));
        assert_eq!(m.to_string(), m.name());
        let json = serde_json::to_string(&m).unwrap();
        assert_eq!(json, format!("\"{}\"", m.name()));
    }
    let err = "full-mesh".parse::<Model>().unwrap_err().to_string();
    assert_eq!(
        err,
        "unknown model \"full-mesh\"; expected one of mesh, route-reflector, l2-planes, \
         as-per-rack-l2-spine, as-per-rack-l3-spine, as-per-server, downward-default"
    );
}

/// Plans `input` changed by `f` and returns the error text.
fn error(f: impl FnOnce(&mut PlanInput)) -> String {
    let mut input = hundred();
    f(&mut input);
    let e = plan(&input).unwrap_err();
    let text = e.to_string();
    assert!(text.starts_with(&format!("{}: ", e.field)), "{text}");
    text
}

fn cidr(s: &str) -> IpNet {
    s.parse().unwrap()
}

/// A change to the input that makes it invalid.
type Change = Box<dyn FnOnce(&mut PlanInput)>;

#[test]
fn every_error_names_its_field() {
    let cases: Vec<(Change, &str)> = vec![
        (
            Box::new(|i| i.nodes = 0),
            "nodes: must be at least 1 (got 0)",
        ),
        (
            Box::new(|i| i.pods_per_node = 0),
            "podsPerNode: must be at least 1 (got 0)",
        ),
        (
            Box::new(|i| i.racks = 0),
            "racks: must be at least 1 (got 0)",
        ),
        (
            Box::new(|i| i.racks = 101),
            "racks: 101 racks for 100 nodes; a rack needs at least one node",
        ),
        (
            Box::new(|i| i.route_reflectors = 0),
            "routeReflectors: must be at least 1 (got 0)",
        ),
        (
            Box::new(|i| i.planes = 0),
            "planes: must be at least 1 (got 0)",
        ),
        (
            Box::new(|i| i.planes_per_host = Some(5)),
            "planesPerHost: 5 is outside 1..=4 (the planes)",
        ),
        (
            Box::new(|i| i.planes_per_host = Some(0)),
            "planesPerHost: 0 is outside 1..=4 (the planes)",
        ),
        (
            Box::new(|i| i.spines = 0),
            "spines: must be at least 1 (got 0)",
        ),
        (
            Box::new(|i| i.tors_per_rack = 0),
            "torsPerRack: must be at least 1 (got 0)",
        ),
        (
            Box::new(|i| i.capacity.tor = Some(0)),
            "capacity.tor: must be at least 1 route (leave it out for unlimited)",
        ),
        (
            Box::new(|i| i.capacity.rr = Some(0)),
            "capacity.rr: must be at least 1 route (leave it out for unlimited)",
        ),
        (
            Box::new(|i| i.models = vec![Model::Mesh, Model::AsPerServer, Model::Mesh]),
            "models[2]: mesh is listed twice",
        ),
        (
            Box::new(|i| i.block_size = Some(19)),
            "blockSize: 19 is outside 20..=32 for IPv4",
        ),
        (
            Box::new(|i| {
                i.pools = vec![cidr("fd00::/48")];
                i.block_size = Some(64);
            }),
            "blockSize: 64 is outside 116..=128 for IPv6",
        ),
        (
            Box::new(|i| i.pools.clear()),
            "pools: give at least one pool",
        ),
        (
            Box::new(|i| i.pools = vec![cidr("10.0.0.0/16"), cidr("fd00::/48")]),
            "pools[1]: fd00::/48 is not IPv4 like 10.0.0.0/16; plan one address family at a time",
        ),
        (
            Box::new(|i| i.pools = vec![cidr("10.0.0.0/16"), cidr("10.1.0.0/28")]),
            "pools[1]: 10.1.0.0/28 is smaller than one /25 block (the suggested blockSize)",
        ),
        (
            Box::new(|i| i.pools = vec![cidr("10.0.0.0/20")]),
            "pools: 10.0.0.0/20 holds 32 /25 blocks; 100 nodes × 1 need 100",
        ),
        (
            Box::new(|i| {
                i.pools = vec![cidr("10.0.0.0/20"), cidr("10.1.0.0/20")];
                i.block_size = Some(26);
            }),
            "pools: 2 pools hold 128 /26 blocks; 100 nodes × 2 need 200",
        ),
    ];
    for (change, want) in cases {
        assert_eq!(error(change), want);
    }
}

#[test]
fn ipv6_pools_take_ipv6_block_sizes() {
    let p = plan(&PlanInput {
        pools: vec![cidr("fd00:10::/48")],
        ..hundred()
    })
    .unwrap();
    assert_eq!(p.input.block_size, Some(121));
    assert_eq!(p.blocks_per_node, 1);
}

#[test]
fn input_reads_camel_case_yaml_and_json_and_rejects_unknown_keys() {
    let yaml = "nodes: 10\npodsPerNode: 20\nblockSize: 27\nplanesPerHost: 2\ntorsPerRack: 2\n\
                routeReflectors: 3\ncapacity:\n  tor: 5000\nmodels: [mesh, l2-planes]\n";
    let input: PlanInput = serde_saphyr::from_str(yaml).unwrap();
    assert_eq!(
        input,
        PlanInput {
            nodes: 10,
            pods_per_node: 20,
            block_size: Some(27),
            planes_per_host: Some(2),
            tors_per_rack: 2,
            route_reflectors: 3,
            capacity: Capacities {
                tor: Some(5000),
                ..Capacities::default()
            },
            models: vec![Model::Mesh, Model::L2Planes],
            ..PlanInput::default()
        }
    );
    assert_eq!(input.pools, [cidr("100.64.0.0/10")]);
    let json: PlanInput =
        serde_json::from_str(r#"{"nodes": 10, "podsPerNode": 20, "pools": ["10.0.0.0/16"]}"#)
            .unwrap();
    assert_eq!(json.pools, [cidr("10.0.0.0/16")]);

    let e = serde_json::from_str::<PlanInput>(r#"{"nodes": 10, "pods_per_node": 20}"#)
        .unwrap_err()
        .to_string();
    assert!(e.contains("unknown field `pods_per_node`"), "{e}");
    let e = serde_json::from_str::<PlanInput>(r#"{"capacity": {"leaf": 1}}"#)
        .unwrap_err()
        .to_string();
    assert!(e.contains("unknown field `leaf`"), "{e}");
    let e = serde_json::from_str::<PlanInput>(r#"{"models": ["full-mesh"]}"#)
        .unwrap_err()
        .to_string();
    assert!(e.contains("unknown variant `full-mesh`"), "{e}");
}

#[test]
fn the_example_file_plans() {
    let text = include_str!("../../../examples/plan.yaml");
    let input: PlanInput = serde_saphyr::from_str(text).unwrap();
    let p = plan(&input).unwrap();
    assert_eq!(p.total_blocks, 4000);
    assert_eq!(p.fabric_routes, 4200);
    // ToRs with 4000 routes hold only the downward-default share.
    assert_eq!(
        p.misfits().map(|(m, _)| m.model).collect::<Vec<_>>(),
        [
            Model::AsPerRackL2Spine,
            Model::AsPerRackL3Spine,
            Model::AsPerServer
        ]
    );
    assert_eq!(
        figures(&p, Model::DownwardDefault, Role::Tor),
        (40, 54, 106, 109)
    );
}

#[test]
fn plan_round_trips_through_json() {
    let p = plan(&PlanInput {
        borrowed: 9,
        capacity: Capacities {
            tor: Some(64),
            ..Capacities::default()
        },
        ..hundred()
    })
    .unwrap();
    let json = serde_json::to_string_pretty(&p).unwrap();
    let back: Plan = serde_json::from_str(&json).unwrap();
    assert_eq!(back, p);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["input"]["blockSize"], 25);
    assert_eq!(v["blockSizeSuggested"], true);
    assert_eq!(v["models"][0]["model"], "mesh");
    assert_eq!(v["models"][0]["totalSessions"], 4950);
    assert_eq!(v["models"][1]["roles"][1]["role"], "route-reflector");
    assert_eq!(v["models"][0]["roles"][0]["localWorkloadRoutes"], 110);
    // The resolved input plans to the same figures.
    assert_eq!(plan(&back.input).unwrap().models, p.models);
}

#[test]
fn table_lists_every_model_and_role() {
    let p = plan(&hundred()).unwrap();
    let table = render_table(&p);
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "MODEL", "ROLE", "COUNT", "SESSIONS", "ROUTES", "PATHS", "CAPACITY", "FITS"
        ]
    );
    let rows: Vec<Vec<&str>> = lines
        .take_while(|l| !l.is_empty())
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows.len(), 1 + 2 + 2 + 2 + 3 + 3 + 3);
    assert_eq!(
        rows[0],
        [
            "mesh",
            "node",
            "100",
            "99",
            "100",
            "100",
            "unlimited",
            "yes"
        ]
    );
    assert_eq!(
        rows[2],
        [
            "route-reflector",
            "RR",
            "2",
            "101",
            "100",
            "100",
            "unlimited",
            "yes"
        ]
    );
    assert_eq!(
        rows[14],
        [
            "downward-default",
            "ToR",
            "4",
            "27",
            "26",
            "27",
            "unlimited",
            "yes"
        ]
    );
    // Columns line up as tabwriter would: every row as wide as the header.
    let first = table.lines().next().unwrap().len();
    assert!(table.lines().take(17).all(|l| l.len() == first), "{table}");
    assert!(table.contains("Totals per model:\nMODEL"), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["mesh", "100", "4950", "yes"]),
        "{table}"
    );
    assert!(
        table.contains(
            "Block size: /25 (suggested: the smallest block holding 110 pods + 2 addresses); \
             1 block per node, 100 blocks in total; fabric routes 100 (blocks + 0 borrowed /32s)."
        ),
        "{table}"
    );
    assert!(!table.contains("DOES NOT FIT"), "{table}");
}

/// A tiny XML well-formedness check: every tag closes in order, attributes quoted,
/// no stray `<` or `&` in text.
fn assert_well_formed(xml: &str) {
    let mut stack: Vec<String> = Vec::new();
    let mut rest = xml;
    while let Some(start) = rest.find('<') {
        let text = &rest[..start];
        for (i, _) in text.match_indices('&') {
            let entity = &text[i..];
            assert!(
                ["&amp;", "&lt;", "&gt;", "&quot;", "&apos;"]
                    .iter()
                    .any(|e| entity.starts_with(e)),
                "bare & in {text:?}"
            );
        }
        let end = rest[start..].find('>').expect("unclosed tag") + start;
        let tag = &rest[start + 1..end];
        assert!(!tag.contains('<'), "< inside tag {tag:?}");
        assert_eq!(
            tag.matches('"').count() % 2,
            0,
            "unbalanced quotes in {tag:?}"
        );
        if let Some(name) = tag.strip_prefix('/') {
            assert_eq!(stack.pop().as_deref(), Some(name), "mismatched </{name}>");
        } else if !tag.ends_with('/') {
            let name = tag.split_whitespace().next().unwrap().to_string();
            stack.push(name);
        }
        rest = &rest[end + 1..];
    }
    assert!(rest.trim().is_empty(), "text after the root: {rest:?}");
    assert!(stack.is_empty(), "unclosed: {stack:?}");
}

#[test]
fn svg_is_a_well_formed_bar_chart() {
    let p = plan(&PlanInput {
        capacity: Capacities {
            tor: Some(99),
            spine: Some(1000),
            ..Capacities::default()
        },
        ..hundred()
    })
    .unwrap();
    let svg = render_svg(&p);
    assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
    assert!(svg.trim_end().ends_with("</svg>"));
    assert_well_formed(&svg);
    // A group per model, a bar (with a tooltip) per role.
    assert_eq!(svg.matches("<g class=\"model\"").count(), 7);
    let bars: usize = p.models.iter().map(|m| m.roles.len()).sum();
    assert_eq!(svg.matches("</rect>").count(), bars);
    for m in Model::ALL {
        assert!(svg.contains(&format!("data-model=\"{m}\"")), "{m}");
    }
    // Capacity marks: one per bar of a role with a capacity (ToR in 4 models,
    // spine in 3), plus the legend's.
    assert_eq!(svg.matches("stroke-dasharray").count(), 4 + 3 + 1);
    // Bars over capacity are outlined: ToRs of the 3 models holding every block.
    assert_eq!(
        svg.matches("stroke=\"#d62728\" stroke-width=\"2\"").count(),
        3 + 1
    );
    for label in ["node", "RR", "ToR", "spine", "capacity", "over capacity"] {
        assert!(svg.contains(&format!(">{label}</text>")), "legend {label}");
    }
    assert!(svg.contains("4950 sessions"));
}

#[test]
fn a_vxlan_tunnel_address_can_cost_a_block() {
    // 4 pods fill a /30; the node's VXLAN tunnel address needs a second block.
    let mut input = PlanInput {
        nodes: 3,
        pods_per_node: 4,
        block_size: Some(30),
        models: vec![Model::Mesh],
        ..PlanInput::default()
    };
    assert_eq!(plan(&input).unwrap().blocks_per_node, 1);
    input.tunnel_addresses = 1;
    let p = plan(&input).unwrap();
    assert_eq!(p.blocks_per_node, 2);
    assert_eq!(p.total_blocks, 6);
}
