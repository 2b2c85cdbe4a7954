//! Integration tests: the real `tessera` binary as processes, real RocksDB,
//! real FUSE mounts, real SIGKILLs. One test binary, a module per area.

mod backup;
mod busy;
mod data;
mod database;
mod deferred;
mod docker;
mod etcd;
mod failover;
mod faults;
mod fio;
mod full;
mod gc;
mod harness;
mod inline;
mod input;
mod locks;
mod membership;
mod merge;
mod posix;
mod postgres;
mod repair;
mod scrub;
mod small;
mod two_mounts;
mod unlinked;
