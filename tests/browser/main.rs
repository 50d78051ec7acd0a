//! Browser tests (placeholder).
fn main() {}
