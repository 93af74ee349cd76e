//! Regression tests of issue 11 ("Hardening: orchd safe to put on a network"), one or more
//! per finding, named `finding_NN_...` after the finding they guard. The daemon's own
//! (HTTPS, `orchd user`, two daemons on one PostgreSQL) are in `orchd/tests/orchd/`.

mod addresses;
mod logins;
mod metrics;
mod refusals;
mod server;
mod tokens;
mod webhooks;
