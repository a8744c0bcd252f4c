//! The dropsync server.
fn main() {}
