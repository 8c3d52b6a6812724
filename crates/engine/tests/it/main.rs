//! The engine's runtime against a real SQLite store and a real HTTP receiver
//! on loopback standing in for the app.

mod helpers;
mod runtime;
mod scale;
