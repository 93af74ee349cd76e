//! Settings too large for the arithmetic they feed are refused, naming the setting, and never
//! wrap or panic (issue 11, finding 20).

use std::time::Duration;

use orch_http::config::SseConfig;
use orch_http::webhook::{SignatureError, sign, verify};
use orch_http::{HttpConfig, Secret};

use crate::common;

#[test]
fn a_webhook_tolerance_that_would_overflow_is_refused_and_never_wraps() {
    let huge = Duration::from_secs(u64::MAX);
    let mut config = common::config();
    config.webhook_tolerance = huge;
    let error = config
        .validate()
        .expect_err("a tolerance of u64::MAX seconds");
    assert_eq!(error.key, "security.webhook_tolerance");
    // `verify` itself (a public function) saturates instead of wrapping: a timestamp from the
    // far past or future is within an endless tolerance, never stale by overflow.
    let secrets = [Secret::new(common::WEBHOOK_SECRET)];
    let body = b"{\"a\":1}";
    let latest = 999_999_999_999; // the most a `t` may say (12 digits)
    for (timestamp, now) in [
        (latest, 10),
        (10, latest),
        (0, u64::MAX),
        (latest, u64::MAX),
    ] {
        let header = sign(common::WEBHOOK_SECRET, timestamp, body);
        assert!(verify(Some(&header), body, &secrets, now, huge).is_ok());
    }
    let header = sign(common::WEBHOOK_SECRET, latest, body);
    assert_eq!(
        verify(Some(&header), body, &secrets, 0, Duration::from_secs(300)),
        Err(SignatureError::Future)
    );
    // A sane tolerance still validates.
    let config = HttpConfig::new(Secret::new(common::JWT_SECRET)).with_sse(SseConfig::default());
    assert!(config.validate().is_ok());
}
