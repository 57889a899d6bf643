//! The watch caches the operator reads instead of listing the API server on every pass: the
//! pods, Services, ConfigMaps and PodDisruptionBudgets it manages (selected by the
//! `managed-by` label), each kept current by a watch that also triggers a reconcile of the
//! owning cluster when one of them changes or disappears.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::ResourceExt;
use kube::runtime::reflector::{self, Store, store::Writer};

use super::platform::owned_by;

/// Read sides of the caches.
#[derive(Clone)]
pub struct Caches {
    pub pods: Store<Pod>,
    pub services: Store<Service>,
    pub config_maps: Store<ConfigMap>,
    pub budgets: Store<PodDisruptionBudget>,
}

/// Write sides, fed by the watches (or, in tests, by hand).
pub struct CacheWriters {
    pub pods: Writer<Pod>,
    pub services: Writer<Service>,
    pub config_maps: Writer<ConfigMap>,
    pub budgets: Writer<PodDisruptionBudget>,
}

impl std::fmt::Debug for CacheWriters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheWriters").finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Caches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Caches").finish_non_exhaustive()
    }
}

impl Caches {
    /// Empty caches and their writers.
    pub fn new() -> (Self, CacheWriters) {
        let (pods, pods_w) = reflector::store();
        let (services, services_w) = reflector::store();
        let (config_maps, config_maps_w) = reflector::store();
        let (budgets, budgets_w) = reflector::store();
        (
            Self { pods, services, config_maps, budgets },
            CacheWriters {
                pods: pods_w,
                services: services_w,
                config_maps: config_maps_w,
                budgets: budgets_w,
            },
        )
    }

    /// Waits until every cache has its first full listing.
    pub async fn wait_until_ready(&self) -> anyhow::Result<()> {
        self.pods.wait_until_ready().await?;
        self.services.wait_until_ready().await?;
        self.config_maps.wait_until_ready().await?;
        self.budgets.wait_until_ready().await?;
        Ok(())
    }
}

/// The objects of `store` in `namespace` that the object with `uid` owns as controller.
pub fn owned<K>(store: &Store<K>, namespace: &str, uid: &str) -> Vec<Arc<K>>
where
    K: kube::Resource<DynamicType = ()> + Clone + 'static,
{
    store.state_filter(|o| o.namespace().as_deref() == Some(namespace) && owned_by(o.meta(), uid))
}

/// The object named `name` in `namespace`, if cached.
pub fn named<K>(store: &Store<K>, namespace: &str, name: &str) -> Option<Arc<K>>
where
    K: kube::Resource<DynamicType = ()> + Clone + 'static,
{
    store.get(&reflector::ObjectRef::new(name).within(namespace))
}
