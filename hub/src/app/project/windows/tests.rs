#![allow(clippy::unwrap_used)]

use super::*;

fn at(text: &str) -> SystemTime {
    SystemTime::from(text.parse::<Timestamp>().unwrap())
}

fn window(kind: &str, schedule: &str, duration: &str) -> SyncWindow {
    SyncWindow {
        kind: kind.to_owned(),
        schedule: schedule.to_owned(),
        duration: duration.to_owned(),
        applications: vec!["*".to_owned()],
        ..SyncWindow::default()
    }
}

const TARGET: Target<'static> = Target {
    app: "web",
    namespace: "shop",
    cluster: "east",
    server: Some("https://east.example:6443"),
};

#[test]
fn a_deny_window_blocks_automated_syncs_only_while_it_is_open() {
    // Every day 22:00 UTC for an hour.
    let windows = [window("deny", "0 22 * * *", "1h")];
    let open = verdict(&windows, &TARGET, at("2026-12-08T22:30:00Z"));
    assert!(!open.automated);
    assert!(!open.manual);
    assert!(open.reason.as_deref().unwrap().contains("deny window"));
    assert!(open.windows[0].active);
    assert_eq!(
        open.windows[0].closes_at.as_deref(),
        Some("2026-12-08T23:00:00Z")
    );

    let closed = verdict(&windows, &TARGET, at("2026-12-08T23:00:00Z"));
    assert!(closed.automated && closed.manual, "{closed:?}");
    assert_eq!(
        closed.windows[0].next_opens_at.as_deref(),
        Some("2026-12-09T22:00:00Z")
    );
}

#[test]
fn manual_sync_passes_a_deny_window_only_when_every_open_one_allows_it() {
    let mut lenient = window("deny", "0 * * * *", "30m");
    lenient.manual_sync = true;
    let now = at("2026-12-08T10:10:00Z");
    let one = verdict(std::slice::from_ref(&lenient), &TARGET, now);
    assert!(!one.automated && one.manual);
    let strict = window("deny", "0 10 * * *", "1h");
    let both = verdict(&[lenient, strict], &TARGET, now);
    assert!(!both.automated && !both.manual);
}

#[test]
fn outside_every_allow_window_syncs_are_blocked_and_inside_one_they_run() {
    let mut allow = window("allow", "0 9 * * MON-FRI", "8h");
    allow.manual_sync = true;
    let windows = [allow];
    // Monday 2026-12-07 at 12:00 UTC: open.
    let inside = verdict(&windows, &TARGET, at("2026-12-07T12:00:00Z"));
    assert!(inside.automated && inside.manual);
    // Saturday: closed; manual syncs still run as the window says.
    let weekend = verdict(&windows, &TARGET, at("2026-12-12T12:00:00Z"));
    assert!(!weekend.automated && weekend.manual);
    assert!(weekend.reason.unwrap().contains("no allow window is open"));
    // An open deny beats an open allow.
    let both = [windows[0].clone(), window("deny", "0 12 * * *", "1h")];
    let denied = verdict(&both, &TARGET, at("2026-12-07T12:30:00Z"));
    assert!(!denied.automated);
}

#[test]
fn the_schedule_is_read_in_the_windows_time_zone() {
    let mut berlin = window("deny", "0 22 * * *", "1h");
    berlin.time_zone = Some("Europe/Berlin".to_owned());
    // 22:30 in Berlin (winter, UTC+1) is 21:30 UTC.
    let open = verdict(
        std::slice::from_ref(&berlin),
        &TARGET,
        at("2026-12-08T21:30:00Z"),
    );
    assert!(!open.automated, "{open:?}");
    let utc_evening = verdict(&[berlin], &TARGET, at("2026-12-08T22:30:00Z"));
    assert!(utc_evening.automated, "{utc_evening:?}");
}

#[test]
fn windows_concern_only_the_apps_namespaces_and_clusters_they_select() {
    let mut w = window("deny", "* * * * *", "1h");
    let now = at("2026-12-08T10:00:00Z");
    w.applications = vec!["api-*".to_owned()];
    assert!(verdict(std::slice::from_ref(&w), &TARGET, now).automated);
    w.namespaces = vec!["sh*".to_owned()];
    assert!(!verdict(std::slice::from_ref(&w), &TARGET, now).automated);
    w.namespaces.clear();
    w.clusters = vec!["https://east.*".to_owned()];
    assert!(!verdict(std::slice::from_ref(&w), &TARGET, now).automated);
    w.clusters = vec!["west".to_owned()];
    let other = verdict(&[w], &TARGET, now);
    assert!(other.automated && other.windows.is_empty());
}

#[test]
fn bad_fields_are_named() {
    let mut w = window("deny", "0 25 * * *", "1h");
    assert_eq!(check(&w).unwrap_err().0, "schedule");
    w.schedule = "@daily".to_owned();
    assert!(check(&w).is_ok());
    w.duration = "an hour".to_owned();
    assert_eq!(check(&w).unwrap_err().0, "duration");
    w.duration = "1h30m".to_owned();
    assert!(check(&w).is_ok());
    w.time_zone = Some("Mars/Olympus".to_owned());
    let (field, error) = check(&w).unwrap_err();
    assert_eq!(field, "timeZone");
    assert!(error.to_string().contains("Mars/Olympus"));
    w.time_zone = None;
    w.kind = "maybe".to_owned();
    assert_eq!(check(&w).unwrap_err().0, "kind");
}

#[test]
fn durations_read_as_go_writes_them() {
    assert_eq!(parse_duration("1h"), Some(SignedDuration::from_hours(1)));
    assert_eq!(parse_duration("1h30m"), Some(SignedDuration::from_mins(90)));
    assert_eq!(parse_duration("45s"), Some(SignedDuration::from_secs(45)));
    assert_eq!(parse_duration("0m"), None);
    assert_eq!(parse_duration("1d"), None);
    assert_eq!(parse_duration("h"), None);
    assert_eq!(parse_duration(""), None);
}
