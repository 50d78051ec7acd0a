//! Integration tests: real `redis-server` processes on free ports, real SQLite files in temp
//! dirs or (with `TEST_DATABASE=postgres`) a real PostgreSQL server, real HTTP against the
//! service bound on port 0. One binary, one module per concern.

mod admin;
mod cli;
mod clicks;
mod connections;
mod db_copy;
mod export;
mod faults;
mod framing;
mod helpers;
mod instances;
mod links_api;
mod openapi;
mod operations;
mod ownership;
mod pg;
mod qr;
#[path = "../support/qr_decode.rs"]
mod qr_decode;
mod ratelimit;
mod read_through;
mod redirect;
mod topology;
mod urls;
