//! Fuzzes the manifest loader: arbitrary UTF-8 fed to `parse_documents` must not
//! panic, and whatever loads must survive `to_yaml` -> `parse_documents` (and the
//! same through JSON) as an equal resource list.
#![no_main]

use tabby_api::load::{parse_documents, to_json, to_yaml};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(resources) = parse_documents(text, "fuzz.yaml") else {
        return;
    };
    let yaml = to_yaml(&resources);
    let again = parse_documents(&yaml, "again.yaml")
        .unwrap_or_else(|e| panic!("output does not read back: {e}\n---\n{yaml}"));
    assert_eq!(
        again, resources,
        "YAML round trip changed the resources:\n{yaml}"
    );
    let json = to_json(&resources);
    let again = parse_documents(&json, "again.json")
        .unwrap_or_else(|e| panic!("JSON output does not read back: {e}\n---\n{json}"));
    assert_eq!(
        again, resources,
        "JSON round trip changed the resources:\n{json}"
    );
});
