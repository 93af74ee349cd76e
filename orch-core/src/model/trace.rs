//! The W3C trace context a task carries (`traceparent`, `tracestate`), checked the way
//! <https://www.w3.org/TR/trace-context/> writes them. orch-core only stores and checks the two
//! strings; what they mean to a tracer is the business of a
//! [`TracePropagator`](crate::TracePropagator).

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Longest `traceparent`, in characters: version `00` is 55; later versions may append
/// fields, which are kept up to this length.
pub const MAX_TRACEPARENT_LEN: usize = 256;
/// Longest `tracestate`, in characters (the length W3C asks every vendor to pass on whole).
pub const MAX_TRACESTATE_LEN: usize = 512;
/// Most list members of a `tracestate`.
pub const MAX_TRACESTATE_MEMBERS: usize = 32;

/// A W3C trace context: the `traceparent` that names a span of a trace, and the vendors'
/// `tracestate` beside it. Built by [`TraceContext::new`], which checks both.
///
/// ```
/// use orch_core::TraceContext;
///
/// let context = TraceContext::new(
///     "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
///     Some("vendor=opaque".to_owned()),
/// )
/// .unwrap();
/// assert_eq!(context.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
/// assert!(TraceContext::new("00-nope", None).is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "UncheckedTraceContext")]
pub struct TraceContext {
    traceparent: String,
    tracestate: Option<String>,
}

/// A [`TraceContext`] as it arrives, checked by [`TraceContext::new`] before it becomes one.
#[derive(Deserialize)]
struct UncheckedTraceContext {
    traceparent: String,
    tracestate: Option<String>,
}

impl TryFrom<UncheckedTraceContext> for TraceContext {
    type Error = crate::Error;

    fn try_from(unchecked: UncheckedTraceContext) -> Result<Self> {
        TraceContext::new(unchecked.traceparent, unchecked.tracestate)
    }
}

impl TraceContext {
    /// A checked context; the error names the field (`traceparent` or `tracestate`) and what
    /// is wrong with it.
    pub fn new(traceparent: impl Into<String>, tracestate: Option<String>) -> Result<Self> {
        let traceparent = traceparent.into();
        check_traceparent(&traceparent)?;
        if let Some(state) = &tracestate {
            check_tracestate(state)?;
        }
        Ok(TraceContext {
            traceparent,
            tracestate,
        })
    }

    /// The `traceparent` header value.
    pub fn traceparent(&self) -> &str {
        &self.traceparent
    }

    /// The `tracestate` header value, if any.
    pub fn tracestate(&self) -> Option<&str> {
        self.tracestate.as_deref()
    }

    /// The trace id: 32 lowercase hexadecimal digits.
    pub fn trace_id(&self) -> &str {
        &self.traceparent[3..35]
    }

    /// The id of the span the context names (the parent of whatever continues it): 16
    /// lowercase hexadecimal digits.
    pub fn parent_id(&self) -> &str {
        &self.traceparent[36..52]
    }

    /// Whether the caller sampled the trace (flag `01`).
    pub fn sampled(&self) -> bool {
        u8::from_str_radix(&self.traceparent[53..55], 16).is_ok_and(|flags| flags & 1 == 1)
    }

    /// The two strings, as a task stores them.
    pub fn into_parts(self) -> (String, Option<String>) {
        (self.traceparent, self.tracestate)
    }
}

fn is_lower_hex(text: &str) -> bool {
    text.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Checks a `traceparent`: `version-traceid-parentid-flags`, lowercase hexadecimal, version
/// not `ff`, trace id and parent id not all zeros; version `00` is exactly 55 characters, a
/// later version may append `-` and further fields. The error names `traceparent`.
pub fn check_traceparent(value: &str) -> Result<()> {
    let refuse = |reason: &str| Err(Error::invalid("traceparent", reason.to_owned()));
    if value.len() > MAX_TRACEPARENT_LEN {
        return refuse(&format!("must be at most {MAX_TRACEPARENT_LEN} characters"));
    }
    if !value.is_ascii() || value.len() < 55 {
        return refuse(
            "must be version-traceid-parentid-flags, e.g. \
             00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        );
    }
    let bytes = value.as_bytes();
    if bytes[2] != b'-' || bytes[35] != b'-' || bytes[52] != b'-' {
        return refuse("fields must be separated by '-' (2, 32, 16 and 2 hexadecimal digits)");
    }
    let (version, trace_id, parent_id, flags) =
        (&value[..2], &value[3..35], &value[36..52], &value[53..55]);
    for (name, field) in [
        ("version", version),
        ("trace id", trace_id),
        ("parent id", parent_id),
        ("flags", flags),
    ] {
        if !is_lower_hex(field) {
            return refuse(&format!("its {name} must be lowercase hexadecimal digits"));
        }
    }
    if version == "ff" {
        return refuse("version ff is not allowed");
    }
    if trace_id.bytes().all(|b| b == b'0') {
        return refuse("its trace id must not be all zeros");
    }
    if parent_id.bytes().all(|b| b == b'0') {
        return refuse("its parent id must not be all zeros");
    }
    let rest = &value[55..];
    if version == "00" && !rest.is_empty() {
        return refuse("version 00 is exactly 55 characters");
    }
    if !rest.is_empty() && (!rest.starts_with('-') || rest.bytes().any(|b| !b.is_ascii_graphic())) {
        return refuse("fields after the flags must follow a '-' and be visible ASCII");
    }
    Ok(())
}

/// Checks a `tracestate`: at most [`MAX_TRACESTATE_LEN`] characters of visible ASCII and
/// spaces, at most [`MAX_TRACESTATE_MEMBERS`] comma-separated `key=value` members. The error
/// names `tracestate`.
pub fn check_tracestate(value: &str) -> Result<()> {
    let refuse = |reason: String| Err(Error::invalid("tracestate", reason));
    if value.trim().is_empty() {
        return refuse("must not be empty (leave it out instead)".to_owned());
    }
    if value.len() > MAX_TRACESTATE_LEN {
        return refuse(format!("must be at most {MAX_TRACESTATE_LEN} characters"));
    }
    if value
        .bytes()
        .any(|b| !(b == b' ' || b == b'\t' || b.is_ascii_graphic()))
    {
        return refuse("must be visible ASCII, spaces and tabs".to_owned());
    }
    let members: Vec<&str> = value
        .split(',')
        .map(|member| member.trim_matches([' ', '\t']))
        .filter(|member| !member.is_empty())
        .collect();
    if members.len() > MAX_TRACESTATE_MEMBERS {
        return refuse(format!(
            "must have at most {MAX_TRACESTATE_MEMBERS} members"
        ));
    }
    for member in members {
        match member.split_once('=') {
            Some((key, val)) if !key.is_empty() && !val.is_empty() => {}
            _ => return refuse(format!("member {member:?} is not key=value")),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_w3c_traceparent_is_accepted_and_read() {
        let context = TraceContext::new(GOOD, None).unwrap();
        assert_eq!(context.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(context.parent_id(), "00f067aa0ba902b7");
        assert!(context.sampled());
        let later = format!("01{}-extra", &GOOD[2..]);
        assert!(check_traceparent(&later).is_ok());
    }

    #[test]
    fn a_deserialized_context_is_checked_like_a_new_one() {
        let good: TraceContext =
            serde_json::from_value(serde_json::json!({"traceparent": GOOD, "tracestate": null}))
                .unwrap();
        assert_eq!(good.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        for bad in ["x", "00-é", ""] {
            let refused = serde_json::from_value::<TraceContext>(
                serde_json::json!({"traceparent": bad, "tracestate": null}),
            );
            assert!(refused.is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn bad_traceparents_are_refused_naming_the_field() {
        let zeros_trace = format!("00-{}-00f067aa0ba902b7-01", "0".repeat(32));
        let zeros_parent = format!("00-4bf92f3577b34da6a3ce929d0e0e4736-{}-01", "0".repeat(16));
        let cases = [
            "",
            "00",
            &GOOD[..54],
            &GOOD.to_uppercase(),
            &GOOD.replace('-', "_"),
            &format!("ff{}", &GOOD[2..]),
            &format!("{GOOD}-x"),
            &zeros_trace,
            &zeros_parent,
            &format!("00-4bf92f3577b34da6a3ce929d0e0e473g{}", &GOOD[35..]),
            &format!("01{}x", &GOOD[2..]),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0é",
            &"a".repeat(MAX_TRACEPARENT_LEN + 1),
        ];
        for case in cases {
            let error = check_traceparent(case).unwrap_err();
            assert!(
                error.to_string().contains("traceparent"),
                "{case:?}: {error}"
            );
        }
    }

    #[test]
    fn tracestate_is_checked() {
        assert!(check_tracestate("rojo=00f067aa0ba902b7, congo=t61rcWkgMzE").is_ok());
        let long = "k=".to_owned() + &"v".repeat(MAX_TRACESTATE_LEN);
        let many = (0..=MAX_TRACESTATE_MEMBERS)
            .map(|i| format!("k{i}=v"))
            .collect::<Vec<_>>()
            .join(",");
        for case in [
            "",
            " ",
            "novalue",
            "=v",
            "k=",
            "k=\u{1}",
            long.as_str(),
            &many,
        ] {
            let error = check_tracestate(case).unwrap_err();
            assert!(
                error.to_string().contains("tracestate"),
                "{case:?}: {error}"
            );
        }
    }
}
