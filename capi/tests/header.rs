//! `include/codervpn.h` is what cbindgen makes of `src/lib.rs` today: regenerated with the
//! cbindgen library and compared, so CI needs no extra tool. `CODERVPN_BLESS=1` rewrites
//! the committed header instead of failing.

use std::path::Path;

#[test]
fn committed_header_matches_cbindgen_output() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(dir.join("cbindgen.toml")).expect("cbindgen.toml");
    let bindings = cbindgen::Builder::new()
        .with_config(config)
        .with_src(dir.join("src/lib.rs"))
        .generate()
        .expect("cbindgen parses src/lib.rs");
    let mut generated = Vec::new();
    bindings.write(&mut generated);
    let header = dir.join("include/codervpn.h");
    if std::env::var_os("CODERVPN_BLESS").is_some() {
        std::fs::write(&header, &generated).expect("writing include/codervpn.h");
        return;
    }
    let committed = std::fs::read(&header).unwrap_or_default();
    assert!(
        committed == generated,
        "capi/include/codervpn.h is stale; regenerate it with \
         `CODERVPN_BLESS=1 cargo test -p codervpn-capi --test header`"
    );
}
