//! Scheduled starts and freeze windows: when the clock lets a generation's waves open.
//!
//! The gate of `rollout` says which wave a node's reports let open; this module says whether
//! the time does. Both are pure: the node passes its hybrid clock's time in (`now_ms`, the
//! later of its wall clock and the greatest stamp it has seen), so every node judges a start or
//! a window within the clock-offset bound of every other.
//!
//! - `hold(body, freezes, now_ms)` is `Some(Hold)` while a generation may not be applied on
//!   this node: `Hold::Scheduled { until_ms }` before its terms' `start_at_ms`, then
//!   `Hold::Frozen { window, until_ms }` while a freeze window covers `now_ms` and the change is
//!   ordinary (it has operations and is not `--emergency`; controls and governance records have
//!   no operations, and reverts never pass through here). Nothing is applied during a hold, in
//!   any wave, so a hold ends where the rollout left off: waves after the first bake from when
//!   the first opened, as always.
//! - `FreezeOptions { name, from, to, zone }` is a window as `[[rollout.freeze]]` writes it;
//!   `FreezeWindow::parse` checks it: a recurring window (`"Fri 16:00"` to `"Mon 08:00"`, or
//!   daily `"22:00"` to `"06:00"`, wrapping past the week's or the day's end) or one-off dates
//!   (`"2026-12-24T00:00"` or `"2026-12-24"` to a later one), in an IANA time zone. Civil times
//!   are turned into instants occurrence by occurrence, so a window keeps its wall-clock hours
//!   across daylight-saving changes (a time in a spring gap is read with the offset before the
//!   gap, so 02:30 becomes 03:30; one in an autumn fold is its first occurrence: jiff's and
//!   RFC 5545's "compatible" rule).
//! - `Freezes::covering(now_ms)` is the window that covers `now_ms` and the end of the freeze,
//!   following windows that overlap or touch; `Freezes::fingerprint` sums up the windows, for
//!   operators to compare across nodes (every node should carry the same ones).
//! - `check_start(start_at_ms, now_ms, max_offset_ms)` refuses a start further in the past than
//!   the clock-offset bound or more than `MAX_START_AHEAD_MS` ahead; `parse_time` reads RFC 3339
//!   (`2026-12-24T08:00:00Z`, `...+01:00`), and `rfc3339` writes a time back.
//!
//! Time zones come from jiff's copy of the IANA database, compiled in: no decision reads the
//! host's zoneinfo files or its `TZ`.

use std::fmt;

use jiff::Timestamp;
use jiff::civil::{Date, DateTime, Time, Weekday};
use jiff::tz::TimeZone;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::model::GenerationBody;

/// The furthest ahead a start may be: a year. A change that waits longer is a plan, not a
/// rollout, and a typo in a year should not sit in every node's log unnoticed.
pub const MAX_START_AHEAD_MS: u64 = 366 * 24 * 3600 * 1000;
/// Most freeze windows one node carries: each is checked at every gate, and a calendar of
/// holidays fits.
pub const MAX_FREEZE_WINDOWS: usize = 64;
/// Longest name of a freeze window: it shows in `rollout status`.
pub const MAX_FREEZE_NAME_BYTES: usize = 64;

/// Why a start or a freeze window was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ScheduleError(pub String);

fn error<T>(message: String) -> Result<T, ScheduleError> {
    Err(ScheduleError(message))
}

/// Why this node may not apply a generation now, and until when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Hold {
    /// Its scheduled start has not come.
    Scheduled { until_ms: u64 },
    /// A freeze window holds ordinary changes until its end.
    Frozen { window: String, until_ms: u64 },
}

impl Hold {
    /// When the hold ends (Unix ms), if nothing else holds it then.
    pub fn until_ms(&self) -> u64 {
        match self {
            Hold::Scheduled { until_ms } | Hold::Frozen { until_ms, .. } => *until_ms,
        }
    }
}

impl fmt::Display for Hold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Hold::Scheduled { until_ms } => write!(f, "scheduled to start at {}", rfc3339(*until_ms)),
            Hold::Frozen { window, until_ms } => write!(f, "frozen by {window} until {}", rfc3339(*until_ms)),
        }
    }
}

/// Whether `body` must wait at `now_ms` (this node's hybrid clock), and why: first its
/// scheduled start, then a freeze window if it is an ordinary change.
pub fn hold(body: &GenerationBody, freezes: &Freezes, now_ms: u64) -> Option<Hold> {
    let start = body.terms.as_ref().and_then(|terms| terms.start_at_ms);
    if let Some(start) = start.filter(|start| now_ms < *start) {
        return Some(Hold::Scheduled { until_ms: start });
    }
    let ordinary = !body.change.policy.emergency && !body.change.ops.is_empty();
    let (window, until_ms) = freezes.covering(now_ms).filter(|_| ordinary)?;
    Some(Hold::Frozen { window, until_ms })
}

/// Checks a requested start against this node's clock: not further in the past than the
/// clock-offset bound (a start that close to now opens at once), and at most a year ahead.
pub fn check_start(start_at_ms: u64, now_ms: u64, max_offset_ms: u64) -> Result<(), ScheduleError> {
    if start_at_ms.saturating_add(max_offset_ms) < now_ms {
        return error(format!(
            "the start {} is {} ms in the past (this node's clock reads {}): expected a time from now on, at most max_clock_offset_ms = {max_offset_ms} ms ago",
            rfc3339(start_at_ms),
            now_ms - start_at_ms,
            rfc3339(now_ms)
        ));
    }
    if start_at_ms > now_ms.saturating_add(MAX_START_AHEAD_MS) {
        return error(format!(
            "the start {} is more than 366 days ahead of this node's clock ({}): expected a time within a year",
            rfc3339(start_at_ms),
            rfc3339(now_ms)
        ));
    }
    Ok(())
}

/// Reads an RFC 3339 time (`2026-12-24T08:00:00Z`, `2026-12-24T09:00:00+01:00`) as Unix ms.
pub fn parse_time(text: &str) -> Result<u64, ScheduleError> {
    let expected = "expected an RFC 3339 time like 2026-12-24T08:00:00Z or 2026-12-24T09:00:00+01:00";
    let timestamp: Timestamp = match text.trim().parse() {
        Ok(timestamp) => timestamp,
        Err(reason) => return error(format!("{expected}, got {text:?} ({reason})")),
    };
    u64::try_from(timestamp.as_millisecond()).or_else(|_| error(format!("{expected} after 1970, got {text:?}")))
}

/// Unix ms as RFC 3339 in UTC, to the second (`2026-12-24T08:00:00Z`).
pub fn rfc3339(ms: u64) -> String {
    let millisecond = i64::try_from(ms).unwrap_or(i64::MAX);
    match Timestamp::from_millisecond(millisecond) {
        Ok(timestamp) => format!("{timestamp:.0}"),
        Err(_) => format!("{ms} ms after 1970"),
    }
}

/// A freeze window as `[[rollout.freeze]]` writes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FreezeOptions {
    pub name: String,
    /// `"Fri 16:00"`, `"22:00"` (every day) or `"2026-12-24T00:00"` / `"2026-12-24"`.
    pub from: String,
    /// The end, in the same form as `from`.
    pub to: String,
    /// An IANA time zone, like `Europe/Berlin` or `UTC`.
    pub zone: String,
}

/// When a window recurs, or the one time it holds.
#[derive(Clone, Debug, PartialEq)]
enum Span {
    /// Every week from one weekday and time to the next occurrence of another.
    Weekly { from: (Weekday, Time), to: (Weekday, Time) },
    /// Every day from one time to the next occurrence of another.
    Daily { from: Time, to: Time },
    /// Once, from one civil time to a later one.
    Dates { from: DateTime, to: DateTime },
}

/// A checked freeze window.
#[derive(Clone, Debug)]
pub struct FreezeWindow {
    pub name: String,
    span: Span,
    zone: TimeZone,
    /// As configured, for the fingerprint.
    options: FreezeOptions,
}

/// One end of a window, as read.
enum End {
    Weekly(Weekday, Time),
    Daily(Time),
    Date(DateTime),
}

impl FreezeWindow {
    /// Checks a configured window: a known zone, ends of one form, a date window that ends
    /// after it starts, and a recurring one that is not empty.
    pub fn parse(options: &FreezeOptions) -> Result<FreezeWindow, ScheduleError> {
        let name = &options.name;
        let refused = |detail: String| ScheduleError(format!("freeze window {name:?}: {detail}"));
        if name.is_empty() || name.len() > MAX_FREEZE_NAME_BYTES {
            return Err(refused(format!("expected a name of 1 to {MAX_FREEZE_NAME_BYTES} bytes")));
        }
        let zone = TimeZone::get(&options.zone).map_err(|_| {
            refused(format!("expected an IANA time zone like Europe/Berlin or UTC, got zone = {:?}", options.zone))
        })?;
        let from = parse_end(&options.from).map_err(|detail| refused(format!("from: {detail}")))?;
        let to = parse_end(&options.to).map_err(|detail| refused(format!("to: {detail}")))?;
        let span = match (from, to) {
            (End::Weekly(fd, ft), End::Weekly(td, tt)) if (fd, ft) != (td, tt) => {
                Span::Weekly { from: (fd, ft), to: (td, tt) }
            }
            (End::Daily(from), End::Daily(to)) if from != to => Span::Daily { from, to },
            (End::Date(from), End::Date(to)) if from < to => Span::Dates { from, to },
            (End::Date(_), End::Date(_)) => {
                return Err(refused(format!("expected to after from, got {:?} to {:?}", options.from, options.to)));
            }
            (End::Weekly(..), End::Weekly(..)) | (End::Daily(_), End::Daily(_)) => {
                return Err(refused(format!("from and to are the same time, {:?}: the window is empty", options.to)));
            }
            _ => {
                return Err(refused(format!(
                    "expected from and to of one form (both \"Fri 16:00\", both \"22:00\" or both dates), got {:?} and {:?}",
                    options.from, options.to
                )));
            }
        };
        Ok(FreezeWindow { name: name.clone(), span, zone, options: options.clone() })
    }

    /// The end (Unix ms) of this window's occurrence that covers `now_ms`, if one does.
    pub fn covering(&self, now_ms: u64) -> Option<u64> {
        let now = Timestamp::from_millisecond(i64::try_from(now_ms).ok()?).ok()?;
        let (start, end) = match &self.span {
            Span::Dates { from, to } => (self.instant(*from)?, self.instant(*to)?),
            Span::Weekly { from, to } => self.latest_occurrence(now, 7, *from, *to)?,
            Span::Daily { from, to } => {
                self.latest_occurrence(now, 1, (Weekday::Monday, *from), (Weekday::Monday, *to))?
            }
        };
        (start <= now && now < end).then(|| u64::try_from(end.as_millisecond()).unwrap_or(0))
    }

    /// The latest occurrence that starts at or before `now` of a window recurring every
    /// `period_days` (7, by weekday, or 1, every day), as instants.
    fn latest_occurrence(
        &self,
        now: Timestamp,
        period_days: i8,
        from: (Weekday, Time),
        to: (Weekday, Time),
    ) -> Option<(Timestamp, Timestamp)> {
        let today = self.zone.to_datetime(now).date();
        let back = if period_days == 7 { from.0.until(today.weekday()) } else { 0 };
        let mut start_date = add_days(today, -i64::from(back))?;
        // This period's start may still be ahead of now (later today): then the last period's.
        for _ in 0..2 {
            let start = self.instant(start_date.to_datetime(from.1))?;
            if start <= now {
                let mut ahead = if period_days == 7 { from.0.until(to.0) } else { 0 };
                if ahead == 0 && to.1 <= from.1 {
                    ahead = period_days;
                }
                let end = self.instant(add_days(start_date, i64::from(ahead))?.to_datetime(to.1))?;
                return Some((start, end));
            }
            start_date = add_days(start_date, -i64::from(period_days))?;
        }
        None
    }

    /// A civil time in this window's zone as an instant: a time in a spring gap is read with
    /// the offset before the gap, one in an autumn fold as its first occurrence.
    fn instant(&self, civil: DateTime) -> Option<Timestamp> {
        self.zone.to_timestamp(civil).ok()
    }
}

fn add_days(date: Date, days: i64) -> Option<Date> {
    date.checked_add(jiff::Span::new().days(days)).ok()
}

/// Reads `Fri 16:00`, `16:00`, `2026-12-24T00:00` or `2026-12-24`.
fn parse_end(text: &str) -> Result<End, String> {
    let expected =
        || format!("expected \"Fri 16:00\", \"16:00\", \"2026-12-24T00:00\" or \"2026-12-24\", got {text:?}");
    let parts: Vec<&str> = text.split_whitespace().collect();
    match parts.as_slice() {
        [day, time] => {
            Ok(End::Weekly(parse_weekday(day).ok_or_else(expected)?, parse_clock(time).ok_or_else(expected)?))
        }
        [one] if one.contains('-') => {
            let datetime =
                one.parse::<DateTime>().ok().or_else(|| Some(one.parse::<Date>().ok()?.to_datetime(Time::midnight())));
            datetime.map(End::Date).ok_or_else(expected)
        }
        [time] => parse_clock(time).map(End::Daily).ok_or_else(expected),
        _ => Err(expected()),
    }
}

/// `16:00` or `16:00:30`.
fn parse_clock(text: &str) -> Option<Time> {
    text.contains(':').then(|| text.parse::<Time>().ok()).flatten()
}

fn parse_weekday(text: &str) -> Option<Weekday> {
    let lower = text.to_ascii_lowercase();
    let days = [
        ("monday", Weekday::Monday),
        ("tuesday", Weekday::Tuesday),
        ("wednesday", Weekday::Wednesday),
        ("thursday", Weekday::Thursday),
        ("friday", Weekday::Friday),
        ("saturday", Weekday::Saturday),
        ("sunday", Weekday::Sunday),
    ];
    let found = days.iter().find(|(name, _)| lower.len() >= 3 && name.starts_with(lower.as_str()));
    found.map(|(_, day)| *day)
}

/// The freeze windows of a node (`[[rollout.freeze]]`).
#[derive(Clone, Debug, Default)]
pub struct Freezes {
    windows: Vec<FreezeWindow>,
}

impl Freezes {
    /// Checks every window, and that there are at most [`MAX_FREEZE_WINDOWS`] with distinct names.
    pub fn parse(options: &[FreezeOptions]) -> Result<Freezes, ScheduleError> {
        if options.len() > MAX_FREEZE_WINDOWS {
            return error(format!("expected at most {MAX_FREEZE_WINDOWS} freeze windows, got {}", options.len()));
        }
        let windows = options.iter().map(FreezeWindow::parse).collect::<Result<Vec<_>, _>>()?;
        for (index, window) in windows.iter().enumerate() {
            if windows[..index].iter().any(|earlier| earlier.name == window.name) {
                return error(format!("freeze window {:?}: the name is used twice", window.name));
            }
        }
        Ok(Freezes { windows })
    }

    pub fn is_empty(&self) -> bool {
        self.windows.is_empty()
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.windows.iter().map(|window| window.name.as_str())
    }

    /// The window covering `now_ms`, and when the freeze ends: the end of that window, carried
    /// on through every window that covers it in turn (windows that overlap or touch).
    pub fn covering(&self, now_ms: u64) -> Option<(String, u64)> {
        let (window, mut until_ms) = self.windows.iter().find_map(|w| Some((w, w.covering(now_ms)?)))?;
        for _ in 0..self.windows.len() {
            match self.windows.iter().filter_map(|w| w.covering(until_ms)).max() {
                Some(later) if later > until_ms => until_ms = later,
                _ => break,
            }
        }
        Some((window.name.clone(), until_ms))
    }

    /// The first 16 hex digits of a hash of the windows as configured, in order: nodes that
    /// carry the same windows show the same fingerprint (empty without windows).
    pub fn fingerprint(&self) -> String {
        if self.windows.is_empty() {
            return String::new();
        }
        let mut hasher = Sha256::new();
        for FreezeOptions { name, from, to, zone } in self.windows.iter().map(|w| &w.options) {
            hasher.update(format!("{name}\0{from}\0{to}\0{zone}\n").as_bytes());
        }
        hex::encode(hasher.finalize())[..16].to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Terms;
    use crate::policy::Policy;

    fn at(text: &str) -> u64 {
        parse_time(text).unwrap()
    }

    fn window(from: &str, to: &str, zone: &str) -> FreezeWindow {
        let options = FreezeOptions { name: "w".into(), from: from.into(), to: to.into(), zone: zone.into() };
        FreezeWindow::parse(&options).unwrap()
    }

    fn refusal(from: &str, to: &str, zone: &str) -> String {
        let options = FreezeOptions { name: "w".into(), from: from.into(), to: to.into(), zone: zone.into() };
        FreezeWindow::parse(&options).unwrap_err().to_string()
    }

    #[test]
    fn a_weekend_window_wraps_the_week_in_its_zone() {
        let weekend = window("Fri 16:00", "Mon 08:00", "Europe/Berlin");
        // 2026-03-06 is a Friday; Berlin is UTC+1 in winter.
        assert_eq!(weekend.covering(at("2026-03-06T14:59:59Z")), None, "Friday 15:59 in Berlin");
        let monday_8 = at("2026-03-09T07:00:00Z");
        assert_eq!(weekend.covering(at("2026-03-06T15:00:00Z")), Some(monday_8), "Friday 16:00 in Berlin");
        assert_eq!(weekend.covering(at("2026-03-08T12:00:00Z")), Some(monday_8), "Sunday");
        assert_eq!(weekend.covering(at("2026-03-09T06:59:59Z")), Some(monday_8), "Monday 07:59");
        assert_eq!(weekend.covering(monday_8), None, "the end is not in the window");
        assert_eq!(weekend.covering(at("2026-03-11T12:00:00Z")), None, "Wednesday");
    }

    #[test]
    fn windows_keep_their_wall_clock_hours_across_daylight_saving_changes() {
        let weekend = window("Fri 16:00", "Mon 08:00", "Europe/Berlin");
        // Summer time starts on Sunday 2026-03-29: Friday 16:00 is UTC+1, Monday 08:00 UTC+2.
        assert_eq!(weekend.covering(at("2026-03-27T15:00:00Z")), Some(at("2026-03-30T06:00:00Z")));
        assert_eq!(weekend.covering(at("2026-03-27T14:59:00Z")), None);
        // And ends on Sunday 2026-10-25: Friday is UTC+2, Monday UTC+1.
        assert_eq!(weekend.covering(at("2026-10-23T14:00:00Z")), Some(at("2026-10-26T07:00:00Z")));
        assert_eq!(weekend.covering(at("2026-10-26T06:59:00Z")), Some(at("2026-10-26T07:00:00Z")));
        assert_eq!(weekend.covering(at("2026-10-26T07:00:00Z")), None);
        // A nightly window into the spring gap (02:00 to 03:00 does not exist on 2026-03-29):
        // 01:30 to 02:30 ends at 02:30 read with the offset before the gap, 03:30 summer time.
        let night = window("01:30", "02:30", "Europe/Berlin");
        assert_eq!(night.covering(at("2026-03-29T00:45:00Z")), Some(at("2026-03-29T01:30:00Z")));
        assert_eq!(night.covering(at("2026-03-29T01:30:00Z")), None);
        assert_eq!(night.covering(at("2026-03-30T00:00:00Z")), Some(at("2026-03-30T00:30:00Z")), "a day later");
        // New York's weekend, across its own change (2026-03-08).
        let ny = window("Sat 00:00", "Mon 00:00", "America/New_York");
        assert_eq!(ny.covering(at("2026-03-07T05:00:00Z")), Some(at("2026-03-09T04:00:00Z")));
    }

    #[test]
    fn daily_and_same_weekday_windows_wrap_past_their_end() {
        let night = window("22:00", "06:00", "UTC");
        assert_eq!(night.covering(at("2026-05-01T23:00:00Z")), Some(at("2026-05-02T06:00:00Z")));
        assert_eq!(night.covering(at("2026-05-02T05:00:00Z")), Some(at("2026-05-02T06:00:00Z")));
        assert_eq!(night.covering(at("2026-05-02T12:00:00Z")), None);
        // Friday 18:00 to Friday 09:00: all week but Friday's working day (2026-05-01 is a Friday).
        let most = window("fri 18:00", "Friday 09:00", "UTC");
        assert_eq!(most.covering(at("2026-05-01T12:00:00Z")), None);
        assert_eq!(most.covering(at("2026-05-05T12:00:00Z")), Some(at("2026-05-08T09:00:00Z")));
        assert_eq!(most.covering(at("2026-05-01T08:00:00Z")), Some(at("2026-05-01T09:00:00Z")));
    }

    #[test]
    fn date_windows_hold_once() {
        let holidays = window("2026-12-24", "2026-12-27T00:00", "Europe/Berlin");
        assert_eq!(holidays.covering(at("2026-12-23T22:59:59Z")), None);
        assert_eq!(holidays.covering(at("2026-12-23T23:00:00Z")), Some(at("2026-12-26T23:00:00Z")));
        assert_eq!(holidays.covering(at("2027-12-25T12:00:00Z")), None, "not every year");
    }

    #[test]
    fn bad_windows_are_refused_saying_what_was_expected() {
        assert!(refusal("Fri 16:00", "Mon 08:00", "Europe/Berln").contains("expected an IANA time zone"));
        assert!(refusal("Fri 16:00", "Mon 25:00", "UTC").contains("to: expected \"Fri 16:00\""));
        assert!(refusal("Fry 16:00", "Mon 08:00", "UTC").contains("from: expected"));
        assert!(refusal("2026-12-27", "2026-12-24", "UTC").contains("expected to after from"));
        assert!(refusal("Fri 16:00", "2026-12-24", "UTC").contains("of one form"));
        assert!(refusal("Fri 16:00", "Fri 16:00", "UTC").contains("the window is empty"));
        let twice =
            FreezeOptions { name: "w".into(), from: "Fri 16:00".into(), to: "Mon 08:00".into(), zone: "UTC".into() };
        let error = Freezes::parse(&[twice.clone(), twice]).unwrap_err().to_string();
        assert!(error.contains("the name is used twice"), "{error}");
    }

    #[test]
    fn touching_windows_freeze_until_the_last_one_ends() {
        let options = |name: &str, from: &str, to: &str| FreezeOptions {
            name: name.into(),
            from: from.into(),
            to: to.into(),
            zone: "UTC".into(),
        };
        let freezes = Freezes::parse(&[
            options("weekend", "Fri 16:00", "Mon 08:00"),
            options("holidays", "2026-12-20", "2026-12-26T16:00"),
        ])
        .unwrap();
        // 2026-12-22 is a Tuesday: the holidays run into the weekend, which ends on Monday.
        let (window, until) = freezes.covering(at("2026-12-22T12:00:00Z")).unwrap();
        assert_eq!((window.as_str(), until), ("holidays", at("2026-12-28T08:00:00Z")));
        assert_eq!(freezes.covering(at("2026-12-29T12:00:00Z")), None);
        assert_eq!(freezes.fingerprint().len(), 16);
        assert_ne!(
            freezes.fingerprint(),
            Freezes::parse(&[options("weekend", "Fri 16:00", "Mon 08:00")]).unwrap().fingerprint()
        );
        assert_eq!(Freezes::default().fingerprint(), "");
    }

    fn body(policy: Policy, start_at_ms: Option<u64>) -> GenerationBody {
        let mut body = crate::testing::put("n1", 1, 0, "k", "1").body;
        body.change.policy = policy;
        body.terms =
            start_at_ms.map(|start_at_ms| Box::new(Terms { start_at_ms: Some(start_at_ms), ..Terms::default() }));
        body
    }

    #[test]
    fn a_generation_waits_for_its_start_then_for_a_freeze_that_emergencies_pass() {
        let freezes = Freezes::parse(&[FreezeOptions {
            name: "weekend".into(),
            from: "Fri 16:00".into(),
            to: "Mon 08:00".into(),
            zone: "Europe/Berlin".into(),
        }])
        .unwrap();
        let (wednesday, saturday) = (at("2026-03-04T12:00:00Z"), at("2026-03-07T12:00:00Z"));
        let monday_8 = at("2026-03-09T07:00:00Z");
        let scheduled = body(Policy::default(), Some(wednesday + 5_000));
        assert_eq!(hold(&scheduled, &freezes, wednesday), Some(Hold::Scheduled { until_ms: wednesday + 5_000 }));
        assert_eq!(hold(&scheduled, &freezes, wednesday + 4_999).map(|h| h.until_ms()), Some(wednesday + 5_000));
        assert_eq!(hold(&scheduled, &freezes, wednesday + 5_000), None, "it opens at its start");
        let ordinary = body(Policy::default(), None);
        let frozen = Hold::Frozen { window: "weekend".into(), until_ms: monday_8 };
        assert_eq!(hold(&ordinary, &freezes, saturday), Some(frozen.clone()));
        assert_eq!(hold(&ordinary, &freezes, monday_8), None);
        // A start inside the window: first the start, then the freeze.
        let into_weekend = body(Policy::default(), Some(saturday));
        assert_eq!(hold(&into_weekend, &freezes, wednesday), Some(Hold::Scheduled { until_ms: saturday }));
        assert_eq!(hold(&into_weekend, &freezes, saturday), Some(frozen));
        // Emergencies pass a freeze (but wait for their own start), and so do controls.
        let emergency = body(Policy::emergency(), Some(saturday + 1_000));
        assert_eq!(hold(&emergency, &freezes, saturday), Some(Hold::Scheduled { until_ms: saturday + 1_000 }));
        assert_eq!(hold(&emergency, &freezes, saturday + 1_000), None);
        let mut control = body(Policy::default(), None);
        control.change.ops.clear();
        assert_eq!(hold(&control, &freezes, saturday), None);
        assert_eq!(Hold::Scheduled { until_ms: wednesday }.to_string(), "scheduled to start at 2026-03-04T12:00:00Z");
    }

    #[test]
    fn starts_are_checked_against_the_clock_and_its_offset_bound() {
        let now = at("2026-03-04T12:00:00Z");
        assert_eq!(check_start(now - 100, now, 100), Ok(()), "within the offset bound");
        let past = check_start(now - 101, now, 100).unwrap_err().to_string();
        assert!(past.contains("is 101 ms in the past") && past.contains("expected a time from now on"), "{past}");
        assert_eq!(check_start(now + MAX_START_AHEAD_MS, now, 100), Ok(()));
        let far = check_start(now + MAX_START_AHEAD_MS + 1, now, 100).unwrap_err().to_string();
        assert!(far.contains("more than 366 days ahead"), "{far}");
        assert_eq!(parse_time("2026-03-04T13:00:00+01:00"), Ok(now));
        assert!(parse_time("tomorrow").unwrap_err().to_string().contains("expected an RFC 3339 time"));
        assert_eq!(rfc3339(now + 999), "2026-03-04T12:00:00Z");
    }
}
