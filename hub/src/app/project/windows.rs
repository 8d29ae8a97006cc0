//! AppProject `syncWindows`: when automated and manual syncs may run, as Argo CD
//! decides it. A window opens at each time its cron `schedule` names (in its
//! `timeZone`, UTC by default) and stays open for `duration`. It concerns an app
//! when any of its `applications`, `namespaces` or `clusters` globs matches the
//! app's name, destination namespace, or destination cluster (name or server).
//!
//! Of the windows that concern an app: an open `deny` window blocks syncs; else an
//! open `allow` window permits them; else, when there are `allow` windows, all
//! closed, syncs are blocked. Manual syncs pass a blocking deny window only when
//! every open deny window sets `manualSync`, and pass closed allow windows when any
//! of them sets it. Time is always passed in, never read here.

use std::time::SystemTime;

use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use globset::GlobBuilder;
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp, Zoned};
use serde::Serialize;

use super::SyncWindow;

/// What the app and cluster a window is matched against are called.
#[derive(Clone, Copy, Debug)]
pub struct Target<'a> {
    /// The Application's name.
    pub app: &'a str,
    /// Its destination namespace.
    pub namespace: &'a str,
    /// The destination cluster's name.
    pub cluster: &'a str,
    /// The destination cluster's server URL, when the admin set one.
    pub server: Option<&'a str>,
}

/// Why a window's fields do not parse; the message names the field's value.
#[derive(Debug, thiserror::Error)]
pub enum WindowError {
    /// `kind` is neither `allow` nor `deny`.
    #[error("kind must be allow or deny, not {0:?}")]
    Kind(String),
    /// `schedule` is not a five-field cron expression.
    #[error(
        "schedule {schedule:?} is not a cron expression (minute hour day month weekday): {message}"
    )]
    Schedule { schedule: String, message: String },
    /// `duration` is not a duration such as `1h30m`.
    #[error("duration {0:?} is not a positive duration such as 1h, 30m or 1h30m")]
    Duration(String),
    /// `timeZone` is not an IANA time zone name.
    #[error("timeZone {0:?} is not an IANA time zone such as Europe/Berlin")]
    TimeZone(String),
    /// A selector is not a valid glob.
    #[error("{field} glob {glob:?} is invalid")]
    Glob { field: &'static str, glob: String },
}

/// A window parsed: its schedule, length and zone.
struct Parsed<'w> {
    window: &'w SyncWindow,
    deny: bool,
    cron: Cron,
    duration: SignedDuration,
    zone: TimeZone,
}

/// Checks every field of `window`; the error says which and why.
pub fn check(window: &SyncWindow) -> Result<(), (&'static str, WindowError)> {
    parse(window).map(|_| ())?;
    for (field, globs) in [
        ("applications", &window.applications),
        ("namespaces", &window.namespaces),
        ("clusters", &window.clusters),
    ] {
        if let Some(bad) = globs.iter().find(|g| glob(g).is_none()) {
            return Err((
                field,
                WindowError::Glob {
                    field,
                    glob: bad.clone(),
                },
            ));
        }
    }
    Ok(())
}

fn parse(window: &SyncWindow) -> Result<Parsed<'_>, (&'static str, WindowError)> {
    let deny = match window.kind.as_str() {
        "deny" => true,
        "allow" => false,
        other => return Err(("kind", WindowError::Kind(other.to_owned()))),
    };
    // Argo CD's parser: five fields or a descriptor such as @daily; no seconds.
    let cron = CronParser::builder()
        .seconds(Seconds::Disallowed)
        .year(Year::Disallowed)
        .build()
        .parse(&window.schedule)
        .map_err(|e| {
            (
                "schedule",
                WindowError::Schedule {
                    schedule: window.schedule.clone(),
                    message: e.to_string(),
                },
            )
        })?;
    let duration = parse_duration(&window.duration)
        .ok_or_else(|| ("duration", WindowError::Duration(window.duration.clone())))?;
    let zone = match window.time_zone.as_deref().filter(|z| !z.is_empty()) {
        None | Some("UTC") => TimeZone::UTC,
        Some(name) => {
            TimeZone::get(name).map_err(|_| ("timeZone", WindowError::TimeZone(name.to_owned())))?
        }
    };
    Ok(Parsed {
        window,
        deny,
        cron,
        duration,
        zone,
    })
}

/// A Go-style duration of hours, minutes and seconds: `1h`, `30m`, `1h30m`, `90s`.
pub fn parse_duration(text: &str) -> Option<SignedDuration> {
    let mut rest = text.trim();
    if rest.is_empty() {
        return None;
    }
    let mut total: i64 = 0;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit())?;
        if digits == 0 {
            return None;
        }
        let value: i64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let seconds = match &rest[..unit_len] {
            "h" => 3600,
            "m" => 60,
            "s" => 1,
            _ => return None,
        };
        total = total.checked_add(value.checked_mul(seconds)?)?;
        rest = &rest[unit_len..];
    }
    (total > 0).then(|| SignedDuration::from_secs(total))
}

fn glob(pattern: &str) -> Option<globset::GlobMatcher> {
    GlobBuilder::new(pattern)
        .literal_separator(false)
        .build()
        .ok()
        .map(|g| g.compile_matcher())
}

fn any_glob(globs: &[String], value: &str) -> bool {
    globs
        .iter()
        .filter_map(|g| glob(g))
        .any(|m| m.is_match(value))
}

/// Whether `window` concerns `target`, as Argo CD matches windows to apps.
fn concerns(window: &SyncWindow, target: &Target<'_>) -> bool {
    any_glob(&window.applications, target.app)
        || any_glob(&window.namespaces, target.namespace)
        || any_glob(&window.clusters, target.cluster)
        || target
            .server
            .is_some_and(|server| any_glob(&window.clusters, server))
}

impl Parsed<'_> {
    /// When the window opened, if it is open at `now`, and when it closes.
    fn open_at(&self, now: &Zoned) -> Option<(Zoned, Zoned)> {
        let opened = self.cron.find_previous_occurrence(now, true).ok()?;
        let closes = opened.checked_add(self.duration).ok()?;
        (closes.timestamp() > now.timestamp()).then_some((opened, closes))
    }
}

/// One window as `app get` and `proj windows list` show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WindowState {
    pub kind: String,
    pub schedule: String,
    pub duration: String,
    pub time_zone: String,
    pub manual_sync: bool,
    pub applications: Vec<String>,
    pub namespaces: Vec<String>,
    pub clusters: Vec<String>,
    /// Whether it is open now.
    pub active: bool,
    /// When it closes (RFC 3339), if open.
    pub closes_at: Option<String>,
    /// When it next opens (RFC 3339), if closed.
    pub next_opens_at: Option<String>,
}

/// Whether syncs may run for one app on one cluster at one time.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Verdict {
    /// Automated syncs (and selfHeal) may run.
    pub automated: bool,
    /// Manual syncs may run.
    pub manual: bool,
    /// Why syncs are blocked, naming the window; `None` when both may run.
    pub reason: Option<String>,
    /// The windows that concern the app, with their state now.
    pub windows: Vec<WindowState>,
}

fn zoned(now: SystemTime, zone: &TimeZone) -> Option<Zoned> {
    Timestamp::try_from(now)
        .ok()
        .map(|t| t.to_zoned(zone.clone()))
}

fn describe(window: &SyncWindow) -> String {
    format!(
        "{} window {:?} for {}{}",
        window.kind,
        window.schedule,
        window.duration,
        window
            .time_zone
            .as_deref()
            .map(|z| format!(" ({z})"))
            .unwrap_or_default()
    )
}

/// Every window's state at `now`, whichever apps it concerns.
pub fn states(windows: &[SyncWindow], now: SystemTime) -> Vec<WindowState> {
    windows
        .iter()
        .filter_map(|w| parse(w).ok())
        .map(|p| state(&p, now))
        .collect()
}

fn state(parsed: &Parsed<'_>, now: SystemTime) -> WindowState {
    let w = parsed.window;
    let now = zoned(now, &parsed.zone);
    let open = now.as_ref().and_then(|now| parsed.open_at(now));
    let next = match (&open, &now) {
        (None, Some(now)) => parsed.cron.find_next_occurrence(now, false).ok(),
        _ => None,
    };
    WindowState {
        kind: w.kind.clone(),
        schedule: w.schedule.clone(),
        duration: w.duration.clone(),
        time_zone: w.time_zone.clone().unwrap_or_else(|| "UTC".to_owned()),
        manual_sync: w.manual_sync,
        applications: w.applications.clone(),
        namespaces: w.namespaces.clone(),
        clusters: w.clusters.clone(),
        active: open.is_some(),
        closes_at: open.map(|(_, closes)| closes.timestamp().to_string()),
        next_opens_at: next.map(|z| z.timestamp().to_string()),
    }
}

/// Whether automated and manual syncs may run for `target` at `now`.
pub fn verdict(windows: &[SyncWindow], target: &Target<'_>, now: SystemTime) -> Verdict {
    // A window that does not parse was refused when the project was loaded.
    let concerning: Vec<Parsed<'_>> = windows
        .iter()
        .filter(|w| concerns(w, target))
        .filter_map(|w| parse(w).ok())
        .collect();
    let open: Vec<&Parsed<'_>> = concerning
        .iter()
        .filter(|p| zoned(now, &p.zone).is_some_and(|z| p.open_at(&z).is_some()))
        .collect();
    let states = concerning.iter().map(|p| state(p, now)).collect();
    let open_deny: Vec<&&Parsed<'_>> = open.iter().filter(|p| p.deny).collect();
    let (automated, manual, reason) = if let Some(first) = open_deny.first() {
        (
            false,
            open_deny.iter().all(|p| p.window.manual_sync),
            Some(format!("the {} is open", describe(first.window))),
        )
    } else if open.iter().any(|p| !p.deny) {
        (true, true, None)
    } else {
        let allows: Vec<&Parsed<'_>> = concerning.iter().filter(|p| !p.deny).collect();
        match allows.first() {
            Some(first) => (
                false,
                allows.iter().any(|p| p.window.manual_sync),
                Some(format!(
                    "no allow window is open (the {} is closed)",
                    describe(first.window)
                )),
            ),
            None => (true, true, None),
        }
    };
    Verdict {
        automated,
        manual,
        reason,
        windows: states,
    }
}

#[cfg(test)]
mod tests;
