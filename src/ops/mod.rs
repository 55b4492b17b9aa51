//! Commands for operators, beside `serve`: the container health probe and
//! waiting for a user's login. The binary's `main.rs` calls these; they
//! use the library like any other client would.

pub mod healthcheck;
pub mod login_wait;
