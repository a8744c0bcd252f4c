//! The dropsync client.
fn main() {}
