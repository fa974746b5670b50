//! Helpers of the binary's integration tests: the `planewire` binary in child processes
//! ([`planewire_bin`]). What every package's tests share is the `planewire_testkit` crate.
#![allow(dead_code)] // each test binary uses a different subset

pub mod hostile;
pub mod planewire_bin;
