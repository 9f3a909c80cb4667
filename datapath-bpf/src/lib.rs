#![no_std]
// A library target lets the daemon list this crate as a build-dependency (aya-build's pattern),
// so cargo rebuilds the daemon when the programs change. The programs live in main.rs.
