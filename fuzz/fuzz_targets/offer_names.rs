//! Names in an offer: a validated name never escapes the download directory.
#![no_main]

use std::path::{Component, Path};

use libfuzzer_sys::fuzz_target;
use p2pd::transfer::names::{numbered_name, partial_name, validate_name};

fuzz_target!(|data: &[u8]| {
    let Ok(name) = std::str::from_utf8(data) else { return };
    if validate_name(name).is_err() {
        return;
    }
    let root = Path::new("/srv/downloads");
    for candidate in [name.to_owned(), numbered_name(name, 3), partial_name(name, "2")] {
        let joined = root.join(&candidate);
        assert_eq!(joined.parent(), Some(root), "{candidate:?}");
        let rest: Vec<_> = joined.strip_prefix(root).unwrap().components().collect();
        assert!(matches!(rest.as_slice(), [Component::Normal(_)]), "{candidate:?}");
    }
});
