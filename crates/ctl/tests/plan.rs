//! `tabbyctl plan` end to end: the example file, flags alone and over the file, the
//! three output formats, and bad input (exit 2, naming the file and line or the flag).

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

fn tabbyctl(args: &[&str], stdin: Option<&str>) -> Output {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut child = Command::new(env!("CARGO_BIN_EXE_tabbyctl"))
        .args(args)
        .current_dir(root)
        .env("TABBY_STORE", "sqlite:///nonexistent/store.db")
        .env("TABBY_CONFIG", "/nonexistent/tabbyctl.yaml")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        let mut pipe = child.stdin.take().unwrap();
        if let Some(text) = stdin {
            pipe.write_all(text.as_bytes()).unwrap();
        }
    }
    child.wait_with_output().unwrap()
}

/// Runs and requires exit 0; returns stdout.
fn ok(args: &[&str]) -> String {
    let out = tabbyctl(args, None);
    assert_eq!(
        out.status.code(),
        Some(0),
        "tabbyctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs and requires exit 2 with nothing on stdout; returns stderr.
fn bad(args: &[&str], stdin: Option<&str>) -> String {
    let out = tabbyctl(args, stdin);
    assert_eq!(
        out.status.code(),
        Some(2),
        "tabbyctl {args:?} should reject its input; stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(out.stdout.is_empty());
    String::from_utf8(out.stderr).unwrap()
}

/// The first table's rows, split into cells, keyed by "MODEL ROLE".
fn rows(table: &str) -> Vec<Vec<String>> {
    table
        .lines()
        .take_while(|l| !l.is_empty())
        .map(|l| l.split_whitespace().map(String::from).collect())
        .collect()
}

fn row<'a>(rows: &'a [Vec<String>], model: &str, role: &str) -> &'a [String] {
    rows.iter()
        .find(|r| r[0] == model && r[1] == role)
        .unwrap_or_else(|| panic!("no row {model} {role} in {rows:?}"))
}

#[test]
fn example_file_prints_every_model_and_what_does_not_fit() {
    let table = ok(&["plan", "examples/plan.yaml"]);
    let rows = rows(&table);
    assert_eq!(
        rows[0],
        [
            "MODEL", "ROLE", "COUNT", "SESSIONS", "ROUTES", "PATHS", "CAPACITY", "FITS"
        ]
    );
    assert_eq!(rows.len(), 1 + 16);
    // 2000 nodes, 40 racks of 50, 2 × /26 per node + 200 borrowed: 4200 routes.
    assert_eq!(
        row(&rows, "mesh", "node")[2..],
        ["2000", "1999", "4200", "4200", "unlimited", "yes"]
    );
    assert_eq!(
        row(&rows, "route-reflector", "RR")[2..],
        ["2", "2001", "4200", "4200", "unlimited", "yes"]
    );
    assert_eq!(
        row(&rows, "as-per-rack-l3-spine", "ToR")[2..],
        ["40", "54", "4200", "16485", "4000", "no"]
    );
    assert_eq!(
        row(&rows, "as-per-rack-l3-spine", "spine")[2..],
        ["4", "40", "4200", "4200", "128000", "yes"]
    );
    assert_eq!(
        row(&rows, "downward-default", "ToR")[2..],
        ["40", "54", "106", "109", "4000", "yes"]
    );
    assert_eq!(
        row(&rows, "downward-default", "node")[2..],
        ["2000", "1", "3", "3", "unlimited", "yes"]
    );
    assert!(table.contains("Block size: /26 (given); 2 blocks per node, 4000 blocks in total"));
    assert!(table.contains(
        "\nDOES NOT FIT:\n  as-per-rack-l2-spine: ToR needs 4200 routes, capacity 4000\n"
    ));
}

#[test]
fn flags_alone_plan_a_cluster() {
    let table = ok(&[
        "plan",
        "--nodes",
        "100",
        "--racks",
        "4",
        "--pods-per-node",
        "110",
        "--model",
        "mesh",
        "--model",
        "route-reflector",
        "--route-reflectors",
        "3",
    ]);
    let rows = rows(&table);
    assert_eq!(rows.len(), 1 + 3, "{table}");
    assert_eq!(
        row(&rows, "mesh", "node")[2..],
        ["100", "99", "100", "100", "unlimited", "yes"]
    );
    assert_eq!(
        row(&rows, "route-reflector", "node")[2..],
        ["100", "3", "100", "298", "unlimited", "yes"]
    );
    assert_eq!(
        row(&rows, "route-reflector", "RR")[2..],
        ["3", "102", "100", "100", "unlimited", "yes"]
    );
    assert!(table.contains("Block size: /25 (suggested"), "{table}");
    assert!(!table.contains("DOES NOT FIT"), "{table}");
}

#[test]
fn flags_override_the_file() {
    let table = ok(&[
        "plan",
        "examples/plan.yaml",
        "--capacity-tor",
        "16000",
        "--model",
        "as-per-rack-l3-spine",
        "--block-size",
        "25",
        "--borrowed",
        "0",
        "--spines",
        "2",
    ]);
    let rows = rows(&table);
    assert_eq!(rows.len(), 1 + 3, "{table}");
    // /25: one block per node, 2000 routes; ToRs peer 50 nodes and 2 spines.
    assert_eq!(
        row(&rows, "as-per-rack-l3-spine", "ToR")[2..],
        ["40", "52", "2000", "3950", "16000", "yes"]
    );
    assert!(!table.contains("DOES NOT FIT"), "{table}");
}

#[test]
fn json_and_svg_outputs() {
    let json = ok(&["plan", "examples/plan.yaml", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["totalBlocks"], 4000);
    assert_eq!(v["fabricRoutes"], 4200);
    assert_eq!(v["input"]["blockSize"], 26);
    assert_eq!(v["models"].as_array().unwrap().len(), 7);
    assert_eq!(v["models"][0]["model"], "mesh");
    assert_eq!(v["models"][0]["totalSessions"], 1_999_000);
    assert_eq!(v["models"][4]["fits"], false);

    let svg = ok(&["plan", "examples/plan.yaml", "-o", "svg"]);
    assert!(svg.starts_with("<svg"), "{svg}");
    assert!(svg.trim_end().ends_with("</svg>"));
    assert_eq!(svg.matches("<g class=\"model\"").count(), 7);

    // JSON input on stdin.
    let out = tabbyctl(
        &["plan", "-", "-o", "json"],
        Some(r#"{"nodes": 10, "racks": 2, "podsPerNode": 20, "models": ["mesh"]}"#),
    );
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["input"]["blockSize"], 27);
    assert_eq!(v["models"][0]["roles"][0]["sessions"], 9);
}

#[test]
fn bad_input_exits_2_naming_the_line_or_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };

    let f = write("zero.yaml", "nodes: 10\npodsPerNode: 0\n");
    let e = bad(&["plan", &f], None);
    assert!(
        e.contains(&format!("{f}:2: podsPerNode: must be at least 1 (got 0)")),
        "{e}"
    );
    // The flag that overrides it is named instead.
    let e = bad(&["plan", &f, "--pods-per-node", "0"], None);
    assert!(
        e.contains("--pods-per-node: must be at least 1 (got 0)"),
        "{e}"
    );
    assert!(ok(&["plan", &f, "--pods-per-node", "30"]).contains("mesh"));

    let f = write("unknown.yaml", "nodes: 10\npodsPerNode: 10\nleafs: 4\n");
    let e = bad(&["plan", &f], None);
    assert!(
        e.contains(&format!("{f}:3:1: unknown field `leafs`")),
        "{e}"
    );

    let f = write("type.yaml", "nodes: 10\npodsPerNode: many\n");
    let e = bad(&["plan", &f], None);
    assert!(e.contains(&format!("{f}:2:14: podsPerNode: ")), "{e}");

    let f = write(
        "pool.yaml",
        "nodes: 10\npodsPerNode: 10\npools:\n  - 10.0.0.0/16\n  - 10.1.0.0/30\n",
    );
    let e = bad(&["plan", &f], None);
    assert!(
        e.contains(&format!(
            "{f}:5: pools[1]: 10.1.0.0/30 is smaller than one /28 block"
        )),
        "{e}"
    );

    let f = write(
        "model.yaml",
        "nodes: 10\npodsPerNode: 10\nmodels: [mesh, ring]\n",
    );
    let e = bad(&["plan", &f], None);
    assert!(
        e.contains(&format!("{f}:3:16: models[1]: unknown variant `ring`")),
        "{e}"
    );

    let f = write("racks.yaml", "nodes: 3\npodsPerNode: 10\nracks: 4\n");
    let e = bad(&["plan", &f], None);
    assert!(
        e.contains(&format!(
            "{f}:3: racks: 4 racks for 3 nodes; a rack needs at least one node"
        )),
        "{e}"
    );

    let f = write("empty.yaml", "racks: 2\n");
    let e = bad(&["plan", &f], None);
    assert!(
        e.contains(&format!(
            "{f}: nodes: required; set it in {f} or with --nodes"
        )),
        "{e}"
    );

    let e = bad(&["plan", "--nodes", "5"], None);
    assert!(
        e.contains("podsPerNode: required; set it in FILE or with --pods-per-node"),
        "{e}"
    );
    let e = bad(
        &[
            "plan",
            "--nodes",
            "5",
            "--pods-per-node",
            "10",
            "--racks",
            "0",
        ],
        None,
    );
    assert!(e.contains("--racks: must be at least 1 (got 0)"), "{e}");
    let e = bad(
        &[
            "plan",
            "--nodes",
            "5",
            "--pods-per-node",
            "10",
            "--block-size",
            "19",
        ],
        None,
    );
    assert!(
        e.contains("--block-size: 19 is outside 20..=32 for IPv4"),
        "{e}"
    );

    // Values clap cannot parse are bad input too.
    let e = bad(&["plan", "--nodes", "many"], None);
    assert!(e.contains("'--nodes <N>'"), "{e}");
    let e = bad(
        &[
            "plan",
            "--nodes",
            "5",
            "--pods-per-node",
            "5",
            "--model",
            "ring",
        ],
        None,
    );
    assert!(
        e.contains("unknown model \"ring\"; expected one of mesh, route-reflector"),
        "{e}"
    );

    let e = bad(&["plan", "does-not-exist.yaml"], None);
    assert!(e.contains("does-not-exist.yaml: cannot read:"), "{e}");
    let e = bad(&["plan", "-"], Some("nodes: [1\n"));
    assert!(e.contains("<stdin>:"), "{e}");
}

#[test]
fn usage_errors_elsewhere_still_exit_1() {
    let out = tabbyctl(&["get", "--bogus"], None);
    assert_eq!(out.status.code(), Some(1));
}
