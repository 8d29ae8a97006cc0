#![allow(clippy::unwrap_used)]

use super::*;

fn parse(text: &str) -> Value {
    serde_saphyr::from_str(text).unwrap()
}

#[test]
fn secret_values_are_masked_alike_when_equal_and_apart_when_changed() {
    let desired = "apiVersion: v1\nkind: Secret\nmetadata: {name: db}\ndata:\n  user: YWRtaW4=\n  password: bmV3LXB3\n";
    let live = "apiVersion: v1\nkind: Secret\nmetadata: {name: db}\ndata:\n  user: YWRtaW4=\n  password: b2xkLXB3\n";
    let (d, l) = mask_pair(Some(desired), Some(live));
    let (d, l) = (d.unwrap(), l.unwrap());
    for text in [&d, &l] {
        assert!(!text.contains("YWRtaW4="), "{text}");
        assert!(
            !text.contains("bmV3LXB3") && !text.contains("b2xkLXB3"),
            "{text}"
        );
    }
    let (d, l) = (parse(&d), parse(&l));
    assert_eq!(
        d["data"]["user"], l["data"]["user"],
        "equal values, equal masks"
    );
    assert_ne!(
        d["data"]["password"], l["data"]["password"],
        "a change still shows"
    );
    assert!(
        d["data"]["password"]
            .as_str()
            .unwrap()
            .chars()
            .all(|c| c == '+')
    );
    assert_eq!(d["metadata"]["name"], "db", "the rest is left alone");
}

#[test]
fn string_data_is_folded_into_data_before_masking() {
    // stringData "s3cret" is data "czNjcmV0": the same value, so the same mask.
    let desired =
        "apiVersion: v1\nkind: Secret\nmetadata: {name: db}\nstringData: {password: s3cret}\n";
    let live = "apiVersion: v1\nkind: Secret\nmetadata: {name: db}\ndata: {password: czNjcmV0}\n";
    let (d, l) = mask_pair(Some(desired), Some(live));
    let (d, l) = (d.unwrap(), l.unwrap());
    assert!(!d.contains("s3cret") && !l.contains("czNjcmV0"), "{d}\n{l}");
    let (d, l) = (parse(&d), parse(&l));
    assert!(d.get("stringData").is_none(), "{d}");
    assert_eq!(d["data"]["password"], l["data"]["password"]);
}

#[test]
fn the_last_applied_copy_is_masked_too() {
    let copy = r#"{"apiVersion":"v1","kind":"Secret","metadata":{"name":"db"},"stringData":{"password":"hunter2"}}"#;
    let live = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "db", "annotations": {LAST_APPLIED: copy}},
        "data": {"password": "aHVudGVyMg=="},
    })
    .to_string();
    let (_, l) = mask_pair(None, Some(&live));
    let l = l.unwrap();
    assert!(!l.contains("hunter2") && !l.contains("aHVudGVyMg=="), "{l}");
    let shown: Value = serde_json::from_str(
        parse(&l)["metadata"]["annotations"][LAST_APPLIED]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(shown["data"]["password"], parse(&l)["data"]["password"]);

    let broken = live.replace(r#"{\"apiVersion"#, r#"not json {\"apiVersion"#);
    let (_, l) = mask_pair(None, Some(&broken));
    assert!(!l.unwrap().contains("hunter2"));
}

#[test]
fn a_text_that_is_no_mapping_is_hidden_whole() {
    let (d, l) = mask_pair(Some("password: [unclosed"), Some("just a string"));
    assert_eq!(d.as_deref(), Some(HIDDEN));
    assert_eq!(l.as_deref(), Some(HIDDEN));
    let (d, l) = mask_pair(None, None);
    assert_eq!((d, l), (None, None));
}

#[test]
fn data_that_is_not_a_map_is_masked_whole() {
    let (d, _) = mask_pair(Some("kind: Secret\ndata: c2VjcmV0\n"), None);
    assert!(!d.unwrap().contains("c2VjcmV0"));
}
