//! The wire format: what a bridged event is on NATS, so that another
//! implementation (the Python package, a Go or Java service) can publish
//! and read the events of a Switchboard bot.
//!
//! # Version 1
//!
//! One event is one NATS message:
//!
//! * **subject**: `<prefix>.<escaped name>`, the name escaped token by token
//!   as [`crate::subject`] describes;
//! * **payload**: the event's data as JSON (UTF-8, any JSON value);
//! * **headers**, every value printable ASCII without spaces:
//!
//! | header | required | value |
//! | --- | --- | --- |
//! | [`VERSION_HEADER`] `Switchboard-Version` | no (absent means 1) | the format version, exactly `1` (no leading zero) |
//! | [`ORIGIN`] `Switchboard-Origin` | yes | the exporting bridge's instance id: 1 to 256 printable ASCII characters, no space |
//! | [`ID`] `Switchboard-Id` | yes | the event id: exactly 32 hex digits (a `u128`) |
//! | [`KEY`] `Switchboard-Key` | yes | the publish key, unique to one accepted publish: exactly 32 hex digits; by convention the exporting bus's instance in the high 64 bits and the event's sequence number in the low 64 |
//! | [`SOURCE`] `Switchboard-Source` | no (absent means `""`) | the source name, escaped as a subject token is (`%XX` for every byte but letters, digits and `- _ + = , : ; @ ! # $ & ( ) / ' " ? [ ] ^ { } \| ~`; `%` alone for the empty string) |
//! | [`PRIORITY`] `Switchboard-Priority` | no (absent means `normal`) | `low`, `normal` or `high` |
//! | [`TIMESTAMP`] `Switchboard-Timestamp` | no (absent means the time of import) | nanoseconds since the Unix epoch, decimal digits only (leading zeros allowed), at most 39 of them, and a time the platform can represent |
//! | [`PARENT`] `Switchboard-Parent` | no (absent means no parent) | the id of the event that caused this one ([`Event::parent`](switchboard::Event::parent)): exactly 32 hex digits |
//! | [`PARENT_KEY`] `Switchboard-Parent-Key` | no; only beside `Switchboard-Parent` | the parent's publish key, made as `Switchboard-Key` is: the instance of the bus that numbered the parent in the high 64 bits, its sequence number there in the low 64; exactly 32 hex digits |
//! | [`MSG_ID`] `Nats-Msg-Id` | JetStream only | the publish key again: what the stream's duplicate window goes by |
//!
//! The two parent headers came after the rest of version 1. They are
//! optional, so the version stays 1: a reader that predates them ignores
//! them, and a message without them reads as it always did. A reader that
//! knows them refuses a malformed one, and a `Switchboard-Parent-Key`
//! without `Switchboard-Parent`, as it refuses any malformed header.
//!
//! A reader must refuse (skip, and count) a message whose version it does
//! not know, that lacks a required header, or whose header holds a value
//! outside its encoding; a missing optional header takes its default. A
//! reader drops a message whose publish key it has imported lately (a
//! re-send), and skips one whose origin is its own (an echo).
//!
//! [`Envelope`] reads and writes the headers, checked, so Rust code that is
//! not a [`Bridge`](crate::Bridge) speaks the same format:
//!
//! ```
//! use std::time::{Duration, UNIX_EPOCH};
//! use switchboard::{Cause, EventId, Priority};
//! use switchboard_nats::wire::{Envelope, WireError, TIMESTAMP};
//!
//! let envelope = Envelope {
//!     origin: "shard-1".into(),
//!     id: 0xab,
//!     key: 7 << 64 | 1,
//!     source: "chat bridge".into(),
//!     priority: Priority::High,
//!     timestamp: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
//!     // The chat line its handler was handling: sequence 0 on bus 7.
//!     parent: Some(Cause::new(EventId::from_u128(0xaa)).with_sequence(7, 0)),
//! };
//! let mut headers = envelope.to_headers();
//! assert_eq!(Envelope::from_headers(Some(&headers)), Ok(envelope));
//!
//! headers.insert(TIMESTAMP, "18446744073709551615000000000");
//! assert!(matches!(
//!     Envelope::from_headers(Some(&headers)),
//!     Err(WireError::Malformed { header: TIMESTAMP, .. })
//! ));
//! ```

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::{HeaderMap, HeaderValue};
use switchboard::{Cause, EventId, Priority};

use crate::subject;

/// The format version this crate writes, and the only one it reads.
pub const VERSION: u32 = 1;

/// The format version's header.
pub const VERSION_HEADER: &str = "Switchboard-Version";
/// The exporting bridge's instance id.
pub const ORIGIN: &str = "Switchboard-Origin";
/// The event id, 32 hex digits.
pub const ID: &str = "Switchboard-Id";
/// The publish key, 32 hex digits: what de-duplication goes by.
pub const KEY: &str = "Switchboard-Key";
/// The escaped source name.
pub const SOURCE: &str = "Switchboard-Source";
/// `low`, `normal` or `high`.
pub const PRIORITY: &str = "Switchboard-Priority";
/// Nanoseconds since the Unix epoch.
pub const TIMESTAMP: &str = "Switchboard-Timestamp";
/// The id of the event that caused this one, 32 hex digits (optional).
pub const PARENT: &str = "Switchboard-Parent";
/// The parent's publish key, 32 hex digits (optional, only with [`PARENT`]).
pub const PARENT_KEY: &str = "Switchboard-Parent-Key";
/// JetStream's de-duplication header, set to the publish key.
pub const MSG_ID: &str = "Nats-Msg-Id";

/// The longest origin accepted, in bytes.
pub const MAX_ORIGIN_LEN: usize = 256;

/// How much of a refused header value an error keeps (values come from the
/// network: a log line must not carry a megabyte of it).
const SHOWN: usize = 64;

/// An event's metadata as the headers carry it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    /// The exporting bridge's instance id.
    pub origin: String,
    /// The event id.
    pub id: u128,
    /// The publish key.
    pub key: u128,
    /// The source name, unescaped.
    pub source: String,
    /// The priority.
    pub priority: Priority,
    /// When the event was made.
    pub timestamp: SystemTime,
    /// The event that caused it ([`Event::parent`](switchboard::Event::parent)):
    /// its id in [`PARENT`], and its bus instance and sequence number, when
    /// known, as a publish key in [`PARENT_KEY`].
    pub parent: Option<Cause>,
}

/// Why a message's headers are not a bridged event's.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum WireError {
    /// A required header is missing (or the message has no headers, or a
    /// header comes without the one it goes with: [`PARENT_KEY`] without
    /// [`PARENT`]).
    Missing(&'static str),
    /// A header's value is outside its encoding.
    Malformed {
        /// The header.
        header: &'static str,
        /// Its value (the first 64 bytes of it).
        value: String,
    },
    /// The message is of a format version this crate does not read.
    UnsupportedVersion(String),
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::Missing(header) => write!(f, "no {header} header"),
            WireError::Malformed { header, value } => {
                write!(f, "malformed {header} header {value:?}")
            }
            WireError::UnsupportedVersion(v) => write!(
                f,
                "wire format version {v:?} is not one this bridge reads (it reads {VERSION})"
            ),
        }
    }
}

impl std::error::Error for WireError {}

fn shown(value: &str) -> String {
    let mut end = value.len().min(SHOWN);
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    value[..end].to_owned()
}

fn malformed(header: &'static str, value: &str) -> WireError {
    WireError::Malformed { header, value: shown(value) }
}

/// `low`, `normal` or `high`.
pub fn priority_token(priority: Priority) -> &'static str {
    match priority {
        Priority::Low => "low",
        Priority::High => "high",
        _ => "normal",
    }
}

/// The inverse of [`priority_token`]; `None` for anything else.
pub fn parse_priority(token: &str) -> Option<Priority> {
    match token {
        "low" => Some(Priority::Low),
        "normal" => Some(Priority::Normal),
        "high" => Some(Priority::High),
        _ => None,
    }
}

/// Nanoseconds since the Unix epoch, decimal (`0` for a time before it).
pub fn timestamp_token(timestamp: SystemTime) -> String {
    timestamp.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos()).to_string()
}

/// The inverse of [`timestamp_token`]; `None` for anything but decimal
/// digits, or a time the platform cannot represent. Every step is checked.
pub fn parse_timestamp(token: &str) -> Option<SystemTime> {
    let nanos = parse_decimal(token)?;
    let secs = u64::try_from(nanos / 1_000_000_000).ok()?;
    let subsec = u32::try_from(nanos % 1_000_000_000).ok()?;
    UNIX_EPOCH.checked_add(Duration::new(secs, subsec))
}

/// Digits only (no sign, no space), fitting a `u128`.
fn parse_decimal(token: &str) -> Option<u128> {
    if token.is_empty() || token.len() > 39 || !token.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    token.parse().ok()
}

/// Exactly 32 hex digits, as ids and publish keys are written.
pub fn hex_token(value: u128) -> String {
    format!("{value:032x}")
}

/// The inverse of [`hex_token`] (either case); `None` for anything but 32
/// hex digits.
pub fn parse_hex(token: &str) -> Option<u128> {
    if token.len() != 32 || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u128::from_str_radix(token, 16).ok()
}

/// Whether `origin` may travel in [`ORIGIN`]: 1 to [`MAX_ORIGIN_LEN`]
/// printable ASCII characters, no space.
pub fn is_valid_origin(origin: &str) -> bool {
    !origin.is_empty()
        && origin.len() <= MAX_ORIGIN_LEN
        && origin.bytes().all(|b| b.is_ascii_graphic())
}

fn value(text: &str) -> HeaderValue {
    // Every value written here is printable ASCII (checked origins, hex,
    // decimal, escaped text).
    HeaderValue::from(text)
}

impl Envelope {
    /// The headers for this envelope, the version and (for JetStream's
    /// de-duplication) [`MSG_ID`] included. The origin is written as it is:
    /// check it with [`is_valid_origin`] first, or readers refuse it.
    pub fn to_headers(&self) -> HeaderMap {
        let key = hex_token(self.key);
        let mut headers = HeaderMap::new();
        headers.insert(VERSION_HEADER, value(&VERSION.to_string()));
        headers.insert(ORIGIN, value(&self.origin));
        headers.insert(ID, value(&hex_token(self.id)));
        headers.insert(KEY, value(&key));
        headers.insert(MSG_ID, value(&key));
        headers.insert(SOURCE, value(&subject::escape_header(&self.source)));
        headers.insert(PRIORITY, value(priority_token(self.priority)));
        headers.insert(TIMESTAMP, value(&timestamp_token(self.timestamp)));
        if let Some(parent) = &self.parent {
            headers.insert(PARENT, value(&hex_token(parent.id().as_u128())));
            if let (Some(bus), Some(seq)) = (parent.bus(), parent.sequence()) {
                let key = (u128::from(bus) << 64) | u128::from(seq);
                headers.insert(PARENT_KEY, value(&hex_token(key)));
            }
        }
        headers
    }

    /// Reads and checks the headers of a message. A missing optional header
    /// takes its default (the timestamp's is now).
    ///
    /// # Errors
    ///
    /// [`WireError`]: an unknown version, a missing required header, or a
    /// value outside its encoding.
    pub fn from_headers(headers: Option<&HeaderMap>) -> Result<Envelope, WireError> {
        let get = |name: &str| headers.and_then(|h| h.get(name)).map(HeaderValue::as_str);
        if let Some(version) = get(VERSION_HEADER) {
            // Exactly as written: `1`, not `01`.
            if version != "1" {
                return Err(WireError::UnsupportedVersion(shown(version)));
            }
        }
        let origin = get(ORIGIN).ok_or(WireError::Missing(ORIGIN))?;
        if !is_valid_origin(origin) {
            return Err(malformed(ORIGIN, origin));
        }
        let id = get(ID).ok_or(WireError::Missing(ID))?;
        let id = parse_hex(id).ok_or_else(|| malformed(ID, id))?;
        let key = get(KEY).ok_or(WireError::Missing(KEY))?;
        let key = parse_hex(key).ok_or_else(|| malformed(KEY, key))?;
        let source = match get(SOURCE) {
            None => String::new(),
            Some(s) => subject::unescape_header(s).ok_or_else(|| malformed(SOURCE, s))?,
        };
        let priority = match get(PRIORITY) {
            None => Priority::Normal,
            Some(p) => parse_priority(p).ok_or_else(|| malformed(PRIORITY, p))?,
        };
        let timestamp = match get(TIMESTAMP) {
            None => SystemTime::now(),
            Some(t) => parse_timestamp(t).ok_or_else(|| malformed(TIMESTAMP, t))?,
        };
        let parent = match (get(PARENT), get(PARENT_KEY)) {
            (None, None) => None,
            (None, Some(_)) => return Err(WireError::Missing(PARENT)),
            (Some(id), key) => {
                let id = parse_hex(id).ok_or_else(|| malformed(PARENT, id))?;
                let cause = Cause::new(EventId::from_u128(id));
                match key {
                    None => Some(cause),
                    Some(k) => {
                        let k = parse_hex(k).ok_or_else(|| malformed(PARENT_KEY, k))?;
                        // The high and the low 64 bits: no truncation.
                        Some(cause.with_sequence((k >> 64) as u64, k as u64))
                    }
                }
            }
        };
        Ok(Envelope { origin: origin.to_owned(), id, key, source, priority, timestamp, parent })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> HeaderMap {
        Envelope {
            origin: "shard-1".into(),
            id: 0xab,
            key: 7 << 64 | 1,
            source: "chat bridge/é".into(),
            priority: Priority::Low,
            timestamp: UNIX_EPOCH + Duration::new(1_700_000_000, 123),
            parent: Some(Cause::new(EventId::from_u128(0xaa)).with_sequence(7, u64::MAX)),
        }
        .to_headers()
    }

    /// `good()` without the headers named in `skip`.
    fn without(skip: &[&str]) -> HeaderMap {
        let all = good();
        let mut h = HeaderMap::new();
        for name in [
            VERSION_HEADER,
            ORIGIN,
            ID,
            KEY,
            MSG_ID,
            SOURCE,
            PRIORITY,
            TIMESTAMP,
            PARENT,
            PARENT_KEY,
        ] {
            if let Some(v) = all.get(name).filter(|_| !skip.contains(&name)) {
                h.insert(name, v.clone());
            }
        }
        h
    }

    fn with(header: &'static str, v: &str) -> Result<Envelope, WireError> {
        let mut h = good();
        h.insert(header, v);
        Envelope::from_headers(Some(&h))
    }

    #[test]
    fn an_envelope_round_trips_through_its_headers() {
        let h = good();
        let e = Envelope::from_headers(Some(&h)).unwrap();
        assert_eq!(e.source, "chat bridge/é");
        assert_eq!(e.priority, Priority::Low);
        assert_eq!(e.timestamp, UNIX_EPOCH + Duration::new(1_700_000_000, 123));
        assert_eq!(e.to_headers().get(MSG_ID).map(HeaderValue::as_str), Some(&*hex_token(e.key)));
        let parent = e.parent.unwrap();
        assert_eq!(parent.id().as_u128(), 0xaa);
        assert_eq!((parent.bus(), parent.sequence()), (Some(7), Some(u64::MAX)));
        assert_eq!(
            h.get(PARENT_KEY).map(HeaderValue::as_str),
            Some("0000000000000007ffffffffffffffff")
        );
    }

    #[test]
    fn a_parent_travels_with_its_publish_key_or_without_it() {
        let cases = [
            (None, None, None),
            (Some(Cause::new(EventId::from_u128(1))), Some(&*hex_token(1)), None),
            (
                Some(Cause::new(EventId::from_u128(u128::MAX)).with_sequence(u64::MAX, 0)),
                Some("ffffffffffffffffffffffffffffffff"),
                Some("ffffffffffffffff0000000000000000"),
            ),
        ];
        for (parent, id, key) in cases {
            let envelope = Envelope { parent, ..Envelope::from_headers(Some(&good())).unwrap() };
            let h = envelope.to_headers();
            assert_eq!(h.get(PARENT).map(HeaderValue::as_str), id, "{parent:?}");
            assert_eq!(h.get(PARENT_KEY).map(HeaderValue::as_str), key, "{parent:?}");
            assert_eq!(Envelope::from_headers(Some(&h)).unwrap().parent, parent);
        }
        // A key without the id it goes with is refused.
        let h = without(&[PARENT]);
        assert_eq!(Envelope::from_headers(Some(&h)), Err(WireError::Missing(PARENT)));
    }

    #[test]
    fn every_malformed_value_is_refused_with_its_header_named() {
        let cases: &[(&str, &[&str])] = &[
            (
                TIMESTAMP,
                &[
                    "18446744073709551615000000000",
                    "340282366920938463463374607431768211455",
                    "340282366920938463463374607431768211456",
                    "abc",
                    "-1",
                    "+5",
                    " 5",
                    "",
                    "1e9",
                    "9999999999999999999999999999999999999999",
                ],
            ),
            (PRIORITY, &["urgent", "HIGH", "", "1"]),
            (SOURCE, &["%zz", "%", "a b", "%41", "x%"]),
            (ORIGIN, &["", "a b", "é"]),
            (
                ID,
                &[
                    "ab",
                    "0x000000000000000000000000000000ab",
                    "+0000000000000000000000000000000a",
                    "g0000000000000000000000000000000",
                ],
            ),
            (KEY, &["", "00000000000000070000000000000001ff"]),
            (
                PARENT,
                &[
                    "",
                    "ab",
                    "zz000000000000000000000000000000",
                    "0x000000000000000000000000000000aa",
                ],
            ),
            (
                PARENT_KEY,
                &["", "7", "-0000000000000070000000000000001", "00000000000000070000000000000001 "],
            ),
        ];
        for &(header, values) in cases {
            for v in values {
                match with(header, v) {
                    Err(WireError::Malformed { header: h, .. }) => assert_eq!(h, header, "{v:?}"),
                    // `%` alone is the empty source, a valid value.
                    Ok(e) if header == SOURCE && *v == "%" => assert_eq!(e.source, ""),
                    other => panic!("{header}: {v:?} gave {other:?}"),
                }
            }
        }
        let long = "o".repeat(MAX_ORIGIN_LEN + 1);
        assert!(matches!(with(ORIGIN, &long), Err(WireError::Malformed { header: ORIGIN, .. })));
        assert!(with(ORIGIN, &long[1..]).is_ok());
    }

    #[test]
    fn the_largest_representable_timestamp_is_read_and_one_past_is_refused_without_panicking() {
        // Every u64 second count that SystemTime holds reads back; the
        // arithmetic never overflows on anything the wire can carry.
        let max_secs = (i64::MAX as u128) * 1_000_000_000 + 999_999_999;
        assert!(parse_timestamp(&max_secs.to_string()).is_some());
        assert!(parse_timestamp(&(u128::from(u64::MAX) * 1_000_000_000).to_string()).is_none());
        assert!(parse_timestamp(&u128::MAX.to_string()).is_none());
        assert_eq!(parse_timestamp("0"), Some(UNIX_EPOCH));
    }

    #[test]
    fn missing_required_headers_are_named_and_optional_ones_default() {
        for header in [ORIGIN, ID, KEY] {
            let h = without(&[header]);
            assert_eq!(Envelope::from_headers(Some(&h)), Err(WireError::Missing(header)));
        }
        assert_eq!(Envelope::from_headers(None), Err(WireError::Missing(ORIGIN)));
        let h = without(&[VERSION_HEADER, SOURCE, PRIORITY, TIMESTAMP, PARENT, PARENT_KEY]);
        let e = Envelope::from_headers(Some(&h)).unwrap();
        assert_eq!((e.source.as_str(), e.priority, e.parent), ("", Priority::Normal, None));
    }

    #[test]
    fn an_unknown_version_is_refused() {
        for v in ["2", "0", "1.0", "v1", "", "01"] {
            assert_eq!(with(VERSION_HEADER, v), Err(WireError::UnsupportedVersion(v.into())));
        }
        assert!(with(VERSION_HEADER, "1").is_ok());
    }

    #[test]
    fn a_long_hostile_value_is_cut_in_the_error() {
        let value = "é".repeat(1000);
        let Err(WireError::Malformed { value: kept, .. }) = with(PRIORITY, &value) else {
            panic!("refused")
        };
        assert!(kept.len() <= SHOWN && value.starts_with(&kept));
    }
}
