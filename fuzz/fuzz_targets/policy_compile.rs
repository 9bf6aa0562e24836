//! Fuzzes the policy compiler's input: any manifest that loads must compile, render
//! to an nftables batch, and be explainable for every pair of its endpoints, without
//! a panic; a model the compiler refuses must say why.
#![no_main]

use tabby_api::load::parse_documents;
use tabby_policy::compile::compile;
use tabby_policy::explain::explain;
use tabby_policy::model::Model;
use tabby_policy::nft::render;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(resources) = parse_documents(text, "fuzz.yaml") else {
        return;
    };
    let model = match Model::from_resources(&resources) {
        Ok(m) => m,
        Err(e) => {
            assert!(!e.to_string().is_empty());
            return;
        }
    };
    let compiled = compile(&model);
    let batch = render(&compiled);
    assert!(batch["nftables"].is_array(), "{batch}");
    let ids: Vec<String> = model
        .endpoints
        .iter()
        .map(|e| match &e.namespace {
            Some(ns) => format!("{ns}/{}", e.name),
            None => e.name.clone(),
        })
        .take(6)
        .collect();
    for from in &ids {
        for to in &ids {
            for (proto, port) in [(6u8, Some(80u16)), (17, Some(53)), (1, None)] {
                let _ = explain(&model, from, to, proto, port);
            }
        }
    }
});
