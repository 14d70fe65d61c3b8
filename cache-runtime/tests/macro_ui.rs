//! Compile-time behaviour of the attributes: fixtures that must compile (and run) and
//! fixtures whose errors are pinned in `.stderr` snapshots (`TRYBUILD=overwrite` regenerates
//! them; review every diff: each error must point at the token it is about).

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass/*.rs");
    t.compile_fail("tests/ui/fail/*.rs");
}
