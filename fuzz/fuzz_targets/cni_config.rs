//! Fuzzes what the CNI plugin reads from the runtime: the network config on stdin and
//! the `CNI_ARGS` string. Neither may panic; a rejected input must come back as a
//! spec error whose JSON form names a code and a message.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tabby_cni::config::NetConf;
use tabby_cni::env::{CniArgs, parse_list};

fuzz_target!(|data: &[u8]| {
    match NetConf::parse(data) {
        Ok((conf, _raw)) => {
            let _ = conf.require_main();
            let _ = conf.datastore_url(None);
            let _ = conf.ipam.want_v4();
            let _ = conf.ipam.want_v6();
        }
        Err(e) => {
            let json = e.to_json("1.1.0");
            assert!(json["code"].as_u64().is_some(), "{json}");
            assert!(!json["msg"].as_str().unwrap_or("").is_empty(), "{json}");
        }
    }
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(args) = CniArgs::parse(s) {
            let _ = args.pod_namespace();
            let _ = args.annotations();
        }
        let _ = parse_list(s);
    }
});
