//! No panic unwinds into the host (issue #17: "no unwinding" was untested): every exported
//! function runs its body under `catch_unwind` (through `guard` or directly), and the
//! library is built to unwind (so that catching works at all), which `guard`'s own unit test
//! shows by turning a real panic into `CODERVPN_ERR_PANIC`.

use std::path::Path;

/// Each `extern "C" fn` item in `src/lib.rs` (not the callback types) catches unwinds.
#[test]
fn every_exported_function_catches_unwinds() {
    let src = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/lib.rs"))
        .expect("src/lib.rs");
    let mut exported = 0;
    for (i, _) in src.match_indices("#[unsafe(no_mangle)]") {
        let item = &src[i..];
        let body_start = item.find('{').expect("a body");
        let header = &item[..body_start];
        assert!(header.contains("extern \"C\" fn"), "{header}");
        // The body: up to the first closing brace at column 0.
        let body_end = item.find("\n}\n").expect("the end of the body");
        let body = &item[body_start..body_end];
        let name = header
            .split("fn ")
            .nth(1)
            .and_then(|s| s.split('(').next())
            .unwrap_or("?");
        assert!(
            body.contains("guard(") || body.contains("catch_unwind("),
            "{name} does not catch unwinds"
        );
        exported += 1;
    }
    assert_eq!(
        exported, 5,
        "codervpn_start/_stop/_utun_fd/_version/_last_error"
    );
}

/// `panic = "abort"` would make `catch_unwind` useless: the profiles must not set it.
#[test]
fn no_profile_aborts_on_panic() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for file in ["Cargo.toml", "capi/Cargo.toml"] {
        let text = std::fs::read_to_string(root.join(file)).expect(file);
        assert!(
            !text
                .lines()
                .any(|l| l.trim_start().starts_with("panic") && l.contains("abort")),
            "{file} sets panic = \"abort\""
        );
    }
}
