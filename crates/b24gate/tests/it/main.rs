//! The `b24gate` binary driven as a user would: arguments, exit codes, files.

mod cli;
