//! Helpers of the library's integration tests: the suites every plane and backend runs
//! ([`request_suite`] on each of [`planes`], [`discovery_suite`]) and a worker process
//! ([`worker`]). What every
//! package's tests share (real nats-server and etcd, a TCP server and raw peers on
//! 127.0.0.1) is the `planewire_testkit` crate.
#![allow(dead_code)] // each test binary uses a different subset

pub mod discovery_suite;
pub mod planes;
pub mod request_suite;
pub mod worker;
