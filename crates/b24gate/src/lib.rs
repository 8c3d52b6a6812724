//! The `b24gate` binary's library half: command-line parsing, the commands,
//! and [`gateway::Gateway`], which wires store, engine and server together
//! (used by `serve`, `demo` and the end-to-end tests).

pub mod cli;
pub mod commands;
pub mod demo;
pub mod gateway;
pub mod ops;
