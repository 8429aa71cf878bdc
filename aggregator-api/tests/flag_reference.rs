//! `docs/flags/nodepulse-aggregator.md` and `docs/flags/nodepulse-watch.md`
//! are what the binaries' flags say.

#[test]
fn the_flag_references_are_current() {
    let docs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/flags");
    testkit::flag_reference::check(
        "nodepulse-aggregator",
        std::path::Path::new(env!("CARGO_BIN_EXE_nodepulse-aggregator")),
        &[&[]],
        &docs.join("nodepulse-aggregator.md"),
    );
    testkit::flag_reference::check(
        "nodepulse-watch",
        std::path::Path::new(env!("CARGO_BIN_EXE_nodepulse-watch")),
        &[&[]],
        &docs.join("nodepulse-watch.md"),
    );
}
