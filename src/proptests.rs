//! Property tests over the pure parts that face untrusted input: names from the peer and
//! every decoder. Any input: no panic, and a validated name never leaves its directory.

use std::path::{Component, Path};

use proptest::prelude::*;

use crate::ipc::codec;
use crate::ipc::messages::{ClientFrame, ServerFrame};
use crate::rendezvous::Code;
use crate::rendezvous::messages::{ClientMessage, ServerMessage};
use crate::transfer::layout::Layout;
use crate::transfer::names::{
    Limits, numbered_name, partial_name, validate_name, validate_offer, validate_path,
};
use crate::transfer::wire::{Control, FileEntry, FolderEntry, Manifest};

/// Strings biased toward what path attacks are made of.
fn hostile_name() -> impl Strategy<Value = String> {
    let pieces = prop::sample::select(vec![
        "..",
        ".",
        "/",
        "\\",
        ":",
        "a",
        "é",
        "\u{0}",
        "\u{1b}",
        "\u{7f}",
        "\u{85}",
        "\u{202e}",
        " ",
        "~",
        "C:",
        "x.p2pd-part",
    ]);
    prop_oneof![
        prop::collection::vec(pieces, 0..8).prop_map(|v| v.concat()),
        any::<String>(),
        "[a-z./\\\\]{0,12}",
    ]
}

/// `root.join(name)` is exactly one normal component below `root`.
fn stays_directly_under(root: &Path, name: &str) -> bool {
    let joined = root.join(name);
    let mut components = joined
        .strip_prefix(root)
        .map(|p| p.components().collect::<Vec<_>>())
        .unwrap_or_default();
    matches!(components.pop(), Some(Component::Normal(_)))
        && components.is_empty()
        && joined.parent() == Some(root)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn a_validated_name_always_stays_under_the_root(name in hostile_name(), n in 0u32..5) {
        let root = Path::new("/srv/downloads");
        if validate_name(&name).is_ok() {
            prop_assert!(stays_directly_under(root, &name), "{name:?}");
            prop_assert!(stays_directly_under(root, &numbered_name(&name, n)), "{name:?} #{n}");
            prop_assert!(stays_directly_under(root, &partial_name(&name, "0a1b")), "{name:?} partial");
            prop_assert!(!name.chars().any(char::is_control));
        }
    }

    #[test]
    fn offers_never_panic_and_accepted_ones_are_clean(names in prop::collection::vec(hostile_name(), 0..6), size in any::<u64>()) {
        let files: Vec<FileEntry> = names.iter().map(|n| FileEntry { name: n.clone(), size, ..FileEntry::default() }).collect();
        let offer = Manifest { files, ..Manifest::default() };
        if validate_offer(&offer, &Limits::default()).is_ok() {
            for file in &offer.files {
                prop_assert!(validate_path(&file.name).is_ok());
            }
        }
    }

    #[test]
    fn every_path_of_a_valid_tree_offer_stays_inside_its_partial(
        parts in prop::collection::vec(prop::collection::vec(hostile_name(), 1..4), 1..5),
    ) {
        let paths: Vec<String> = parts.iter().map(|p| p.join("/")).collect();
        let offer = Manifest {
            files: paths.iter().map(|p| FileEntry { name: p.clone(), ..FileEntry::default() }).collect(),
            folders: paths.iter().map(|p| FolderEntry { name: format!("{p}-d"), mtime: None }).collect(),
            skipped: vec![],
        };
        if validate_offer(&offer, &Limits::default()).is_ok() {
            let root = Path::new("/srv/downloads");
            let layout = Layout::new(&offer, "0a1b");
            for index in 0..offer.files.len() {
                let path = layout.partial_file(root, index);
                let inside = path.strip_prefix(root).map(|rest| {
                    rest.components().all(|c| matches!(c, Component::Normal(_)))
                });
                prop_assert_eq!(inside, Ok(true), "{:?}", path);
                let top = layout.partial_top(root, 0);
                prop_assert!(top.parent() == Some(root));
            }
            for folder in &offer.folders {
                let path = layout.partial_folder(root, &folder.name);
                prop_assert!(path.starts_with(root) && path.components().all(|c| !matches!(c, Component::ParentDir)));
            }
        }
    }

    #[test]
    fn control_decoder_never_panics(text in any::<String>()) {
        let _ = Control::decode(&text);
    }

    #[test]
    fn control_decoder_on_json_shaped_input(kind in "[a-z_]{0,12}", index in any::<i64>(), s in any::<String>()) {
        let text = format!(r#"{{"type":"{kind}","index":{index},"sha256":{s:?},"files":[{{"name":{s:?},"size":{index}}}]}}"#);
        let _ = Control::decode(&text);
    }

    #[test]
    fn ipc_decoders_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = codec::decode::<ClientFrame>(&bytes);
        let _ = codec::decode::<ServerFrame>(&bytes);
        if bytes.len() >= 4 {
            let header: [u8; 4] = bytes[..4].try_into().unwrap();
            if let Ok(len) = codec::body_len(header) {
                prop_assert!(len <= codec::MAX_FRAME_BYTES);
            }
        }
    }

    #[test]
    fn rendezvous_decoders_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512), text in any::<String>()) {
        let _ = serde_json::from_slice::<ClientMessage>(&bytes);
        let _ = serde_json::from_slice::<ServerMessage>(&bytes);
        let _ = serde_json::from_str::<ClientMessage>(&text);
    }

    #[test]
    fn code_parser_never_panics(text in any::<String>()) {
        if let Ok(code) = text.parse::<Code>() {
            // Whatever parses, prints back to something that parses to the same code.
            prop_assert_eq!(code.to_string().parse::<Code>().ok(), Some(code));
        }
    }
}
