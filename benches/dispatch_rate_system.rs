//! `dispatch_rate` on the system allocator (glibc malloc), for comparison:
//! `cargo bench --bench dispatch_rate_system -- [concurrency] [tasks]`. The program is
//! `support::dispatch_rate`.

mod support;

fn main() {
    support::dispatch_rate::main();
}
