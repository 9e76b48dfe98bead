//! Channel-rule evaluation checked against a plain model: a list of (namespace, join, push)
//! rows searched by string comparison, and each rule spelled out on the raw topic text.

use proptest::prelude::*;
use switchboard_core::{Access, ChannelRules, Rule, Topic};

/// The model's reading of one rule, straight from the definitions in the docs.
fn model_admits(rule: Rule, topic: &str, user: Option<&str>) -> bool {
    let key = topic.find(':').map(|colon| &topic[colon + 1..]);
    match rule {
        Rule::Anyone => true,
        Rule::Authenticated => user.is_some(),
        Rule::Owner => matches!((user, key), (Some(u), Some(k)) if !u.is_empty() && u == k),
        _ => false,
    }
}

fn rule() -> impl Strategy<Value = Rule> {
    prop_oneof![
        Just(Rule::Anyone),
        Just(Rule::Authenticated),
        Just(Rule::Owner),
        Just(Rule::Nobody)
    ]
}

fn access() -> impl Strategy<Value = Access> {
    (rule(), rule()).prop_map(|(join, push)| Access { join, push })
}

/// Namespaces and users drawn from a small alphabet so that they collide with each other.
fn word() -> impl Strategy<Value = String> {
    "[ab:]{0,3}"
}

proptest! {
    #[test]
    fn evaluation_matches_the_model(
        fallback in access(),
        rows in prop::collection::vec(("[ab]{0,2}", access()), 0..4),
        namespace in "[ab]{0,2}",
        rest in prop::option::of(word()),
        user in prop::option::of(word()),
    ) {
        let text = match &rest {
            Some(rest) => format!("{namespace}:{rest}"),
            None => namespace.clone(),
        };
        prop_assume!(!text.is_empty());
        let topic = Topic::new(&text).unwrap();
        let mut rules = ChannelRules::new(fallback);
        for (name, access) in &rows {
            rules.set(name.clone(), *access);
        }
        // Model: the last row set for the namespace wins, else the fallback.
        let model_namespace = text.split(':').next().unwrap_or_default();
        let model_access = rows
            .iter()
            .rev()
            .find(|(name, _)| name == model_namespace)
            .map_or(fallback, |(_, access)| *access);
        let user = user.as_deref();
        prop_assert_eq!(rules.may_join(&topic, user), model_admits(model_access.join, &text, user));
        prop_assert_eq!(rules.may_push(&topic, user), model_admits(model_access.push, &text, user));
    }

    #[test]
    fn owner_never_admits_someone_else(user in "[a-z0-9-]{1,12}", other in "[a-z0-9-]{1,12}") {
        prop_assume!(user != other);
        let topic = Topic::new(&format!("auditlog:{other}")).unwrap();
        let rules = ChannelRules::new(Access::SECURE_DEFAULT);
        prop_assert!(!rules.may_join(&topic, Some(&user)));
        prop_assert!(!rules.may_push(&topic, Some(&other)));
        prop_assert!(rules.may_join(&topic, Some(&other)));
    }
}
