//! The client against b24emu over real HTTP on loopback. Each module is one
//! area of issue 4; `common` has the farm, the store adapter and the config.

mod batch;
mod common;
mod limits;
mod lists;
mod refresh;
mod refusals;
mod rename;
mod retries;
mod secrets;
