//! The `b24gate` binary driven as a user would (arguments, exit codes,
//! files), and the whole gateway against b24emu end to end.

mod cli;
mod crash;
mod faults;
mod harness;
mod lifecycle;
mod metrics;
mod operations;
mod procs;
mod runtime;
mod scale;
