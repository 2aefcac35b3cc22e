//! Integration tests: one binary, one file per feature, a shared builder in
//! `support`. They run the real `uprun` binary against real files and a real
//! SQLite database in a temporary folder.

mod support;

mod adopt;
mod authoring;
mod backup_proof;
mod cli_errors;
mod db_contract;
mod demo;
mod durable;
mod errors;
mod host_errors;
mod host_rails;
mod lifecycle;
mod mssql;
mod mssql_real;
mod operator;
mod plan;
mod rails;
mod recovery;
mod ssh;
mod staging;
mod structure;
