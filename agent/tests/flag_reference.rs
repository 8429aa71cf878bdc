//! `docs/flags/nodepulse-agent.md` is what the binary's flags say.

#[test]
fn the_flag_reference_is_current() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    testkit::flag_reference::check(
        "nodepulse-agent",
        std::path::Path::new(env!("CARGO_BIN_EXE_nodepulse-agent")),
        &[&[], &["run"], &["top"]],
        &root.join("docs/flags/nodepulse-agent.md"),
    );
}
