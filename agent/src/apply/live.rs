//! The live objects a sync compares with, listed once per kind.

use std::collections::HashMap;

use flotilla_common::model::{Gvk, ResourceRef};
use kube::api::ListParams;
use serde_json::Value;

use super::{APP_LABEL, Applier, Result, api_message, to_value};

/// Live objects Flotilla manages, listed once per kind per sync (one LIST call,
/// filtered by [`APP_LABEL`]), so deciding "unchanged" costs no call per object.
#[derive(Default)]
pub(super) struct LiveCache {
    listed: HashMap<Gvk, Result<LiveObjects, String>>,
}

/// Live objects of one kind by (namespace, name).
type LiveObjects = HashMap<(Option<String>, String), Value>;

impl LiveCache {
    pub(super) async fn load(&mut self, applier: &Applier, resource: &ResourceRef) {
        if self.listed.contains_key(&resource.gvk) {
            return;
        }
        let listed = async {
            let apis = applier
                .apis_in_reach(resource)
                .await
                .map_err(|e| e.to_string())?;
            let mut objects = LiveObjects::new();
            for (_, api) in apis {
                let list = api
                    .list(&ListParams::default().labels(APP_LABEL))
                    .await
                    .map_err(|e| api_message(&e))?;
                objects.extend(list.items.into_iter().map(|o| {
                    let key = (
                        o.metadata.namespace.clone(),
                        o.metadata.name.clone().unwrap_or_default(),
                    );
                    (key, to_value(&o, &resource.gvk))
                }));
            }
            Ok(objects)
        }
        .await;
        // An unknown kind is reported per object when it is applied.
        self.listed.insert(resource.gvk.clone(), listed);
    }

    pub(super) fn get(&self, resource: &ResourceRef) -> Result<Option<&Value>> {
        match self.listed.get(&resource.gvk) {
            Some(Ok(objects)) => {
                Ok(objects.get(&(resource.namespace.clone(), resource.name.clone())))
            }
            _ => Ok(None),
        }
    }
}
