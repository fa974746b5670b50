//! Helpers of the binary's integration tests: the `planewire` binary in child processes
//! ([`planewire_bin`]), hostile request-plane peers' handlers ([`hostile`]), ZMTP written
//! by hand ([`zmtp`]). What every package's tests share is the `planewire_testkit` crate.
#![allow(dead_code)] // each test binary uses a different subset

pub mod hostile;
pub mod planewire_bin;
#[cfg(feature = "zmq")]
pub mod zmtp;
