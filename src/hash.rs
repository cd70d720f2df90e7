//! See the table in lib.rs.
