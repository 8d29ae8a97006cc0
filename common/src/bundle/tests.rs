use super::*;
use crate::fixture;

#[test]
fn digest_is_independent_of_object_order() {
    let bundle = fixture::bundle("web", 1, 5);
    let mut reversed = bundle.clone();
    reversed.objects.reverse();
    assert_eq!(bundle.digest().unwrap(), reversed.digest().unwrap());
    assert_eq!(bundle.encode().unwrap(), reversed.encode().unwrap());
}

#[test]
fn digest_changes_when_a_manifest_changes() {
    let bundle = fixture::bundle("web", 1, 3);
    let mut changed = bundle.clone();
    changed.objects[1] = fixture::config_map("cm-1", "other");
    assert_ne!(bundle.digest().unwrap(), changed.digest().unwrap());
}

#[test]
fn encoded_bundle_decodes_to_the_sorted_bundle() {
    let mut bundle = fixture::bundle("web", 7, 12);
    bundle.objects.reverse();
    let decoded = Bundle::decode(&bundle.encode().unwrap()).unwrap();
    bundle
        .objects
        .sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));
    assert_eq!(decoded, bundle);
}

#[test]
fn duplicate_objects_are_refused_when_encoding() {
    let mut bundle = fixture::bundle("web", 1, 2);
    bundle.objects.push(fixture::config_map("cm-0", "again"));
    assert!(matches!(bundle.encode(), Err(Error::DuplicateObject(_))));
}

#[test]
fn manifests_are_stored_as_canonical_json() {
    let object = fixture::config_map("a", "b");
    assert_eq!(
        std::str::from_utf8(&object.manifest).unwrap(),
        r#"{"apiVersion":"v1","data":{"value":"b"},"kind":"ConfigMap","metadata":{"name":"a","namespace":"default"}}"#
    );
    assert_eq!(
        canonical_json(&object.manifest_json().unwrap()),
        object.manifest
    );
}

#[test]
fn envelope_round_trips_through_its_encoding() {
    let envelope = fixture::signer(1)
        .sign(&fixture::bundle("web", 1, 2))
        .unwrap();
    assert_eq!(
        Envelope::decode(&envelope.encode().unwrap()).unwrap(),
        envelope
    );
}

#[test]
fn truncated_bundle_bytes_are_a_decode_error() {
    let bytes = fixture::bundle("web", 1, 3).encode().unwrap();
    for len in 0..bytes.len() {
        assert!(matches!(
            Bundle::decode(&bytes[..len]),
            Err(Error::Decode(_))
        ));
    }
}
