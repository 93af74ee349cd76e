//! A fixed-size dispatch-to-completion run on the in-memory backend, with mimalloc as the
//! global allocator (as `orchd` uses): `cargo bench --bench dispatch_rate -- [concurrency]
//! [tasks]`. The program is `support::dispatch_rate`; `dispatch_rate_system` is the same on
//! the system allocator.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod support;

fn main() {
    support::dispatch_rate::main();
}
