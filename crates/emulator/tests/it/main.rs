//! Integration tests of b24emu, all through real HTTP on 127.0.0.1.

mod common;
mod delivery;
mod events;
mod faults;
mod lifecycle;
mod limits;
mod methods;
mod oauth;
mod offline;
mod process;
mod tls;
