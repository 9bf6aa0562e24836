//! Checks the captured golden BGP messages in crates/bgp/tests/golden are
//! well-formed frames of the type their name says, and that the README
//! documents each one. Needs no root.

use std::path::PathBuf;

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../bgp/tests/golden")
}

/// Message type expected from the file name `<daemon>_<what>.bin`.
fn expected_type(name: &str) -> u8 {
    let what = name.split_once('_').map(|(_, w)| w).unwrap_or_default();
    if what.starts_with("open") {
        1
    } else if what.starts_with("update") || what.starts_with("eor_") || what.starts_with("withdraw")
    {
        2
    } else if what.starts_with("notification") {
        3
    } else if what.starts_with("keepalive") {
        4
    } else if what.starts_with("route_refresh")
        || what.starts_with("borr")
        || what.starts_with("eorr")
    {
        5
    } else {
        panic!("{name}: unknown message kind")
    }
}

#[test]
fn golden_messages_are_framed_and_documented() {
    let dir = golden_dir();
    let readme = std::fs::read_to_string(dir.join("README.md")).expect("golden README.md");
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).expect("golden dir") {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !name.ends_with(".bin") {
            continue;
        }
        count += 1;
        let b = std::fs::read(&path).unwrap();
        assert!(b.len() >= 19, "{name}: shorter than a header");
        assert_eq!(&b[..16], &[0xff; 16], "{name}: marker");
        assert_eq!(
            usize::from(u16::from_be_bytes([b[16], b[17]])),
            b.len(),
            "{name}: length field"
        );
        assert_eq!(b[18], expected_type(&name), "{name}: message type");
        if name.contains("eor_ipv4") {
            assert_eq!(b.len(), 23, "{name}: IPv4 End-of-RIB is an empty UPDATE");
        }
        assert!(
            readme.contains(&format!("{name}:")),
            "{name}: not in the README's decoded section"
        );
    }
    // 3 daemons x 13 kinds, minus GoBGP's 3 route-refresh messages.
    assert_eq!(count, 36, "number of golden files");
}
