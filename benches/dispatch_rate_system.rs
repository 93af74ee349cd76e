//! `dispatch_rate` with the system allocator (glibc malloc), for comparison:
//! `cargo bench --bench dispatch_rate_system -- [concurrency] [tasks]`.

include!("support/dispatch_rate_main.rs");
