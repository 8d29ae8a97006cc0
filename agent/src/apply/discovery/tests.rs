use super::Reach;

#[test]
fn reach_is_a_list_of_namespace_names_or_the_whole_cluster() {
    assert_eq!(Reach::parse("").unwrap(), Reach::Cluster);
    assert_eq!(Reach::parse(" , ").unwrap(), Reach::Cluster);
    assert_eq!(
        Reach::parse("team-b, team-a,team-b").unwrap(),
        Reach::Namespaces(["team-a".to_owned(), "team-b".to_owned()].into())
    );
    for bad in ["Team", "a/b", "-a", "a-", "x y", "../etc"] {
        assert!(Reach::parse(bad).is_err(), "{bad}");
    }
}
