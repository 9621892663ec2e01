//! The browser page's own code, outside the browser: its crypto module against the
//! protocol's published test vectors (docs/PROTOCOL.md §4 and §5), run by Node.js.

use std::path::Path;
use std::process::Command;

use crate::netns_harness::skip;

#[test]
fn the_pages_crypto_computes_the_published_vectors() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let output = match Command::new("node")
        .arg(root.join("tests/web/vectors.mjs"))
        .arg(root.join("src/rendezvous/page/lib.mjs"))
        .output()
    {
        Ok(output) => output,
        Err(_) if std::env::var_os("CI").is_none() => {
            eprintln!("skipped: Node.js is not installed");
            return;
        }
        Err(_) => skip("needs Node.js (Debian: nodejs)"),
    };
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let got: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    let want = serde_json::json!({
        "msg_a": "4100ee15dac0c92e7639013cc474244c465960ecbc9d4ea463c60638e77649778e",
        "msg_b": "4221bf0608bd44ec68a13160f021ca215949fe90edbb616cef1e8b5e378ed050c0",
        "key": "9a2ed455bb2a9730053e167b76bcc93633b593f7d839f984dd89e0600dd636ad",
        "same_key": true,
        "tag_sender": "8fe7cda89bf6a8481ff7dff1f92d3a57b669d782caf9313e35f035860347ab81",
        "tag_receiver": "7b68644df6a9564a48fdff306ab3618e975cfb52a182813ba49409bda6eb2779",
        "confirms": true,
        "binding": "25319140a30af99d38384d307c52a4478542542bf299b62beed17a19ae807750",
        "resume": "1493aaef8aeaa26c3808ba37d32533479ad50c3d9d19f5c4a1e928ef51bc77ca",
        "sealed0": "00000000000000000c053adabbcc98d1ce82e0c7691faf9fc9a8774ef4894144800210848583abf4746b4863bfbae305b674689db6993dcc24af6314c4790451",
        "sealed1": "000000000000000145b093e9e506cb10bd5c3089bebf40de1cb33d85bcd49baf3a2a6ab4712dc9c9e43ab53708fdde86bb8f4c281f8dd1c1846a9fce907fc3f6",
        "opens": "{\"type\":\"offer\",\"sdp\":\"v=0\",\"attempt\":0}",
        "proof": "e038d7f7a6468b59881d574538c8f69fb0612a4969369d5f65b37e5fadd86f33",
        "rejoin": "fd702e3c932cc9f1c732d14865d55046c8be7c653003f16ea53bb9a32240f9c1",
        "commit": "40e534ff9d30f6b6718b0e3625e4cae43c3cef112228b21f0b803e5b8afd7cd0",
        "sas": "804 430",
    });
    assert_eq!(got, want);
}
