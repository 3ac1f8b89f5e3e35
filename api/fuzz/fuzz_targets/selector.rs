//! Label and field selector parsing must never panic, and what parses must print back to a
//! selector that parses to the same thing.
#![no_main]

use flotilla_api::selector::{FieldSelector, LabelSelector};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(sel) = LabelSelector::parse(text) {
        let again = LabelSelector::parse(&sel.to_string()).expect("a printed selector parses");
        assert_eq!(sel, again);
    }
    let _ = FieldSelector::parse(text);
});
