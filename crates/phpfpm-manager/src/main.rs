//! Entry point of the `phpfpm-manager` binary.

fn main() {}
