//! Importers that turn races from outside sources into `.race` files.
//! The CLI (`replay-hub import openf1 ...`) calls into them; they write through
//! [`crate::race::write_race`], so what they produce passes the hub's own validation.

pub mod openf1;
